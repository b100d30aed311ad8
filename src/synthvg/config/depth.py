"""The depth stage's settings (``backend``: none or depth-anything)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag

from synthvg.config.base import Dtype, Section, backend_tag
from synthvg.config.fields import InputPath, SpeedOnly


class NoDepthConfig(Section):
    backend: Literal["none"] = "none"


class DepthAnythingConfig(Section):
    """Depth-Anything v1 or v2 (relative or metric) from a local transformers model directory."""

    backend: Literal["depth-anything"]
    path: InputPath = Field(
        description="local model directory (config.json, weights, preprocessor_config.json)"
    )
    batch_size: Annotated[int, SpeedOnly()] = Field(8, ge=1)
    device: Annotated[str, SpeedOnly()] = Field(
        "auto", description="auto: cuda when available, else cpu"
    )
    dtype: Dtype = Field("auto", description="auto: bfloat16 (or float16) on GPU, float32 on CPU")
    save_maps: bool = Field(
        False, description="write each depth map as a 16-bit PNG beside the tables"
    )
    max_side: int = Field(
        2048, ge=64, description="depth is upsampled to the image size, capped at this side"
    )


DepthConfig = Annotated[
    Annotated[NoDepthConfig, Tag("none")] | Annotated[DepthAnythingConfig, Tag("depth-anything")],
    backend_tag("none"),
]
