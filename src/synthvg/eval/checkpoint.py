"""Score a Robin checkpoint on PSG: run it with the robin stage over a PSG root, then OpenPSG recall.

The build config names the images (a ``psg`` seed source, usually with ``select`` keeping the
test images) and where the root goes; this code sets ``robin: {checkpoint: ...}`` in it, builds
(only the stages that changed run: the seeds of an earlier evaluation are reused), and scores
the root's ``robin`` relations against its own PSG seed relations with
:func:`synthvg.eval.run.evaluate_sgg` (``split`` keeps PSG's test images). Every image was run through Robin, so an image where it
wrote no relation scores zero (``missing='zero'``; OpenPSG's models always answer). Plain code: the
``evaluate`` flow and ``synthvg evaluate checkpoint`` both call it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from synthvg.eval.inputs import EvalInputError
from synthvg.eval.run import PredSource, SggReport, evaluate_sgg, write_results
from synthvg.eval.sgg import MatchBy


def checkpoint_of_training(config_path: str) -> str:
    """The export folder a training config writes (what a finished ``train-robin`` run made)."""
    from synthvg.train.config import load_train_config

    export = load_train_config(config_path).export_dir
    if not os.path.isfile(os.path.join(export, "config.json")):
        raise EvalInputError(f"training config {config_path}: no exported checkpoint at {export}")
    return export


def robin_build(build: dict, checkpoint: str, **robin) -> dict:
    """The build config (a dict, as a deployment passes it) with the robin stage on ``checkpoint``
    (its other robin settings kept, ``robin`` overriding them)."""
    current = dict(build.get("robin") or {})
    current.pop("backend", None)
    return {**build, "robin": {**current, **robin, "backend": "robin", "checkpoint": checkpoint}}


def score_root(
    root: str,
    *,
    split: str | None = "test",
    match_by: MatchBy = "mask",
    ks: tuple[int, ...] = (20, 50, 100),
    out: str | None = None,
    embedding: bool = True,
    checkpoint: str | None = None,
) -> tuple[SggReport, list[Path]]:
    """OpenPSG recall of the root's robin relations against its PSG seeds; results written to
    ``out`` (default ``ROOT/eval/sgg-robin``) with the checkpoint named in results.json."""
    report = evaluate_sgg(
        root,
        PredSource(root, "robin"),
        match_by=match_by,
        ks=ks,
        split=split,
        embedding=embedding,
        missing="zero",
        allow_empty=True,
    )
    if checkpoint:
        report.notes.append(f"checkpoint: {checkpoint}")
    folder = out or os.path.join(root, "eval", "sgg-robin")
    files = write_results(report, folder)
    if checkpoint:
        results = json.loads(files[0].read_text())
        results["checkpoint"] = checkpoint
        manifest = Path(checkpoint) / "training.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            results["training"] = {
                k: m.get(k) for k in ("config_sha256", "steps", "final_loss", "parent_checkpoint")
            }
        files[0].write_text(json.dumps(results, indent=2, default=str))
    return report, files


def evaluate_checkpoint(
    build: dict,
    checkpoint: str,
    *,
    split: str | None = "test",
    match_by: MatchBy = "mask",
    ks: tuple[int, ...] = (20, 50, 100),
    out: str | None = None,
    embedding: bool = True,
    robin: dict | None = None,
) -> tuple[SggReport, list[Path]]:
    """Build ``build`` with Robin on ``checkpoint`` (robin stage settings from ``robin``), then score."""
    from synthvg.pipeline import run_build
    from synthvg.schemas.config import BuildConfig

    cfg = BuildConfig.model_validate(robin_build(build, checkpoint, **(robin or {})))
    run = run_build(cfg)
    if run.status != "completed":
        raise EvalInputError(f"the evaluation build {cfg.out} ended {run.status}")
    return score_root(
        cfg.out,
        split=split,
        match_by=match_by,
        ks=ks,
        out=out,
        embedding=embedding,
        checkpoint=checkpoint,
    )
