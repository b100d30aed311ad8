"""The Robin stage's settings (``robin: {checkpoint: DIR}`` alone means the Robin backend)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from synthvg.config.base import Dtype, Section
from synthvg.config.fields import InputPath, SpeedOnly


class NoRobinConfig(Section):
    backend: Literal["none"] = "none"


class RobinModelConfig(Section):
    """Robin from a local checkpoint directory in the released layout (see docs/ROBIN.md).

    Sampling defaults: the release samples at temperature 1.0 (its demo 0.2, its evaluations
    0.5 with top_p 0.95) with up to 1024 new tokens; synthvg defaults to the demo's 0.2.
    """

    backend: Literal["robin"] = "robin"
    checkpoint: InputPath = Field(
        description="local directory: config.json, safetensors (+ index), tokenizer files"
    )
    mode: Literal["holistic", "per_region"] = Field(
        "holistic",
        description="one 'extremely detailed scene graph' call per image, or two turns per region",
    )
    batch_size: Annotated[int, SpeedOnly()] = Field(
        8, ge=1, description="prompts generated together (halved on CUDA out-of-memory)"
    )
    images_per_batch: Annotated[int, SpeedOnly()] = Field(
        8, ge=1, description="images encoded and held at once"
    )
    device: Annotated[str, SpeedOnly()] = Field(
        "auto", description="auto: cuda when available, else cpu"
    )
    dtype: Dtype = Field(
        "auto", description="the LM's dtype; auto: bfloat16 on GPU, float32 on CPU"
    )
    vision_dtype: Dtype = Field(
        "auto",
        description="vision tower, projector, mask extractor; auto: float16 on GPU (the release's), float32 on CPU",
    )
    temperature: float = Field(0.2, ge=0, description="0: greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = Field(0, description="sampling seed, set before each batch")
    max_new_tokens: int = Field(
        1024, ge=1, description="per answer (the scene graph, or a region's relationships)"
    )
    description_max_tokens: int = Field(256, ge=1, description="per-region mode: per description")
    max_regions: int = Field(
        100, ge=1, description="largest regions per image; the rest are reported as capped"
    )
    max_prompt_tokens: int | None = Field(
        None, ge=64, description="prompt limit; None: the checkpoint's tokenizer_model_max_length"
    )
    attn_implementation: Annotated[Literal["sdpa", "eager", "flash_attention_2"], SpeedOnly()] = (
        "sdpa"
    )
    allow_unexpected_keys: bool = Field(
        False, description="load despite checkpoint keys the model has no place for"
    )


def _robin_tag(value: Any) -> str:
    """``robin: {checkpoint: DIR}`` alone means the Robin backend."""
    if isinstance(value, dict):
        return value.get("backend", "robin" if "checkpoint" in value else "none")
    return getattr(value, "backend", "none")


RobinStageConfig = Annotated[
    Annotated[NoRobinConfig, Tag("none")] | Annotated[RobinModelConfig, Tag("robin")],
    Discriminator(_robin_tag),
]
