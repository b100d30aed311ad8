"""`synthvg serve` on an SVG-scale root: gallery and image page latency with a warm server.

Builds (once, cached in --root; the same builder and default root as bench_query.py) a
synthetic root of the paper's size: 146,000 images, 2.92M regions (boxes, no masks, as
`synthvg import` of the release writes them), 5.55M relations, shards of 500. Then starts
`synthvg serve` as its own process on 127.0.0.1 (real uvicorn), waits until it answers, warms
it up, and times requests over one keep-alive HTTP connection:

  gallery            a random page of the unfiltered gallery (48 thumbnails' rows, counts)
  gallery + filter   predicate / category / label / SQL WHERE filters, random pages
  image page         a random image: its regions, relations per stage, edits, generations,
                     errors (every view narrowed to the image's files), prev/next

Usage: python benchmarks/bench_explorer.py [--root DIR] [--images 146000] [--n 200] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "benchmarks")]  # this checkout's synthvg

from _results import append_results  # noqa: E402
from bench_query import build_root  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, float, int]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    return r.status, time.perf_counter() - t0, len(body)


def _rss_mb(pid: int) -> float | None:
    """The server process's resident memory (Linux), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def trace_cost(n: int = 200) -> float:
    """Milliseconds to trace one 640x480 mask (an ellipse with a hole) into its SVG path, cold:
    the synthetic root has boxes only, so its image pages trace none."""
    import numpy as np

    from synthvg import masks
    from synthvg.explorer.shapes import _rle_path

    yy, xx = np.mgrid[0:480, 0:640]
    rles = []
    for i in range(n):
        cx, cy, rx, ry = 100 + i % 400, 100 + i % 250, 40 + i % 150, 30 + i % 100
        e = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        rles.append(masks.encode((e <= 1) & (e > 0.2)))
    _rle_path.cache_clear()
    t0 = time.perf_counter()
    for r in rles:
        _rle_path(tuple(r.size), r.counts)
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--root", default=os.path.join(tempfile.gettempdir(), "synthvg-bench-paper-scale")
    )
    ap.add_argument("--images", type=int, default=146_000)
    ap.add_argument("--regions", type=int, default=20)
    ap.add_argument("--relations", type=int, default=38)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--n", type=int, default=200, help="requests per kind")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    root = Path(args.root)
    cached = (root / "synthvg.json").exists()
    t0 = time.perf_counter()
    build_root(root, args.images, args.regions, args.relations, args.shard_size)
    built = time.perf_counter() - t0
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "synthvg.cli", "serve", "--root", str(root), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status, _, _ = _get(conn, "/static/explorer.css")
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(server.stderr.read().decode()) from None
                time.sleep(0.2)
        started = time.perf_counter() - t0
        rng = random.Random(0)
        n_img = args.images
        pages = -(-n_img // 48)
        kinds = {
            "gallery (unfiltered, random page)": lambda: f"/?page={rng.randint(1, pages)}",
            "gallery, predicate filter": lambda: (
                "/?"
                + urlencode({"predicate": f"pred{rng.randrange(900)}", "page": rng.randint(1, 20)})
            ),
            "gallery, category + stage filter": lambda: (
                "/?"
                + urlencode({"category": "social", "stage": "edit", "page": rng.randint(1, 500)})
            ),
            "gallery, label filter": lambda: (
                "/?"
                + urlencode({"label": f"label{rng.randrange(600)}", "page": rng.randint(1, 20)})
            ),
            "gallery, SQL WHERE": lambda: (
                "/?" + urlencode({"where": f"image_id LIKE 'svg:{rng.randrange(10, 99)}%'"})
            ),
            "image page (random image)": lambda: (
                "/image/" + quote(f"svg:{rng.randrange(n_img)}", safe=":")
            ),
        }
        load_before = os.getloadavg()[0]
        for make in kinds.values():  # warm-up: every code path once
            for _ in range(3):
                _get(conn, make())
        times: dict[str, list[float]] = {k: [] for k in kinds}
        sizes: dict[str, list[int]] = {k: [] for k in kinds}
        for i in range(args.n):  # interleaved, so load on the shared machine hits all alike
            for kind, make in kinds.items():
                if kind.startswith("gallery,") and i >= args.n // 2:
                    continue  # filtered galleries: half as many
                status, secs, size = _get(conn, make())
                assert status == 200, (kind, status)
                times[kind].append(secs)
                sizes[kind].append(size)
        rss = _rss_mb(server.pid)
        load_after = os.getloadavg()[0]
    finally:
        server.terminate()
        server.wait(timeout=30)

    import duckdb

    lines = [
        f"SVG-scale root ({args.images:,} images, {args.images * args.regions:,} regions, "
        f"{args.images * args.relations:,} relations, {-(-args.images // args.shard_size)} shards); "
        f"{dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores (shared), DuckDB {duckdb.__version__}; "
        f"`synthvg serve` as its own process (uvicorn, 127.0.0.1), one keep-alive connection, "
        f"requests of all kinds interleaved after a warm-up; machine load average "
        f"{load_before:.1f} before, {load_after:.1f} after (other jobs share the cores)",
        "",
        f"Server start to first answer (dataset opened, index built): {started:.1f} s"
        + (" (root built before)" if cached else f"; root built in {built:.0f} s")
        + (f"; server resident memory after the run: {rss:.0f} MB" if rss else ""),
        "",
        "| request | n | p50 ms | p95 ms | max ms | page KB |",
        "|---|---|---|---|---|---|",
    ]
    for kind, xs in times.items():
        lines.append(
            f"| {kind} | {len(xs)} | {statistics.median(xs) * 1000:.0f} | {_pct(xs, 95) * 1000:.0f} | "
            f"{max(xs) * 1000:.0f} | {statistics.mean(sizes[kind]) / 1024:.0f} |"
        )
    lines += [
        "",
        f"Tracing a 640x480 mask into its SVG overlay (not in the pages above: the root has boxes "
        f"only): {trace_cost():.1f} ms per mask, cold; cached after.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_results(table, "The explorer on an SVG-scale root (benchmarks/bench_explorer.py)")


if __name__ == "__main__":
    main()
