"""Config sections of LLaVA-SG's uses in a build (docs/LLAVA_SG.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from synthvg.config.base import Section
from synthvg.config.fields import InputPath, SpeedOnly


class LlavaSGVerifierConfig(Section):
    """A trained LLaVA-SG directory as a local VQA verifier of the filters stage: the subject
    and object masks are its entities, P(yes) is read from the first answer token."""

    kind: Literal["llava_sg"]
    path: InputPath = Field(description="local LLaVA-SG directory (training's export)")
    threshold: float = Field(0.5, ge=0, le=1)
    batch_size: Annotated[int, SpeedOnly()] = Field(8, ge=1)
    device: Annotated[str, SpeedOnly()] = Field(
        "auto", description="auto: cuda when available, else cpu"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    prompt: str = Field("verify/v1", description="the question's prompt (its user text is asked)")
