"""What every config section shares: unknown keys are errors, ``backend`` tags, and the LLM
settings of the stages that send images to a model."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, ValidationError

from synthvg.config.fields import SpeedOnly
from synthvg.llm.config import LLMConfig


class ConfigError(ValueError):
    """A configuration problem, reported before any work starts."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def backend_tag(default: str) -> Discriminator:
    """Discriminate on ``backend``, defaulting when the key is absent (so typos elsewhere are
    reported as unknown keys of the default backend, not as a missing tag)."""

    def tag(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("backend", default)
        return getattr(value, "backend", default)

    return Discriminator(tag)


Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class VisionLLMConfig(LLMConfig):
    """What every image-reading LLM stage shares: image size, detail, Batch API mode."""

    image_max_side: int = Field(1024, ge=64, description="images sent are downscaled to this")
    detail: Literal["low", "high", "auto"] = "high"
    batch: Annotated[bool, SpeedOnly("the same requests, sent as a batch")] = Field(
        False, description="send through the OpenAI Batch API (half price, hours)"
    )
    batch_poll_seconds: Annotated[float, SpeedOnly()] = Field(60.0, gt=0)
    batch_wait_seconds: Annotated[float | None, SpeedOnly()] = Field(
        None, gt=0, description="stop waiting after this long; the next build resumes the batch"
    )


def format_validation_error(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)
