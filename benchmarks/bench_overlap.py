"""Overlapped shard execution against stage-by-stage execution, side by side in one run.

Two workloads, each built twice through the real build flow (``executor.overlap`` true, then
false) on a temporary Prefect server:

  simulated  the demo's seeds, then a simulated GPU stage (the regions stage replaced by a
             stand-in that sleeps ``--gpu-s`` per shard holding the one "GPU") and a simulated
             API stage (the teacher, sleeping ``--api-s`` per shard holding the one API slot),
             which reads the GPU stage's output. Stage-by-stage, the API stage waits for every
             GPU shard; overlapped, it works on shard 1 while the GPU works on shard 2. The
             sum of the two stages' times is what stage-by-stage costs at best.
  demo       the real demo build (all 38 images): CPU-bound stages on a thread pool, where a
             task waiting for its upstream holds a worker thread.

Rows of both builds of a workload are checked equal. Prints a table; ``--write`` appends it to
benchmarks/RESULTS.md.

Usage: python benchmarks/bench_overlap.py [--shards 8] [--gpu-s 0.5] [--api-s 0.5] [--skip-demo] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _results import append_results  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-overlap-prefect-"))


def simulate(gpu_s: float, api_s: float):
    """Replace the regions and teacher stages' work by sleeps holding one GPU / one API slot."""
    from synthvg.stages import RegionsStage, StageOutput, TeacherStage

    gpu, api = threading.Semaphore(1), threading.Semaphore(1)

    def stand_in(lock: threading.Semaphore, seconds: float):
        def process(self, shard, inputs, ctx):
            inputs.table("images")  # it does read its upstream shard
            with lock:
                time.sleep(seconds)
            return StageOutput(metrics={"simulated_s": seconds})

        return process

    RegionsStage.process = stand_in(gpu, gpu_s)
    TeacherStage.process = stand_in(api, api_s)


def build(cfg, overlap: bool) -> tuple[float, dict]:
    from helpers import dataset_rows

    from synthvg.flows import build_dataset

    cfg = cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"overlap": overlap})})
    t0 = time.perf_counter()
    run = build_dataset(cfg)
    wall = time.perf_counter() - t0
    assert run.status == "completed", run.status
    return wall, dataset_rows(cfg.out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--gpu-s", type=float, default=0.5)
    ap.add_argument("--api-s", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each variant (median reported)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    from helpers import demo_config
    from prefect import flow

    flow(name="warm-up")(lambda: None)()  # the temporary server starts here, not in a timed build
    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-"))

    def compare(label: str, **overrides) -> dict[bool, float]:
        """Both variants, alternating, ``--rounds`` times each; medians; rows checked equal."""
        walls: dict[bool, list[float]] = {False: [], True: []}
        reference = None
        for k in range(args.rounds):
            for overlap in (False, True):
                wall, got = build(demo_config(tmp / f"{label}-{k}-{overlap}", **overrides), overlap)
                assert reference is None or got == reference, f"{label}: rows differ between runs"
                reference = got
                walls[overlap].append(wall)
        return {o: statistics.median(w) for o, w in walls.items()}

    rows = []
    if not args.skip_demo:
        walls = compare("demo", executor={"workers": 2})
        rows.append(("demo (38 images, real stages)", "-", walls[False], walls[True]))
    simulate(args.gpu_s, args.api_s)
    walls = compare(
        "sim",
        limit=args.shards,
        shard_size=1,
        executor={"workers": args.workers},
        filters={"backend": "none"},
    )
    floor = args.shards * (args.gpu_s + args.api_s)
    rows.append(
        (
            f"simulated GPU {args.gpu_s:g}s + API {args.api_s:g}s per shard, {args.shards} shards",
            f"{floor:.1f}",
            walls[False],
            walls[True],
        )
    )

    lines = [
        f"Overlapped vs stage-by-stage shard execution ({dt.date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, simulated workers {args.workers}, demo workers 2, temporary Prefect server, "
        f"median of {args.rounds} alternating runs each)",
        "",
        "| workload | sum of the two stages' times s | stage by stage s | overlapped s | overlapped / stage by stage |",
        "|---|---|---|---|---|",
    ]
    for name, floor_s, barrier, overlapped in rows:
        lines.append(
            f"| {name} | {floor_s} | {barrier:.1f} | {overlapped:.1f} | {overlapped / barrier:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_results(table, "Overlapped shard execution (benchmarks/bench_overlap.py)")


if __name__ == "__main__":
    main()
