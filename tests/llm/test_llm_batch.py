"""Batch API mode end to end against the fake server, including resume from the state file."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from synthvg.llm import BatchJob, BudgetExceeded, LLMResult, ModelPrice
from synthvg.llm.testing import Reply

PRICES = {"fake-model": ModelPrice(input=2.0, output=8.0)}


class Label(BaseModel):
    echo: str


def requests(n: int) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": f"image {i}"}], "temperature": 0.0}
        for i in range(n)
    ]


def posts(server, path: str) -> int:
    return sum(1 for r in server.requests if r.method == "POST" and r.path == path)


def test_batch_end_to_end_fills_the_cache(make_client, server, cache_dir):
    client = make_client(prices=PRICES)
    report = BatchJob(client, "teacher", poll_seconds=0.01).run(requests(5))

    assert report.done and report.stored == 5 and not report.failed
    assert len(report.created) == 1 and report.batch_ids == report.created
    assert posts(server, "/v1/files") == 1 and posts(server, "/v1/batches") == 1
    assert server.chat_requests == []
    upload = next(r for r in server.requests if r.path == "/v1/files")
    assert b'name="purpose"' in upload.body and b"batch" in upload.body
    line = json.loads(upload.body.split(b"\r\n\r\n")[-1].split(b"\n")[0])
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert line["custom_id"] and line["body"]["model"] == "fake-model"
    assert server.batches[0]["completion_window"] == "24h"

    spent = client.usage.cost_usd
    assert 0 < spent and client.usage.prompt_tokens > 0
    results = client.map_complete(requests(5))
    assert all(isinstance(r, LLMResult) and r.cached for r in results)
    assert [json.loads(r.content)["echo"] for r in results] == [f"image {i}" for i in range(5)]
    assert server.chat_requests == [] and client.usage.cost_usd == spent
    online = sum(
        PRICES["fake-model"].cost(r.usage.prompt_tokens, r.usage.completion_tokens) for r in results
    )
    assert spent == pytest.approx(online * 0.5)  # batch price


def test_a_restarted_process_resumes_the_same_batch(make_client, server, cache_dir):
    first = make_client()
    pending = BatchJob(first, "teacher", poll_seconds=0.01).run(requests(4), timeout=0)
    assert pending.pending == 4 and not pending.done and len(pending.created) == 1
    state = json.loads((cache_dir / "batches" / "teacher.json").read_text())
    (record,) = state["batches"]
    assert record["id"] == pending.created[0] and not record["collected"]
    assert sorted(record["requests"].values()) == sorted(
        first.prepare(**r).key for r in requests(4)
    )
    first.close()

    second = make_client()  # "days later": a new client, same cache folder
    report = BatchJob(second, "teacher", poll_seconds=0.01).run(requests(4))
    assert report.created == [] and report.batch_ids == pending.created
    assert report.done and report.stored == 4
    assert posts(server, "/v1/batches") == 1 and posts(server, "/v1/files") == 1

    again = BatchJob(second, "teacher", poll_seconds=0.01).run(requests(4))
    assert again.created == [] and again.stored == 0 and again.done  # all cached now
    assert posts(server, "/v1/batches") == 1


def test_failed_items_are_reported_and_resubmitted_alone(make_client, server):
    flaky = {"fail": True}
    server.responder = lambda req: (
        Reply.bad_request("image rejected")
        if flaky["fail"] and req["messages"][0]["content"] == "image 2"
        else json.dumps({"echo": req["messages"][0]["content"]})
    )
    client = make_client()
    job = BatchJob(client, "vqa", poll_seconds=0.01)
    report = job.run(requests(4))
    bad_key = client.prepare(**requests(4)[2]).key
    assert report.stored == 3 and report.failed == {bad_key: "HTTP 400: image rejected"}

    flaky["fail"] = False
    retry = job.run(requests(4))
    assert len(retry.created) == 1 and retry.stored == 1 and not retry.failed
    assert server.batches[-1]["request_counts"]["total"] == 1


def test_structured_requests_go_through_batch(make_client, server):
    client = make_client()
    reqs = [{"messages": r["messages"], "response_format": Label} for r in requests(2)]
    BatchJob(client, poll_seconds=0.01).run(reqs)
    label = client.run_sync(client.complete_structured(reqs[1]["messages"], Label))
    assert label == Label(echo="image 1") and server.chat_requests == []


def test_batch_over_budget_creates_nothing(make_client, server):
    client = make_client(prices=PRICES, budget_usd=1e-6)
    with pytest.raises(BudgetExceeded):
        BatchJob(client, poll_seconds=0.01).run(requests(50))
    assert posts(server, "/v1/files") == 0 and posts(server, "/v1/batches") == 0


def test_big_jobs_are_split(make_client, server):
    client = make_client()
    report = BatchJob(client, poll_seconds=0.01, max_requests=3).run(requests(7))
    assert len(report.created) == 3 and report.stored == 7
