"""Robin training throughput on the CPU, through the real path: `synthvg train`'s code.

Builds the demo dataset (``--images`` images), a tiny random Robin in the released layout,
and trains it with configs/train-tiny.yaml's mixture (paths rewritten to the temporary
folder) for ``--steps`` steps; reports examples/s and tokens/s (spliced tokens, image tokens
included) as the trainer measured them, after one warm-up run of 2 steps (imports, first
batch). The GPU benchmark (a Robin-3B-sized model, bf16, tokens/s per GPU and MFU beside
the LLaVA/Osprey-style pad-to-longest setting) is benchmarks/bench_train_mfu.py.

Run: PYTHONPATH=src python benchmarks/bench_train.py [--steps 24 --batch-size 2]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()

    from helpers import demo_config

    from synthvg.models.robin.testing import make_checkpoint
    from synthvg.pipeline import run_build
    from synthvg.train.config import load_train_config
    from synthvg.train.trainer import train

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = demo_config(tmp / "demo", limit=args.images)
    run_build(cfg)
    make_checkpoint(str(tmp / "robin-tiny"))
    raw = yaml.safe_load((REPO / "configs" / "train-tiny.yaml").read_text())
    raw["model"]["checkpoint"] = str(tmp / "robin-tiny")
    for s in raw["data"]["sources"]:
        s["root"] = cfg.out
    results = {}
    for label, steps in (("warm-up", 2), ("timed", args.steps)):
        raw["train"] = {
            **raw["train"],
            "output_dir": str(tmp / label),
            "max_steps": steps,
            "save_steps": 10_000,
            "batch_size": args.batch_size,
            "logging_steps": max(steps // 4, 1),
        }
        path = tmp / f"{label}.yaml"
        path.write_text(yaml.safe_dump(raw))
        start = time.monotonic()
        results[label] = (
            train(load_train_config(path), emit=lambda _: None),
            time.monotonic() - start,
        )
    result, wall = results["timed"]
    print(
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )
    print(
        f"mixture: {result.mixture['examples']} examples, {result.mixture['tokens']} tokens; "
        f"{args.steps} steps x batch {args.batch_size}"
    )
    print(
        f"examples/s {result.examples_per_s:.2f}  tokens/s {result.tokens_per_s:,.0f}  "
        f"final loss {result.final_loss:.4f}  wall incl. data+export {wall:.1f} s"
    )


if __name__ == "__main__":
    main()
