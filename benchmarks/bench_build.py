"""Time the demo build per stage (images/s) and Prefect's overhead, side by side in one run.

Variants, each a fresh dataset root, same config:
  plain      the stage functions run sequentially without Prefect (synthvg.pipeline.run_build)
  flow x1    the Prefect flow, one worker thread (same work as plain: the difference is overhead)
  flow x2    the Prefect flow, two worker threads (what the demo uses)
Every variant's rows are checked equal to the plain build's before any figure is printed.

Usage: python benchmarks/bench_build.py [--limit N] [--shard-size N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="synthvg-bench-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from synthvg import prefect_env  # noqa: E402

prefect_env.configure()

from synthvg.pipeline import run_build  # noqa: E402
from synthvg.schemas.config import BuildConfig, load_config  # noqa: E402
from synthvg.storage import connect  # noqa: E402


def _config(out: Path, limit: int | None, shard_size: int, workers: int) -> BuildConfig:
    cfg = load_config(
        REPO / "configs" / "demo.yaml", out=str(out), limit=limit, shard_size=shard_size
    )
    return cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"workers": workers})})


def _rows(root: str) -> dict:
    con = connect(root)
    out = {}
    for t in ("images", "regions", "proposals", "relations", "errors"):
        cols = [
            c
            for c in con.sql(f"SELECT * FROM {t} LIMIT 0").columns
            if c not in ("run_id", "created_at")
        ]
        out[t] = sorted(map(repr, con.sql(f"SELECT {', '.join(cols)} FROM {t}").fetchall()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="images (default: all 38)")
    ap.add_argument("--shard-size", type=int, default=8)
    args = ap.parse_args()

    from prefect import flow

    from synthvg.flows import build_dataset

    tmp = Path(tempfile.mkdtemp(prefix="synthvg-bench-"))
    results = []

    t0 = time.perf_counter()
    plain_cfg = _config(tmp / "plain", args.limit, args.shard_size, 1)
    plain = run_build(plain_cfg)
    results.append(("plain", time.perf_counter() - t0, plain))
    reference = _rows(plain_cfg.out)

    @flow
    def warm_up() -> None:
        """Starts Prefect's temporary server, so its start-up is timed apart from the build."""

    t0 = time.perf_counter()
    warm_up()
    startup = time.perf_counter() - t0

    for workers in (1, 2):
        cfg = _config(tmp / f"flow{workers}", args.limit, args.shard_size, workers)
        t0 = time.perf_counter()
        run = build_dataset(cfg)
        results.append((f"flow x{workers}", time.perf_counter() - t0, run))
        if _rows(cfg.out) != reference:
            print(f"flow x{workers} wrote different rows from the plain build", file=sys.stderr)
            return 1

    images = plain.images
    stage_names = [s.stage for s in plain.stages if s.status != "skipped"]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}"
    )
    print(
        f"demo build: {images} images, shard size {args.shard_size}; Prefect server start-up {startup:.1f}s (not counted)"
    )
    print()
    header = (
        f"{'variant':<10}{'wall s':>9}"
        + "".join(f"{s + ' img/s':>16}" for s in stage_names)
        + f"{'vs plain':>10}"
    )
    print(header)
    print("-" * len(header))
    base = results[0][1]
    for name, wall, run in results:
        by_stage = {s.stage: s for s in run.stages}
        cells = "".join(f"{images / max(by_stage[s].seconds, 1e-9):>16.1f}" for s in stage_names)
        print(f"{name:<10}{wall:>9.2f}{cells}{wall / base:>9.2f}x")
    plain_stage_sum = sum(s.seconds for s in plain.stages)
    plain_wall, flow1 = results[0][1], results[1][1]
    tasks = len(stage_names) * plain.shards
    print()
    print(
        f"sum of stage functions without Prefect: {plain_stage_sum:.2f}s (plain wall {plain_wall:.2f}s)"
    )
    print(
        f"Prefect overhead, flow x1 wall - plain wall: {flow1 - plain_wall:.2f}s over {tasks} shard tasks "
        f"and {len(plain.stages) + 1} subflows ({(flow1 - plain_wall) / tasks:.2f}s per shard task); "
        f"flow x1 / plain = {flow1 / plain_wall:.2f}x"
    )
    print("rows: every flow variant equals the plain build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
