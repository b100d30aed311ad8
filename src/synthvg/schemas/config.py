"""Every build config name in one place, for existing imports.

The sections live beside what they configure: each stage's in ``synthvg/config/<stage>.py``,
the seed sources' in :mod:`synthvg.readers.config`, the executor's in
:mod:`synthvg.config.executor`; :mod:`synthvg.config.build` assembles them into
:class:`BuildConfig`. Field roles (paths, speed-only settings) are markers on the fields
(:mod:`synthvg.config.fields`).
"""

from __future__ import annotations

from synthvg.config.base import (
    ConfigError,
    Dtype,
    Section,
    VisionLLMConfig,
    backend_tag,
    format_validation_error,
)
from synthvg.config.build import (
    BUILD_SETTINGS,
    BuildConfig,
    input_paths,
    load_config,
    resolve_paths,
    with_executor,
)
from synthvg.config.depth import DepthAnythingConfig, DepthConfig, NoDepthConfig
from synthvg.config.edit import EditConfig, NoEditConfig, OpenAIEditConfig
from synthvg.config.executor import ExecutorConfig, PrefectLimit
from synthvg.config.fields import InputPath, OutputPath, SpeedOnly, output_settings
from synthvg.config.filters import (
    FiltersConfig,
    NoFiltersConfig,
    OpenAIVerifierConfig,
    RuleFiltersConfig,
    SpatialRulesConfig,
    TransformersVerifierConfig,
    Verifier,
)
from synthvg.config.regions import (
    PART_PRESET,
    PROPOSER_SECTIONS,
    WHOLE_PRESET,
    AMGParams,
    FelzenszwalbConfig,
    MergeParams,
    PrecomputedConfig,
    ProposerName,
    RegionsConfig,
    SamCommonConfig,
    SamEncoderSpec,
    SamMode,
    SegmentAnythingConfig,
    TransformersSamConfig,
    UncoveredConfig,
)
from synthvg.config.robin import NoRobinConfig, RobinModelConfig, RobinStageConfig
from synthvg.config.seeds import MAX_IMAGE_PIXELS, MergeConfig, SeedsConfig, SelectConfig
from synthvg.config.teacher import (
    NoTeacherConfig,
    OpenAITeacherConfig,
    RuleTeacherConfig,
    TeacherConfig,
)
from synthvg.readers.config import (
    DATASETS,
    SOURCES,
    Ade20kSource,
    CocoSource,
    GqaSource,
    LvisSource,
    PsgSource,
    RefcocoSource,
    SeedSource,
    SourceSection,
    VgSource,
)

__all__ = [
    "BUILD_SETTINGS",
    "DATASETS",
    "MAX_IMAGE_PIXELS",
    "PART_PRESET",
    "PROPOSER_SECTIONS",
    "SOURCES",
    "WHOLE_PRESET",
    "AMGParams",
    "Ade20kSource",
    "BuildConfig",
    "CocoSource",
    "ConfigError",
    "DepthAnythingConfig",
    "DepthConfig",
    "Dtype",
    "EditConfig",
    "ExecutorConfig",
    "FelzenszwalbConfig",
    "FiltersConfig",
    "GqaSource",
    "InputPath",
    "LvisSource",
    "MergeConfig",
    "MergeParams",
    "NoDepthConfig",
    "NoEditConfig",
    "NoFiltersConfig",
    "NoRobinConfig",
    "NoTeacherConfig",
    "OpenAIEditConfig",
    "OpenAITeacherConfig",
    "OpenAIVerifierConfig",
    "OutputPath",
    "PrecomputedConfig",
    "PrefectLimit",
    "ProposerName",
    "PsgSource",
    "RefcocoSource",
    "RegionsConfig",
    "RobinModelConfig",
    "RobinStageConfig",
    "RuleFiltersConfig",
    "RuleTeacherConfig",
    "SamCommonConfig",
    "SamEncoderSpec",
    "SamMode",
    "Section",
    "SeedSource",
    "SeedsConfig",
    "SegmentAnythingConfig",
    "SelectConfig",
    "SourceSection",
    "SpatialRulesConfig",
    "SpeedOnly",
    "TeacherConfig",
    "TransformersSamConfig",
    "TransformersVerifierConfig",
    "UncoveredConfig",
    "Verifier",
    "VgSource",
    "VisionLLMConfig",
    "backend_tag",
    "format_validation_error",
    "input_paths",
    "load_config",
    "output_settings",
    "resolve_paths",
    "with_executor",
]
