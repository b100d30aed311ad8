"""Orchestration overhead per shard for each runner (threads, Dask, Ray), against a real server.

Two workloads, each run under every runner against one ``prefect server start`` (a separate
process, as in production):

  demo    the demo build (all 38 images, shards of 8) with ``workers: 1``, so runners differ only
          in orchestration; overhead per shard task = (flow wall - plain wall) / shard tasks,
          where plain is synthvg.pipeline.run_build (the same stage code, no Prefect). Rows are
          checked equal to the plain build's.
  no-op   a synthetic build of N images (default 10,000 in shards of 50) whose stages do nothing:
          the same structure as the build flow (a subflow per stage through the same
          task_runners() and placement(), one task per shard with the shard task's arguments,
          progress updates and a table artifact per stage), so all its time is orchestration.
          Cluster start-up (Dask LocalCluster, ray.init) is timed apart.

Usage: python benchmarks/bench_runners.py [--runners threads,dask,ray] [--images N]
       [--shard-size N] [--stages N] [--workers N] [--skip-demo] [--write]
"""

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))
from _results import append_results  # noqa: E402


def noop_flows():
    """The no-op stage flow, built after Prefect is pointed at the server."""
    from prefect import flow, task
    from prefect.artifacts import (
        create_progress_artifact,
        create_table_artifact,
        update_progress_artifact,
    )
    from prefect.cache_policies import NO_CACHE
    from prefect.futures import as_completed

    from synthvg.flows.runners import placement
    from synthvg.pipeline import ShardResult
    from synthvg.schemas.config import BuildConfig
    from synthvg.stages import ShardSpec

    @task(name="noop-shard", cache_policy=NO_CACHE, task_run_name="{stage}-shard-{shard.index:05d}")
    def noop_shard(config: BuildConfig, stage: str, shard: ShardSpec, run_id: str) -> ShardResult:
        return ShardResult(
            stage=stage, shard=shard.index, status="written", rows={"none": len(shard.image_ids)}
        )

    @flow(name="noop-stage", flow_run_name="{stage}")
    def noop_stage(config: BuildConfig, stage: str, images: int, run_id: str) -> float:
        t0 = time.perf_counter()
        size = config.shard_size
        shards = [
            ShardSpec(
                index=i, image_ids=[f"synthetic:{j}" for j in range(s, min(s + size, images))]
            )
            for i, s in enumerate(range(0, images, size))
        ]
        progress = create_progress_artifact(progress=0.0, key=f"noop-{stage}-progress")
        with placement(config.executor, stage):
            futures = [noop_shard.submit(config, stage, sh, run_id) for sh in shards]
        done = []
        for f in as_completed(futures):
            done.append(f.result())
            update_progress_artifact(progress, progress=100.0 * len(done) / len(shards))
        create_table_artifact(
            key=f"noop-{stage}", table=[r.model_dump(include={"shard", "status"}) for r in done]
        )
        return time.perf_counter() - t0

    return noop_stage


def bench_noop(kind: str, images: int, shard_size: int, stages: int, workers: int) -> dict:
    from prefect import flow

    from synthvg.flows.runners import task_runners
    from synthvg.schemas.config import BuildConfig

    noop_stage = noop_flows()
    cfg = BuildConfig.model_validate(
        {
            "name": "noop",
            "out": "/nonexistent",
            "shard_size": shard_size,
            "seeds": {"sources": [{"annotations": "-", "images": "-"}]},
            "executor": {"kind": kind, "workers": workers},
        }
    )

    @flow(name="noop-build")
    def noop_build() -> tuple[float, float]:
        t0 = time.perf_counter()
        with task_runners(cfg.executor) as runner:
            started = time.perf_counter() - t0
            seconds = sum(
                noop_stage.with_options(task_runner=runner())(cfg, f"stage{i}", images, "bench")
                for i in range(stages)
            )
        return started, seconds

    t0 = time.perf_counter()
    started, stage_seconds = noop_build()
    shards = -(-images // shard_size) * stages
    return {
        "runner": kind,
        "shard_tasks": shards,
        "cluster_start_s": started,
        "stages_s": stage_seconds,
        "wall_s": time.perf_counter() - t0,
        "per_shard_ms": 1000 * stage_seconds / shards,
    }


def bench_demo(kind: str, plain_s: float, plain_rows: dict, tmp: Path) -> dict:
    from helpers import dataset_rows, demo_config

    from synthvg.flows import build_dataset

    cfg = demo_config(tmp / kind, executor={"kind": kind, "workers": 1})
    t0 = time.perf_counter()
    run = build_dataset(cfg)
    wall = time.perf_counter() - t0
    assert dataset_rows(cfg.out) == plain_rows, f"{kind}: rows differ from the plain build"
    tasks = sum(s.shards_total for s in run.stages)
    return {
        "runner": kind,
        "shard_tasks": tasks,
        "wall_s": wall,
        "plain_s": plain_s,
        "per_shard_ms": 1000 * (wall - plain_s) / tasks,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runners", default="threads,dask,ray")
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=50)
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument(
        "--workers", type=int, default=2, help="no-op build: threads / local cluster workers"
    )
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument(
        "--write", action="store_true", help="append the results to benchmarks/RESULTS.md"
    )
    args = ap.parse_args()
    runners = args.runners.split(",")

    from local_prefect import local_server

    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="synthvg-bench-runners-"))
    with local_server(tmp / "home") as api:
        os.environ.update(
            PREFECT_API_URL=api,
            PREFECT_HOME=str(tmp / "home"),
            PREFECT_LOGGING_LEVEL="WARNING",
            RAY_USAGE_STATS_ENABLED="0",
        )
        demo = []
        if not args.skip_demo:
            from helpers import dataset_rows, demo_config

            from synthvg.pipeline import run_build

            plain = demo_config(tmp / "plain")
            t0 = time.perf_counter()
            run_build(plain)
            plain_s = time.perf_counter() - t0
            rows = dataset_rows(plain.out)
            demo = [bench_demo(k, plain_s, rows, tmp) for k in runners]
        noop = [
            bench_noop(k, args.images, args.shard_size, args.stages, args.workers) for k in runners
        ]

    # Shared machines: the load says how much of a figure is other people's work.
    lines = _report(args, demo, noop, (load_before, os.getloadavg()[0]))
    print("\n".join(lines))
    if args.write:
        append_results("\n".join(lines))
    return 0


def _report(args, demo: list[dict], noop: list[dict], load: tuple[float, float]) -> list[str]:
    import prefect

    versions = [f"prefect {prefect.__version__}"]
    for mod in ("prefect_dask", "distributed", "prefect_ray", "ray"):
        try:
            versions.append(f"{mod.replace('_', '-')} {__import__(mod).__version__}")
        except ImportError:
            pass
    lines = [
        "## Orchestration overhead per shard, threads / Dask / Ray — `benchmarks/bench_runners.py`",
        "",
        f"{dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"{', '.join(versions)}; one `prefect server start` on 127.0.0.1 (SQLite); local clusters; "
        f"1-minute load average {load[0]:.1f} before, {load[1]:.1f} after.",
    ]
    if demo:
        lines += [
            "",
            f"Demo build (38 images, shards of 8, `workers: 1`), against the plain sequential build "
            f"({demo[0]['plain_s']:.1f} s); rows equal to the plain build's under every runner.",
            "",
            "| runner | shard tasks | wall s | overhead per shard task (ms) |",
            "|---|---:|---:|---:|",
            *[
                f"| {r['runner']} | {r['shard_tasks']} | {r['wall_s']:.1f} | {r['per_shard_ms']:.0f} |"
                for r in demo
            ],
        ]
    lines += [
        "",
        f"No-op build: {args.images:,} images in shards of {args.shard_size}, {args.stages} stages, "
        f"{args.workers} workers; every second is orchestration.",
        "",
        "| runner | shard tasks | cluster start s | stage subflows s | per shard task (ms) |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['runner']} | {r['shard_tasks']} | {r['cluster_start_s']:.1f} | {r['stages_s']:.1f} | {r['per_shard_ms']:.0f} |"
            for r in noop
        ],
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
