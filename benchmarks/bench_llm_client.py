"""LLM client throughput against a rate limit, its CPU cost per request, and a cached resume.

The fake OpenAI server (synthvg.llm.testing) runs in a child process, so the CPU figure is the
client's alone. It answers after ``--latency`` seconds and enforces ``--rpm`` itself (429 past
it); the client is configured with the same requests-per-minute limit. Goal: the client sustains
>= 95% of the limit without 429s. The resume row reruns the same requests on a fresh client
over the same cache folder: no request may reach the server.

Usage: python benchmarks/bench_llm_client.py [--requests N] [--latency S] [--rpm R]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import secrets
import string
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any

from synthvg.llm import LLMClient, LLMConfig, LLMResult, ModelPrice
from synthvg.llm.testing import FakeOpenAIServer

KEY_ENV = "SYNTHVG_BENCH_LLM_KEY"


def serve(conn: Connection, latency: float, rpm: float) -> None:
    """Child process: run the fake server, answer "stats" messages until "stop"."""
    with FakeOpenAIServer(latency=latency, requests_per_minute=rpm) as server:
        conn.send(server.base_url)
        while conn.recv() == "stats":
            conn.send(
                {
                    "chat": len(server.chat_requests),
                    "429": server.rate_limited,
                    "max_in_flight": server.max_in_flight,
                }
            )


def run(client: LLMClient, requests: list[dict[str, Any]]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one map_complete; every item must succeed."""
    wall, cpu = time.perf_counter(), time.process_time()
    results = client.map_complete(requests)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    failed = [r for r in results if not isinstance(r, LLMResult)]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, first: {failed[0]!r}")
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per answer")
    ap.add_argument("--rpm", type=float, default=120.0, help="requests-per-minute limit")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    os.environ[KEY_ENV] = "sk-bench-" + "".join(
        secrets.choice(string.ascii_letters + string.digits) for _ in range(32)
    )
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(child, args.latency, args.rpm), daemon=True)
    proc.start()
    base_url = parent.recv()

    def stats() -> dict[str, int]:
        parent.send("stats")
        return parent.recv()

    config = LLMConfig(
        model="bench-model",
        base_url=base_url,
        api_key_env=KEY_ENV,
        requests_per_minute=args.rpm,
        max_concurrency=args.concurrency,
        prices={"bench-model": ModelPrice(input=2.5, output=10.0)},
    )
    prompt = "List the objects in image {i} and how they relate. " * 8
    requests = [
        {"messages": [{"role": "user", "content": prompt.format(i=i)}], "max_tokens": 300}
        for i in range(args.requests)
    ]
    with tempfile.TemporaryDirectory(prefix="synthvg-bench-llm-") as cache_dir:
        with LLMClient(config, cache_dir=cache_dir) as client:
            # One untimed request first: the SDK imports its resources on first use.
            run(client, [{"messages": [{"role": "user", "content": "warm-up"}]}])
            time.sleep(60 / args.rpm * 2)  # let the limiter's one-second burst refill
            wall, cpu = run(client, requests)
        online = stats()
        with LLMClient(config, cache_dir=cache_dir) as fresh:
            resume_wall, resume_cpu = run(fresh, requests)
        resumed = stats()
    parent.send("stop")
    proc.join(timeout=10)

    n = args.requests
    achieved = n / wall * 60
    print(
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"{n} requests, server latency {args.latency:g} s, limit {args.rpm:g} req/min, "
        f"max_concurrency {args.concurrency}\n"
    )
    rows = [
        ("wall time, online run", f"{wall:.2f} s", ""),
        (
            "achieved requests/min",
            f"{achieved:.1f} ({achieved / args.rpm:.1%} of {args.rpm:g})",
            ">= 95%",
        ),
        ("client CPU per request, online", f"{cpu / n * 1000:.2f} ms", ""),
        ("429s from the server", str(online["429"]), "0"),
        ("server max in flight", str(online["max_in_flight"]), f"<= {args.concurrency}"),
        ("resume: requests reaching the server", str(resumed["chat"] - online["chat"]), "0"),
        ("resume: wall time", f"{resume_wall:.3f} s", ""),
        ("resume: client CPU per request", f"{resume_cpu / n * 1000:.2f} ms", ""),
    ]
    print("| metric | value | goal |\n|---|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    ok = achieved / args.rpm >= 0.95 and resumed["chat"] == online["chat"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
