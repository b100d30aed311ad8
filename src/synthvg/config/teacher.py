"""The teacher stage's settings (``backend``: rules, openai or none)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag

from synthvg.config.base import Section, VisionLLMConfig, backend_tag


class RuleTeacherConfig(Section):
    """The weight-free teacher: spatial relations from geometry, labelled generator='rules'."""

    backend: Literal["rules"] = "rules"
    max_subjects: int = Field(10, ge=1, description="largest regions taken as subjects")
    min_subjects: int = Field(5, ge=1, description="the paper asks for >= 5 subjects per image")
    objects_per_subject: int = Field(4, ge=1, description="nearest regions related to each subject")


class OpenAITeacherConfig(VisionLLMConfig):
    """A GPT-4V-class teacher behind any OpenAI-compatible endpoint (see docs/TEACHER.md)."""

    backend: Literal["openai"]
    prompt: str = Field("teacher/v1", description="prompt template under synthvg/prompts/")
    min_subjects: int = Field(5, ge=1, description="K: subjects asked for per image")
    max_subjects: int = Field(20, ge=1)
    max_regions: int = Field(60, ge=2, description="largest regions marked and listed per image")


class NoTeacherConfig(Section):
    backend: Literal["none"]


TeacherConfig = Annotated[
    Annotated[RuleTeacherConfig, Tag("rules")]
    | Annotated[OpenAITeacherConfig, Tag("openai")]
    | Annotated[NoTeacherConfig, Tag("none")],
    backend_tag("rules"),
]
