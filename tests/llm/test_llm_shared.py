"""Budget and rate limits shared by several processes through the ledger folder, and the
ledger's totals, against the local OpenAI-protocol server."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from synthvg.llm import BudgetExceeded, LLMClient, LLMConfig, LLMResult, SpendLedger, spend_totals
from synthvg.llm.testing import FakeOpenAIServer

PRICE = {"fake-model": {"input": 1.0, "output": 10.0}}


def _send(config: dict[str, Any], cache_dir: str, tag: str, n: int) -> dict[str, int]:
    """One worker process: ``n`` distinct requests through its own client."""
    client = LLMClient(LLMConfig(**config), cache_dir=cache_dir, budget_scope="teacher")
    client.begin_run("run-1", stage="teacher")
    with client:
        results = client.map_complete(
            [
                {"messages": [{"role": "user", "content": f"{tag} item {i}"}], "max_tokens": 50}
                for i in range(n)
            ]
        )
    return {
        "answered": sum(isinstance(r, LLMResult) for r in results),
        "refused": sum(isinstance(r, BudgetExceeded) for r in results),
    }


def _in_processes(
    config: dict[str, Any], cache_dir: Path, n: int, workers: int = 2
) -> list[dict[str, int]]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        return pool.starmap(_send, [(config, str(cache_dir), f"p{w}", n) for w in range(workers)])


def _config(server: FakeOpenAIServer, **more: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "base_url": server.base_url,
        "api_key_env": "SYNTHVG_TEST_LLM_KEY",
        "timeout_seconds": 5.0,
        "backoff_base_seconds": 0.01,
        "prices": PRICE,
        **more,
    }


def _billed_usd(server: FakeOpenAIServer) -> float:
    return sum(p * 1.0 + c * 10.0 for _, p, c in server.billed) / 1e6


def test_the_budget_holds_for_two_processes_together(api_key, cache_dir):
    with FakeOpenAIServer(latency=0.05) as server:
        probe = LLMClient(LLMConfig(**_config(server)))
        one = probe.run_sync(
            probe.complete([{"role": "user", "content": "p0 item 00"}], max_tokens=50)
        ).cost_usd
        probe.close()
        budget = 12 * one  # each process alone would spend 12 requests' worth: 24 in all
        outcome = _in_processes(
            _config(server, budget_usd=budget, max_concurrency=4), cache_dir, n=15
        )
        spent = _billed_usd(server) - one
    assert sum(o["refused"] for o in outcome) > 0
    assert spent <= budget + 1e-12
    ledger = spend_totals(SpendLedger(cache_dir / "ledger").entries())[()]
    assert ledger["cost_usd"] == pytest.approx(spent) and ledger["paid_requests"] == sum(
        o["answered"] for o in outcome
    )


def test_requests_per_minute_hold_for_two_processes_together(api_key, cache_dir):
    rpm = 600.0
    with FakeOpenAIServer() as server:
        _in_processes(_config(server, requests_per_minute=rpm), cache_dir, n=15)
        arrivals = sorted(
            r.received_at for r in server.requests if r.path == "/v1/chat/completions"
        )
    assert len(arrivals) == 30
    span = arrivals[-1] - arrivals[0]
    achieved = (len(arrivals) - 1) / span * 60
    # Above: two limiters that did not share would reach 2x. Below, loosely: a busy machine may
    # delay the processes themselves, so only a limiter that starves them (< 0.4x) fails.
    assert rpm * 0.4 <= achieved <= rpm * 1.02, achieved
    # Never above, second by second: the limiter lets one request leave per 60/rpm seconds;
    # connection setup in a fresh process may bunch a couple of arrivals, never more.
    for t in arrivals:
        in_second = sum(t <= u < t + 1.0 for u in arrivals)
        assert in_second <= rpm / 60 + 2, (t, in_second)


def test_on_an_object_store_the_ledger_and_budget_carry_over_between_runs(api_key, server):
    import uuid

    cache = f"memory://llm-{uuid.uuid4().hex[:8]}/cache/llm"
    config = LLMConfig(**_config(server, budget_usd=1.0))
    first = LLMClient(config, cache_dir=cache, budget_scope="edit")
    first.begin_run("run-1", stage="edit")
    cost = first.run_sync(first.complete([{"role": "user", "content": "x"}], max_tokens=5)).cost_usd
    first.close()  # object stores cannot append: the ledger is flushed as a part file
    second = LLMClient(config, cache_dir=cache, budget_scope="edit")
    assert cost > 0 and second.account is None and second.committed_usd() == pytest.approx(cost)
    assert second.run_sync(second.complete([{"role": "user", "content": "x"}], max_tokens=5)).cached
    second.close()
    entries = SpendLedger(f"{cache}/ledger").entries()
    assert [(e["run_id"], e["stage"], e["scope"]) for e in entries] == [("run-1", "edit", "edit")]
