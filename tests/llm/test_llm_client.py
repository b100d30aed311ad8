"""LLMClient against the fake server: answers, cache, retries, errors, budget, limits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from synthvg.llm import (
    BudgetExceeded,
    LLMRequestError,
    LLMResult,
    LLMRetryExhausted,
    ModelPrice,
)
from synthvg.llm.testing import FakeOpenAIServer, Reply


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat_arrivals(server: FakeOpenAIServer) -> list[float]:
    return [r.received_at for r in server.requests if r.path == "/v1/chat/completions"]


PRICES = {"fake-model": ModelPrice(input=2.0, output=8.0)}


def test_success_usage_and_cost(make_client, server):
    client = make_client(prices=PRICES, temperature=0.2, max_tokens=50)
    result = client.run_sync(client.complete(user("a red cup"), logprobs=True))

    assert json.loads(result.content) == {"echo": "a red cup"}
    assert not result.cached and result.attempts == 1
    assert result.model == "fake-model" and result.finish_reason == "stop"
    assert result.logprobs and result.logprobs["content"][0]["logprob"] == -0.1
    sent = server.chat_requests[0]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and sent["logprobs"] is True
    u = result.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert result.cost_usd == pytest.approx(
        (u.prompt_tokens * 2.0 + u.completion_tokens * 8.0) / 1e6
    )
    totals = client.usage
    assert (totals.requests, totals.cached_hits, totals.retries) == (1, 0, 0)
    assert totals.prompt_tokens == u.prompt_tokens and totals.cost_usd == result.cost_usd


def test_none_parameter_is_not_sent(make_client, server):
    client = make_client(temperature=0.7)
    client.run_sync(client.complete(user("x"), temperature=None, seed=3))
    assert "temperature" not in server.chat_requests[0] and server.chat_requests[0]["seed"] == 3


def test_cache_hit_sends_nothing_and_a_changed_parameter_one_request(
    make_client, server, cache_dir
):
    client = make_client(prices=PRICES)
    first = client.run_sync(client.complete(user("q"), temperature=0.0))
    again = client.run_sync(client.complete(user("q"), temperature=0.0))
    assert len(server.chat_requests) == 1
    assert again.cached and again.attempts == 0 and again.cost_usd == 0
    assert again.content == first.content and again.request_key == first.request_key

    other = client.run_sync(client.complete(user("q"), temperature=0.5))
    assert len(server.chat_requests) == 2 and not other.cached
    assert other.request_key != first.request_key
    old = client.run_sync(client.complete(user("q"), temperature=0.0))
    assert old.cached and len(server.chat_requests) == 2

    entry = json.loads(
        (cache_dir / first.request_key[:2] / f"{first.request_key}.json").read_text()
    )
    assert entry["key"] == first.request_key and entry["response"]["choices"]
    assert entry["usage"]["prompt_tokens"] == first.usage.prompt_tokens
    assert client.usage.cached_hits == 2 and client.usage.cost_usd == pytest.approx(
        first.cost_usd + other.cost_usd
    )


def test_a_new_client_resumes_from_the_cache(make_client, server):
    make_client().map_complete([{"messages": user(f"r{i}")} for i in range(4)])
    fresh = make_client()
    results = fresh.map_complete([{"messages": user(f"r{i}")} for i in range(4)])
    assert all(isinstance(r, LLMResult) and r.cached for r in results)
    assert len(server.chat_requests) == 4 and fresh.usage.requests == 0


def test_cache_disabled(make_client, server):
    client = make_client(cache=False)
    for _ in range(2):
        client.run_sync(client.complete(user("same")))
    assert len(server.chat_requests) == 2


@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
def test_429_is_retried_after_retry_after(make_client, server, header):
    client = make_client()
    server.enqueue(Reply.rate_limited(0.3, header=header))
    result = client.run_sync(client.complete(user("x")))
    assert result.attempts == 2 and client.usage.retries == 1
    first, second = chat_arrivals(server)
    assert second - first >= 0.28  # the server asked for 0.3 s; backoff alone would be ~0.01 s


def test_500_truncated_body_and_timeout_are_retried(make_client, server):
    client = make_client(timeout_seconds=0.3)
    server.enqueue(Reply.server_error(), Reply.truncated_body(), Reply.slow(1.0))
    result = client.run_sync(client.complete(user("x")))
    assert json.loads(result.content) == {"echo": "x"}
    assert result.attempts == 4 and client.usage.retries == 3 and client.usage.requests == 4


def test_retries_exhausted(make_client, server):
    client = make_client(max_retries=2)
    server.enqueue(*[Reply.server_error(503)] * 3)
    with pytest.raises(LLMRetryExhausted, match="gave up after 3 attempts.*HTTP 503") as info:
        client.run_sync(client.complete(user("x")))
    assert info.value.attempts == 3 and len(server.chat_requests) == 3


def test_an_unreachable_endpoint_fails_fast_and_names_the_url(api_key, cache_dir):
    from synthvg.llm import LLMClient, LLMConfig, LLMUnreachable, failure_kind

    with FakeOpenAIServer() as gone:
        url = gone.base_url
    config = LLMConfig(
        model="m",
        base_url=url,
        api_key_env="SYNTHVG_TEST_LLM_KEY",
        max_retries=6,
        backoff_base_seconds=0.01,
        timeout_seconds=2,
    )
    t0 = time.monotonic()
    with LLMClient(config) as client, pytest.raises(LLMUnreachable, match="cannot reach") as info:
        client.run_sync(client.complete(user("x")))
    assert url in str(info.value) and api_key not in str(info.value)
    assert time.monotonic() - t0 < 5  # not six rounds of backoff
    assert failure_kind(info.value) == "fatal"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_not_retried(make_client, server, status):
    client = make_client()
    server.enqueue(Reply.bad_request("model_not_found or similar", status=status))
    with pytest.raises(LLMRequestError, match=f"HTTP {status}: model_not_found") as info:
        client.run_sync(client.complete(user("x")))
    assert info.value.status_code == status
    assert len(server.chat_requests) == 1 and client.usage.retries == 0


def test_insufficient_quota_429_is_not_retried(make_client, server):
    client = make_client()
    server.enqueue(
        Reply(status=429, error="You exceeded your current quota", error_code="insufficient_quota")
    )
    with pytest.raises(LLMRequestError, match="quota"):
        client.run_sync(client.complete(user("x")))
    assert len(server.chat_requests) == 1


def test_budget_refuses_before_sending(make_client, server):
    client = make_client(prices=PRICES, budget_usd=1e-9)
    with pytest.raises(BudgetExceeded) as info:
        client.run_sync(client.complete(user("x")))
    assert info.value.budget_usd == 1e-9 and info.value.spent_usd == 0
    assert server.chat_requests == []


def test_budget_stops_after_spending_and_cache_hits_stay_free(make_client, server):
    probe = make_client(cache=False, prices=PRICES)
    cost = probe.run_sync(probe.complete(user("first"), max_tokens=100)).cost_usd
    estimate = probe.estimate_cost(probe.prepare(user("second"), max_tokens=100))
    assert cost > 0 and estimate > 0
    # Room for the first request and its real cost, not for a second estimate on top.
    client = make_client(prices=PRICES, budget_usd=cost + estimate * 0.99)
    client.run_sync(client.complete(user("first"), max_tokens=100))
    sent = len(server.chat_requests)
    with pytest.raises(BudgetExceeded):
        client.run_sync(client.complete(user("second"), max_tokens=100))
    assert len(server.chat_requests) == sent
    assert client.run_sync(client.complete(user("first"), max_tokens=100)).cached


def test_map_complete_keeps_order_and_captures_errors(make_client, server):
    client = make_client(max_concurrency=4)
    server.responder = lambda req: (
        Reply.bad_request("bad item")
        if "bad" in req["messages"][0]["content"]
        else json.dumps({"i": req["messages"][0]["content"]})
    )
    texts = ["0", "1", "bad", "3", "4"]
    results = client.map_complete([{"messages": user(t)} for t in texts])
    assert isinstance(results[2], LLMRequestError)
    assert [json.loads(r.content)["i"] for r in results if isinstance(r, LLMResult)] == [
        "0",
        "1",
        "3",
        "4",
    ]


def test_map_complete_with_budget_returns_what_fit(make_client, server):
    client = make_client(prices=PRICES, max_concurrency=1)
    one = client.estimate_cost(client.prepare(user("item 0"), max_tokens=10))
    client.config.budget_usd = one * 2.5
    results = client.map_complete(
        [{"messages": user(f"item {i}"), "max_tokens": 10} for i in range(6)]
    )
    done = [r for r in results if isinstance(r, LLMResult)]
    assert 2 <= len(done) < 6 and len(done) == len(server.chat_requests)
    assert all(isinstance(r, BudgetExceeded) for r in results if not isinstance(r, LLMResult))


def test_concurrency_cap_holds_across_threads(make_client, server):
    server.latency = 0.05
    client = make_client(max_concurrency=3)

    def stage(n: int) -> None:
        results = client.map_complete([{"messages": user(f"{n}-{i}")} for i in range(6)])
        assert all(isinstance(r, LLMResult) for r in results)

    threads = [threading.Thread(target=stage, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.chat_requests) == 18
    assert 2 <= server.max_in_flight <= 3


def test_rpm_limit_spaces_requests(make_client, server):
    client = make_client(requests_per_minute=240, max_concurrency=16)  # 4/s, burst of 4
    start = time.monotonic()  # the limiter cannot release request k before start + (k-3)/4 s
    client.map_complete([{"messages": user(str(i))} for i in range(10)])
    arrivals = sorted(chat_arrivals(server))
    assert len(arrivals) == 10
    for k in range(4, 10):  # after the burst, at most one request per 0.25 s (lower bounds only)
        assert arrivals[k] - start >= (k - 3) * 0.25 - 0.05


def test_server_rate_limit_headers_pause_the_client(make_client, server):
    client = make_client()
    exhausted = {
        "x-ratelimit-limit-requests": "1000",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "400ms",
    }
    server.enqueue(Reply(headers=exhausted))
    client.run_sync(client.complete(user("a")))
    assert client.limiter.buckets["requests"].per_minute == 1000
    client.run_sync(client.complete(user("b")))
    first, second = chat_arrivals(server)
    assert second - first >= 0.35


def test_complete_awaited_from_other_event_loops(make_client, server):
    client = make_client()

    async def two() -> list[LLMResult]:
        return list(await asyncio.gather(client.complete(user("x")), client.complete(user("y"))))

    assert [r.content for r in asyncio.run(two())] == ['{"echo": "x"}', '{"echo": "y"}']
    assert asyncio.run(two())[0].cached  # a second loop, same client


def test_streaming_is_refused(make_client):
    client = make_client()
    with pytest.raises(Exception, match="streaming"):
        client.prepare(user("x"), stream=True)


def test_close_is_idempotent_and_final(make_client):
    client = make_client()
    client.run_sync(client.complete(user("x")))
    start = time.monotonic()
    client.close()
    client.close()
    assert time.monotonic() - start < 5
    with pytest.raises(RuntimeError, match="closed"):
        client.run_sync(client.complete(user("x")))
