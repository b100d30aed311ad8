"""Build configuration: one validated pydantic model, loaded from YAML.

Unknown keys are errors (a typo must not silently fall back to a default), and every error
names the key path. Relative paths in a YAML file resolve against the file's own folder, so a
config means the same thing from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from synthvg.llm.config import LLMConfig


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CocoSource(Section):
    """COCO ``instances_*.json`` (2014 or 2017 names) with its image folder."""

    kind: Literal["coco"] = "coco"
    annotations: str = Field(description="path to instances_*.json")
    images: str = Field(description="folder holding the images named by file_name")
    split: str | None = Field(None, description="override the split (default: from coco_url)")


# More readers join this union (discriminated by ``kind``, defaulting to coco) as they land.
SeedSource = CocoSource


class SeedsConfig(Section):
    sources: list[SeedSource] = Field(min_length=1)
    min_region_area: float = Field(1.0, ge=0, description="regions below this many pixels are dropped (errors table)")


class FelzenszwalbConfig(Section):
    scale: float = Field(300.0, gt=0)
    sigma: float = Field(0.8, ge=0)
    min_size: int = Field(50, ge=1)
    max_side: int = Field(640, ge=32, description="images are downscaled to this longest side first")
    max_proposals: int = Field(400, ge=1, description="keep the largest N segments per image")


class RegionsConfig(Section):
    proposer: Literal["felzenszwalb", "none"] = Field(
        "felzenszwalb",
        description="mask proposer; felzenszwalb is the weight-free CPU default (not SAM)",
    )
    felzenszwalb: FelzenszwalbConfig = FelzenszwalbConfig()
    iou_threshold: float = Field(0.5, ge=0, le=1, description="keep a region iff best IoU > this")
    feed: Literal["kept", "all"] = Field(
        "kept",
        description="which regions later stages see: only confirmed ones (the paper) or all",
    )


class DepthConfig(Section):
    backend: Literal["none"] = "none"


class RuleTeacherConfig(Section):
    """The weight-free teacher: spatial relations from geometry, labelled generator='rules'."""

    backend: Literal["rules"] = "rules"
    max_subjects: int = Field(10, ge=1, description="largest regions taken as subjects")
    min_subjects: int = Field(5, ge=1, description="the paper asks for >= 5 subjects per image")
    objects_per_subject: int = Field(4, ge=1, description="nearest regions related to each subject")


class OpenAITeacherConfig(LLMConfig):
    """A GPT-4V-class teacher behind any OpenAI-compatible endpoint (see docs/TEACHER.md)."""

    backend: Literal["openai"]
    prompt: str = Field("teacher/v1", description="prompt template under synthvg/prompts/")
    min_subjects: int = Field(5, ge=1, description="K: subjects asked for per image")
    max_subjects: int = Field(20, ge=1)
    max_regions: int = Field(60, ge=2, description="largest regions marked and listed per image")
    image_max_side: int = Field(1024, ge=64, description="the marked image is downscaled to this")
    detail: Literal["low", "high", "auto"] = "high"
    batch: bool = Field(False, description="send through the OpenAI Batch API (half price, hours)")
    batch_poll_seconds: float = Field(60.0, gt=0)
    batch_wait_seconds: float | None = Field(
        None, gt=0, description="stop waiting after this long; the next build resumes the batch"
    )


class NoTeacherConfig(Section):
    backend: Literal["none"]


def _backend_tag(default: str):
    """Discriminate on ``backend``, defaulting when the key is absent (so typos elsewhere are
    reported as unknown keys of the default backend, not as a missing tag)."""

    def tag(value) -> str:
        if isinstance(value, dict):
            return value.get("backend", default)
        return getattr(value, "backend", default)

    return Discriminator(tag)


TeacherConfig = Annotated[
    Annotated[RuleTeacherConfig, Tag("rules")]
    | Annotated[OpenAITeacherConfig, Tag("openai")]
    | Annotated[NoTeacherConfig, Tag("none")],
    _backend_tag("rules"),
]


class SpatialRulesConfig(Section):
    """Thresholds of the spatial rules (docs/FILTERS.md draws each case)."""

    position_tolerance: float = Field(0.02, ge=0, le=0.5, description="centre offsets within this fraction of the image are ambiguous")
    on_min_overlap: float = Field(0.3, ge=0, le=1, description="'on': horizontal overlap as a fraction of the subject's width")
    on_max_gap: float = Field(0.1, ge=0, description="'on': subject bottom may float this fraction of the object's height above its top")
    on_max_depth: float = Field(0.6, ge=0, description="'on': ... or sink this fraction into it")
    inside_keep: float = Field(0.8, ge=0, le=1, description="'inside': keep when this fraction of the subject lies in the object")
    inside_drop: float = Field(0.2, ge=0, le=1)
    depth_margin: float = Field(0.05, ge=0, description="'in front of' / 'behind': relative depth difference needed")
    next_to_keep: float = Field(0.02, ge=0, description="'next to': box gap / image diagonal below this keeps")
    next_to_drop: float = Field(0.1, ge=0)
    near_keep: float = Field(0.05, ge=0, description="'near' (and 'far from' inverted)")
    near_drop: float = Field(0.25, ge=0)


class OpenAIVerifierConfig(LLMConfig):
    """A VLM behind an OpenAI-compatible endpoint (a local vLLM in production) answering yes/no."""

    kind: Literal["openai"]
    threshold: float = Field(0.5, ge=0, le=1, description="keep when P(yes) >= this")
    logprobs: bool = Field(True, description="P(yes) from the first token's logprobs when the endpoint gives them")
    prompt: str = Field("verify/v1", description="question template under synthvg/prompts/")


class TransformersVerifierConfig(Section):
    """A local transformers image-text-to-text model directory, batched on GPU when present."""

    kind: Literal["transformers"]
    path: str = Field(description="local model directory (config.json, weights, processor files)")
    threshold: float = Field(0.5, ge=0, le=1)
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    prompt: str = "verify/v1"


Verifier = Annotated[OpenAIVerifierConfig | TransformersVerifierConfig, Field(discriminator="kind")]


class RuleFiltersConfig(Section):
    """Spatial rules for spatial relations, VQA verifiers for the other categories."""

    backend: Literal["rules"] = "rules"
    stages: list[Literal["seed", "teacher", "robin"]] = Field(["teacher"], description="whose relations are judged")
    spatial: SpatialRulesConfig = SpatialRulesConfig()
    verifiers: list[Verifier] = Field(default_factory=list, description="VQA verifiers for non-spatial relations")
    vote: Literal["all", "any", "majority", "mean"] = Field(
        "all", description="how several verifiers combine: all must say yes, any, a majority, or mean P(yes) >= threshold"
    )
    synonyms: str | None = Field(None, description="extra predicate synonym YAML (raw -> normalised)")


class NoFiltersConfig(Section):
    backend: Literal["none"]


FiltersConfig = Annotated[
    Annotated[NoFiltersConfig, Tag("none")] | Annotated[RuleFiltersConfig, Tag("rules")],
    _backend_tag("none"),
]


class OptionalStageConfig(Section):
    """Stages whose backends land later: ``none`` skips them with a logged reason."""

    backend: Literal["none"] = "none"


class PrefectLimit(Section):
    """A Prefect global concurrency limit shared by every build that names it.

    Without ``per_second`` at most ``limit`` shards of the listed stages run at once (GPU
    stages). With it, a rate limit: each shard takes one slot per image and slots free at
    ``per_second`` (model APIs; one teacher request per image). ``synthvg setup-prefect``
    creates the limits; builds then fail fast if one is missing.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stages: list[str] = Field(min_length=1)
    limit: int = Field(ge=1, description="slots: shards at once, or the rate limit's burst in images")
    per_second: float | None = Field(None, gt=0, description="set: a rate limit, slots decaying at this rate")


class ExecutorConfig(Section):
    kind: Literal["threads", "dask", "ray"] = Field(
        "threads", description="threads in the build's process, or a Dask or Ray cluster"
    )
    address: str | None = Field(
        None, description="Dask scheduler or Ray cluster address; none: start a local cluster per build"
    )
    workers: int = Field(2, ge=1, le=256, description="shards processed at once (local cluster size)")
    retries: int = Field(1, ge=0, description="Prefect task retries for a failing shard")
    retry_delay_seconds: float = Field(2.0, ge=0, description="first retry delay; doubles each retry")
    gpus: dict[str, float] = Field(
        default_factory=dict, description="GPUs each shard task of a stage requests on Ray or Dask"
    )
    limits: list[PrefectLimit] = Field(default_factory=list)

    @model_validator(mode="after")
    def _address_needs_cluster(self) -> ExecutorConfig:
        if self.address and self.kind == "threads":
            raise ValueError("address needs kind dask or ray (threads run in the build's process)")
        return self


class BuildConfig(Section):
    """Everything one dataset build needs."""

    name: str = Field("synthvg", pattern=r"^[A-Za-z0-9_.-]+$")
    out: str = Field(description="dataset root: a folder or an fsspec URL")
    shard_size: int = Field(16, ge=1, description="images per shard (one Prefect task each)")
    limit: int | None = Field(None, ge=1, description="build only the first N images")
    seeds: SeedsConfig
    regions: RegionsConfig = RegionsConfig()
    depth: DepthConfig = DepthConfig()
    teacher: TeacherConfig = RuleTeacherConfig()
    filters: FiltersConfig = NoFiltersConfig(backend="none")
    robin: OptionalStageConfig = OptionalStageConfig()
    edit: OptionalStageConfig = OptionalStageConfig()
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
        stages = set(type(self).model_fields) - {"name", "out", "shard_size", "limit", "executor"}
        named = set(self.executor.gpus) | {s for lim in self.executor.limits for s in lim.stages}
        if unknown := sorted(named - stages):
            raise ValueError(f"executor names unknown stage(s) {unknown}; stages are {sorted(stages)}")
        return self

    def stage_config(self, stage: str) -> BaseModel:
        return getattr(self, stage)


def _is_url(path: str) -> bool:
    return "://" in path


def _resolve(path: str, base: Path) -> str:
    if _is_url(path) or os.path.isabs(path):
        return path
    return str((base / os.path.expanduser(path)).resolve())


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike, **overrides) -> BuildConfig:
    """Load and validate a YAML config; ``overrides`` (out, limit, ...) win over the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    base = path.resolve().parent
    try:
        cfg = BuildConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    return resolve_paths(cfg, base)


def with_executor(cfg: BuildConfig, kind: str | None = None, address: str | None = None) -> BuildConfig:
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
    """Make every relative path in ``cfg`` absolute against ``base``."""
    sources = [
        s.model_copy(update={"annotations": _resolve(s.annotations, base), "images": _resolve(s.images, base)})
        for s in cfg.seeds.sources
    ]
    return cfg.model_copy(
        update={"out": _resolve(cfg.out, base), "seeds": cfg.seeds.model_copy(update={"sources": sources})}
    )
