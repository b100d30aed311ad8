"""The build config: the sections every stage owns, assembled, and loaded from YAML.

Unknown keys are errors (a typo must not silently fall back to a default), and every error
names the key path. Relative paths in a YAML file resolve against the file's own folder (every
:data:`~synthvg.config.fields.InputPath` field, at any depth), so a config means the same thing
from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from synthvg.config import fields
from synthvg.config.base import ConfigError, Section, format_validation_error
from synthvg.config.depth import DepthConfig, NoDepthConfig
from synthvg.config.edit import EditConfig, NoEditConfig
from synthvg.config.executor import ExecutorConfig
from synthvg.config.fields import OutputPath
from synthvg.config.filters import FiltersConfig, NoFiltersConfig
from synthvg.config.regions import RegionsConfig
from synthvg.config.robin import NoRobinConfig, RobinStageConfig
from synthvg.config.seeds import SeedsConfig
from synthvg.config.teacher import RuleTeacherConfig, TeacherConfig

#: Build settings that are not a stage's section.
BUILD_SETTINGS = frozenset({"name", "out", "shard_size", "limit", "executor"})


class BuildConfig(Section):
    """Everything one dataset build needs: a section per stage, named as the stage."""

    name: str = Field("synthvg", pattern=r"^[A-Za-z0-9_.-]+$")
    out: OutputPath = Field(description="dataset root: a folder or an fsspec URL")
    shard_size: int = Field(
        500,
        ge=1,
        description="images per shard (one Prefect task and one commit per stage each); each costs "
        "~0.1-0.3 s, so cheap CPU stages want hundreds of images per shard (benchmarks/RESULTS.md)",
    )
    limit: int | None = Field(None, ge=1, description="build only the first N images")
    seeds: SeedsConfig
    regions: RegionsConfig = RegionsConfig()
    depth: DepthConfig = NoDepthConfig()
    teacher: TeacherConfig = RuleTeacherConfig()
    filters: FiltersConfig = NoFiltersConfig(backend="none")
    robin: RobinStageConfig = NoRobinConfig()
    edit: EditConfig = NoEditConfig()
    executor: ExecutorConfig = ExecutorConfig()

    @field_validator("out")
    @classmethod
    def _out_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _executor_names_stages(self) -> BuildConfig:
        # Every stage has a config section of its name; anything else is a typo.
        stages = set(type(self).model_fields) - BUILD_SETTINGS
        named = set(self.executor.gpus) | {s for lim in self.executor.limits for s in lim.stages}
        if unknown := sorted(named - stages):
            raise ValueError(
                f"executor names unknown stage(s) {unknown}; stages are {sorted(stages)}"
            )
        return self

    def stage_config(self, stage: str) -> BaseModel:
        return getattr(self, stage)


def load_config(path: str | os.PathLike, **overrides: Any) -> BuildConfig:
    """Load and validate a YAML config; ``overrides`` (out, limit, ...) win over the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(
            f"config {path} is a folder, not a YAML file (e.g. configs/demo.yaml)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, got {type(raw).__name__}"
        )
    raw.update({k: v for k, v in overrides.items() if v is not None})
    base = path.resolve().parent
    try:
        cfg = BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    return resolve_paths(cfg, base)


def with_executor(
    cfg: BuildConfig, kind: str | None = None, address: str | None = None
) -> BuildConfig:
    """``cfg`` with the command line's ``--runner``/``--address`` over its executor section."""
    update = {k: v for k, v in (("kind", kind), ("address", address)) if v is not None}
    if not update:
        return cfg
    try:
        executor = ExecutorConfig.model_validate({**cfg.executor.model_dump(), **update})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "the command line")) from None
    return cfg.model_copy(update={"executor": executor})


def resolve_paths(cfg: BuildConfig, base: Path) -> BuildConfig:
    """Make every relative path in ``cfg`` absolute against ``base`` (every path field, at any
    depth: see :func:`synthvg.config.fields.resolve_paths`)."""
    return fields.resolve_paths(cfg, base)


def input_paths(cfg: BuildConfig) -> list[tuple[str, str]]:
    """``(key, path)`` of every file or folder the build reads: each set
    :data:`~synthvg.config.fields.InputPath` field of the sections in use (the chosen proposer's,
    the stages that run; a stage set to ``backend: none`` has no path fields)."""
    return fields.input_paths(cfg)


__all__ = [
    "BUILD_SETTINGS",
    "BuildConfig",
    "ConfigError",
    "input_paths",
    "load_config",
    "resolve_paths",
    "with_executor",
]
