"""The SG-EDIT stage's settings (``backend``: none or openai)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag

from synthvg.config.base import Section, VisionLLMConfig, backend_tag


class OpenAIEditConfig(VisionLLMConfig):
    """SG-EDIT: a GPT-4o-class editor refines a stage's scene graphs (see docs/EDIT.md)."""

    backend: Literal["openai"]
    source: Literal["robin", "teacher", "seed", "union"] = Field(
        "robin", description="whose relations are edited; union: seed + teacher + robin"
    )
    prompt: str = Field("edit/v1", description="prompt template under synthvg/prompts/")
    caption: bool = Field(
        True, description="ask for a dense caption first (one more request per image)"
    )
    caption_prompt: str = Field(
        "edit/caption_v1", description="prompt template of the caption request"
    )
    temperature: float | None = 0.2
    max_tokens: int | None = Field(4096, ge=1)
    max_regions: int = Field(
        60, ge=1, description="largest regions shown per image; the graph covers these"
    )


class NoEditConfig(Section):
    backend: Literal["none"] = "none"


EditConfig = Annotated[
    Annotated[NoEditConfig, Tag("none")] | Annotated[OpenAIEditConfig, Tag("openai")],
    backend_tag("none"),
]
