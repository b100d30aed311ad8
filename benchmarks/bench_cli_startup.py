"""Start-up of the ``synthvg`` command line against a bare Python + DuckDB process.

Each command runs in a fresh interpreter (what a user waits for), interleaved with the others
so that load on a shared machine hits every variant alike; medians of wall time and of CPU time
(user + sys, less sensitive to other processes). ``--compare SRC`` also runs the CLI from
another source tree (e.g. ``git archive <commit> src | tar -x -C /tmp/old``), side by side.

Usage: python benchmarks/bench_cli_startup.py [--runs N] [--compare SRC]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BARE = "import duckdb; duckdb.connect().sql('SELECT 1').fetchall()"


def _demo_root() -> str:
    from synthvg.pipeline import run_build
    from synthvg.schemas.config import load_config

    out = Path(tempfile.mkdtemp(prefix="synthvg-bench-cli-")) / "root"
    run_build(load_config(REPO / "configs" / "demo.yaml", out=str(out), limit=8))
    return str(out)


def _run(argv: list[str], env: dict) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"{argv} failed ({status})")
    return time.perf_counter() - t0, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--compare", help="another src/ folder to run side by side")
    args = ap.parse_args()
    root = _demo_root()
    png = str(Path(root).parent / "show.png")
    commands = {
        "--help": ["--help"],
        "sql SELECT 1": ["sql", "--root", root, "SELECT 1"],
        "stats": ["stats", "--root", root],
        "show": ["show", "--root", root, "coco:17627", "--out", png],
    }
    trees = {"this": str(REPO / "src")} | ({"compare": args.compare} if args.compare else {})
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.runs):
        times.setdefault("bare python + duckdb", []).append(
            _run([sys.executable, "-c", BARE], dict(os.environ))
        )
        for name, cli_args in commands.items():
            for tree, src in trees.items():
                env = {**os.environ, "PYTHONPATH": src}
                times.setdefault(f"{tree:<7} {name}", []).append(
                    _run([sys.executable, "-m", "synthvg.cli", *cli_args], env)
                )
    print(f"medians of {args.runs} runs; demo root of 8 images at {root}")
    print(f"{'command':<28}{'wall s':>8}{'cpu s':>8}")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"{name:<28}{wall:>8.2f}{cpu:>8.2f}")


if __name__ == "__main__":
    main()
