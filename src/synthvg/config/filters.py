"""The filters stage's settings: which stages' relations are judged, the spatial rules'
thresholds and the VQA verifiers (tagged by ``kind``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag

from synthvg.config.base import Section, backend_tag
from synthvg.config.fields import InputPath, SpeedOnly
from synthvg.config.llava_sg import LlavaSGVerifierConfig
from synthvg.llm.config import LLMConfig


class SpatialRulesConfig(Section):
    """Thresholds of the spatial rules (docs/FILTERS.md draws each case)."""

    position_tolerance: float = Field(
        0.02,
        ge=0,
        le=0.5,
        description="centre offsets within this fraction of the image are ambiguous",
    )
    on_min_overlap: float = Field(
        0.3, ge=0, le=1, description="'on': horizontal overlap as a fraction of the subject's width"
    )
    on_max_gap: float = Field(
        0.1,
        ge=0,
        description="'on': subject bottom may float this fraction of the object's height above its top",
    )
    on_max_depth: float = Field(0.6, ge=0, description="'on': ... or sink this fraction into it")
    inside_keep: float = Field(
        0.8,
        ge=0,
        le=1,
        description="'inside': keep when this fraction of the subject lies in the object",
    )
    inside_drop: float = Field(0.2, ge=0, le=1)
    depth_margin: float = Field(
        0.05, ge=0, description="'in front of' / 'behind': relative depth difference needed"
    )
    next_to_keep: float = Field(
        0.02, ge=0, description="'next to': box gap / image diagonal below this keeps"
    )
    next_to_drop: float = Field(0.1, ge=0)
    near_keep: float = Field(0.05, ge=0, description="'near' (and 'far from' inverted)")
    near_drop: float = Field(0.25, ge=0)


class OpenAIVerifierConfig(LLMConfig):
    """A VLM behind an OpenAI-compatible endpoint (a local vLLM in production) answering yes/no."""

    kind: Literal["openai"]
    threshold: float = Field(0.5, ge=0, le=1, description="keep when P(yes) >= this")
    logprobs: bool = Field(
        True, description="P(yes) from the first token's logprobs when the endpoint gives them"
    )
    prompt: str = Field("verify/v1", description="question template under synthvg/prompts/")
    # a verifier asks for one token, without a schema: these two settings are not used
    max_tokens: Annotated[int | None, SpeedOnly("unused: one token is asked for")] = Field(
        None, ge=1
    )
    structured_output: Annotated[Literal["json_schema", "prompt"], SpeedOnly("unused")] = (
        "json_schema"
    )


class TransformersVerifierConfig(Section):
    """A local transformers image-text-to-text model directory, batched on GPU when present."""

    kind: Literal["transformers"]
    path: InputPath = Field(
        description="local model directory (config.json, weights, processor files)"
    )
    threshold: float = Field(0.5, ge=0, le=1)
    batch_size: Annotated[int, SpeedOnly()] = Field(8, ge=1)
    device: Annotated[str, SpeedOnly()] = Field(
        "auto", description="auto: cuda when available, else cpu"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    prompt: str = "verify/v1"


Verifier = Annotated[
    OpenAIVerifierConfig | TransformersVerifierConfig | LlavaSGVerifierConfig,
    Field(discriminator="kind"),
]


class RuleFiltersConfig(Section):
    """Spatial rules for spatial relations, VQA verifiers for the other categories."""

    backend: Literal["rules"] = "rules"
    stages: list[Literal["seed", "teacher", "robin"]] = Field(
        ["teacher"], description="whose relations are judged"
    )
    spatial: SpatialRulesConfig = SpatialRulesConfig()
    verifiers: list[Verifier] = Field(
        default_factory=list, description="VQA verifiers for non-spatial relations"
    )
    vote: Literal["all", "any", "majority", "mean"] = Field(
        "all",
        description="how several verifiers combine: all must say yes, any, a majority, or mean P(yes) >= threshold",
    )
    synonyms: InputPath | None = Field(
        None, description="extra predicate synonym YAML (raw -> normalised)"
    )


class NoFiltersConfig(Section):
    backend: Literal["none"]


FiltersConfig = Annotated[
    Annotated[NoFiltersConfig, Tag("none")] | Annotated[RuleFiltersConfig, Tag("rules")],
    backend_tag("none"),
]
