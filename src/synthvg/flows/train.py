"""The ``train-robin`` flow: :func:`synthvg.train.trainer.train` with its results as artifacts.

The training itself is plain code (``synthvg train`` runs the same); the flow adds the loss
curve (PNG and table), throughput, the data mixture's counts and a link to the exported
checkpoint, which a following build uses as ``robin: {checkpoint: ...}``.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from synthvg.flows.build import artifact_key


@flow(name="train-robin")
def train_robin(config: str) -> str:
    """Train Robin from a training YAML (resuming when checkpoints exist); returns the export dir."""
    from synthvg.train.config import load_train_config
    from synthvg.train.trainer import LOSS_PNG, MANIFEST, train

    logger = get_run_logger()
    cfg = load_train_config(config)
    result = train(cfg, emit=logger.info)
    key = artifact_key("train", cfg.name)
    create_link_artifact(
        Path(result.export_dir).resolve().as_uri(),
        link_text=f"{cfg.model.kind} checkpoint ({cfg.name})",
        key=f"{key}-checkpoint",
        description="the export (docs/TRAINING.md, docs/LLAVA_SG.md)",
    )
    mixture = [
        {
            "source": n,
            **{k: v for k, v in c.items() if k != "dropped"},
            "dropped": str(c["dropped"]),
        }
        for n, c in result.mixture["sources"].items()
    ]
    create_table_artifact(mixture, key=f"{key}-mixture", description="examples per source and task")
    import json

    with open(os.path.join(result.export_dir, MANIFEST)) as f:
        curve = json.load(f)["loss_curve"]
    create_table_artifact(
        curve or [{"step": 0, "loss": None}],
        key=f"{key}-loss",
        description="training loss per logged step",
    )
    with open(os.path.join(cfg.train.output_dir, LOSS_PNG), "rb") as f:
        png = base64.b64encode(f.read()).decode()
    create_markdown_artifact(
        f"# Training {cfg.name}\n\n{result.steps} steps, final loss {result.final_loss}, "
        f"{result.tokens_per_s:,.0f} tokens/s, {result.examples_per_s:,.2f} examples/s"
        f"{f', resumed from {result.resumed_from}' if result.resumed_from else ''}.\n\n"
        f"![loss](data:image/png;base64,{png})\n",
        key=f"{key}-summary",
    )
    return result.export_dir
