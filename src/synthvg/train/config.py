"""The training config (``configs/train-*.yaml``): model, data mixture, learning rates, schedule.

Relative paths resolve against the YAML file's folder, as build configs do. Every dataset
source names a root and optionally a pinned dataset ``version`` (that of its ``completions``
Delta table, as ``synthvg versions`` lists them); the export's manifest records the version
each source was read at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from synthvg.schemas.config import ConfigError, format_validation_error

Task = Literal[
    "scene_graph",
    "region_relations",
    "region_caption",
    "grounding",
    "conversations",
    "relation_qa",
    "relation_choice",
]
#: The tasks each model kind renders (LLaVA-SG: docs/LLAVA_SG.md).
KIND_TASKS = {
    "robin": ("scene_graph", "region_relations", "region_caption", "grounding", "conversations"),
    "llava_sg": ("relation_qa", "relation_choice", "conversations"),
}
#: The groups of ``Groups`` a model kind does not have.
FOREIGN_GROUPS = {"robin": ("sge", "graph_projector"), "llava_sg": ("mask_extractor",)}
#: Parameter groups by module prefix (the first match wins; ``lm`` is everything else).
GROUP_PREFIXES = {
    "vision": ("model.vision_tower.",),
    "projector": ("model.mm_projector.",),
    "mask_extractor": ("mask_extractor.",),
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    kind: Literal["robin", "llava_sg"] = Field(
        "robin", description="the model trained: Robin or LLaVA-SG (docs/LLAVA_SG.md)"
    )
    checkpoint: str = Field(
        description="the model to start from (its saved layout); a later stage: the previous export"
    )
    sge_mode: Literal["off", "graph", "message", "prompt"] | None = Field(
        None,
        description="llava_sg: the SGE module's mode for this run (off: no graph tokens, stage 1); None keeps the checkpoint's",
    )
    gradient_checkpointing: bool = False
    bf16: bool = Field(False, description="bf16 autocast (GPU)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


class Source(_Section):
    """One part of the mixture: rows of a view or SELECT over a dataset root (or a LLaVA/Osprey
    JSON file of conversations), rendered by ``task``."""

    name: str
    task: Task
    root: str | None = Field(None, description="dataset root (not for conversations)")
    version: int | None = Field(
        None,
        ge=0,
        description="read the root as of this dataset version (`synthvg versions`); None: the "
        "latest, whose number the manifest records",
    )
    view: str | None = Field(
        None,
        description="a view of the root: svg_relations, svg_full, relations, descriptions, regions",
    )
    sql: str | None = Field(
        None, description="or a read-only SELECT over the root's views; ? are bound to params"
    )
    params: list = Field(default_factory=list)
    path: str | None = Field(None, description="conversations: LLaVA/Osprey JSON file")
    image_root: str | None = Field(
        None, description="conversations: folder the 'image' names are relative to"
    )
    regions: Literal["listed", "inline"] | None = Field(
        None,
        description="conversations: Osprey-724K region turns from each record's `annotation` "
        "masks; listed: conversation/short-form/part-level files, inline: LVIS positive/negative",
    )
    weight: float = Field(
        1.0, gt=0, description="copies of each example (fractions sample); after cap"
    )
    cap: int | None = Field(None, ge=1, description="at most this many examples (a seeded sample)")
    split: Literal["train", "test"] | None = Field(
        None, description="only the images of this side of the held-out split (by image id hash)"
    )
    holdout_percent: float = Field(
        10.0, gt=0, lt=100, description="the held-out (test) share of images for split"
    )

    @model_validator(mode="after")
    def _where_from(self):
        if self.task == "conversations":
            if not self.path:
                raise ValueError(
                    f"source {self.name}: conversations need path (a LLaVA/Osprey JSON file)"
                )
        else:
            if not self.root:
                raise ValueError(
                    f"source {self.name}: task {self.task} needs root (a dataset root)"
                )
            if (self.view is None) == (self.sql is None):
                raise ValueError(f"source {self.name}: give exactly one of view or sql")
            if self.view is not None and not _IDENTIFIER.fullmatch(self.view):
                raise ValueError(f"source {self.name}: view {self.view!r} is not a view name")
        if self.regions is not None and self.task != "conversations":
            raise ValueError(f"source {self.name}: regions is for conversations (Osprey files)")
        if self.version is not None and self.task == "conversations":
            raise ValueError(f"source {self.name}: version pins a dataset root, not a JSON file")
        return self


class DataSection(_Section):
    sources: list[Source] = Field(min_length=1)
    max_length: int | None = Field(
        None, ge=32, description="spliced tokens per example; None: the model's limit"
    )
    max_regions: int = Field(
        100, ge=1, description="largest regions per image, as the robin stage takes them"
    )
    seed: int = 0


class Groups(_Section):
    """Learning rate per parameter group; null freezes the group."""

    vision: float | None = None
    projector: float | None = 2e-5
    mask_extractor: float | None = Field(2e-5, description="Robin only")
    sge: float | None = Field(None, description="LLaVA-SG only: the SGE module")
    graph_projector: float | None = Field(None, description="LLaVA-SG only: W_g")
    lm: float | None = 2e-5


class TrainSection(_Section):
    output_dir: str = Field(description="Trainer checkpoints (resume), logs, the mixture counts")
    export_dir: str | None = Field(
        None, description="the final model in the released layout; default output_dir/export"
    )
    epochs: float = 1.0
    max_steps: int = Field(-1, description=">0 overrides epochs")
    batch_size: int = Field(1, ge=1, description="per device")
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_steps: int = Field(500, ge=1)
    save_total_limit: int | None = 2
    logging_steps: int = Field(10, ge=1)
    group_by_length: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dataloader_workers: int = 0
    seed: int = 0


class TrainConfig(_Section):
    name: str
    stage: Literal[0, 1, 2, 3] | None = Field(
        None, description="the paper's stage this recipe is (informational)"
    )
    model: ModelSection
    data: DataSection
    groups: Groups = Groups()
    train: TrainSection

    @model_validator(mode="after")
    def _fits_the_model(self):
        kind = self.model.kind
        if bad := [s.name for s in self.data.sources if s.task not in KIND_TASKS[kind]]:
            raise ValueError(
                f"model kind {kind} trains on tasks {list(KIND_TASKS[kind])}; source(s) {bad} are not one"
            )
        if bad := [g for g in FOREIGN_GROUPS[kind] if g in self.groups.model_fields_set]:
            raise ValueError(f"groups {bad} are not parameter groups of a {kind} model")
        if self.model.sge_mode is not None and kind != "llava_sg":
            raise ValueError("model.sge_mode is a llava_sg setting")
        return self

    def learning_rates(self) -> dict[str, float | None]:
        """The learning rate of each of this model kind's parameter groups."""
        lrs = self.groups.model_dump()
        return {g: v for g, v in lrs.items() if g not in FOREIGN_GROUPS[self.model.kind]}

    def digest(self) -> str:
        """sha256 of the config as validated (what the export manifest records)."""
        return hashlib.sha256(
            json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()

    @property
    def export_dir(self) -> str:
        return self.train.export_dir or os.path.join(self.train.output_dir, "export")


def _resolve(value: str | None, base: Path) -> str | None:
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Load, validate and resolve a training YAML; problems are one ConfigError line."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    base = path.resolve().parent
    sources = [
        s.model_copy(
            update={k: _resolve(getattr(s, k), base) for k in ("root", "path", "image_root")}
        )
        for s in cfg.data.sources
    ]
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(
                update={"checkpoint": _resolve(cfg.model.checkpoint, base)}
            ),
            "data": cfg.data.model_copy(update={"sources": sources}),
            "train": cfg.train.model_copy(
                update={
                    "output_dir": _resolve(cfg.train.output_dir, base),
                    "export_dir": _resolve(cfg.train.export_dir, base),
                }
            ),
        }
    )
