"""Build configuration: one validated pydantic model, loaded from YAML.

Unknown keys are errors (a typo must not silently fall back to a default), and every error
names the key path. Relative paths in a YAML file resolve against the file's own folder, so a
config means the same thing from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
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


def _backend_tag(default: str):
    """Discriminate on ``backend``, defaulting when the key is absent (so typos elsewhere are
    reported as unknown keys of the default backend, not as a missing tag)."""

    def tag(value) -> str:
        if isinstance(value, dict):
            return value.get("backend", default)
        return getattr(value, "backend", default)

    return Discriminator(tag)


class SourceSection(Section):
    """What every seed source has besides its files."""

    allow_empty: bool = Field(
        False,
        description="the source may yield no images; otherwise `synthvg build` stops (exit 2) when it does",
    )


class CocoSource(SourceSection):
    """COCO ``instances_*.json`` (2014 or 2017 names)."""

    kind: Literal["coco"] = "coco"
    annotations: str = Field(description="path to instances_*.json")
    images: str | None = Field(
        None,
        description="folder holding the images named by file_name (none: sizes from the annotations)",
    )
    split: str | None = Field(None, description="override the split (default: from coco_url)")

    PATHS: ClassVar[tuple[str, ...]] = ("annotations", "images")
    dataset: ClassVar[str] = "coco"


class LvisSource(SourceSection):
    """LVIS v1 or v0.5 (``lvis_v1_train.json``, ...)."""

    kind: Literal["lvis"]
    annotations: str = Field(description="lvis_v1_{train,val}.json or lvis_v0.5_*.json")
    images: str | None = Field(
        None, description="COCO root holding train2017/ and val2017/ (the file comes from coco_url)"
    )

    PATHS: ClassVar[tuple[str, ...]] = ("annotations", "images")
    dataset: ClassVar[str] = "lvis"


class RefcocoSource(SourceSection):
    """RefCOCO, RefCOCO+ or RefCOCOg: a refs pickle and its ``instances.json``."""

    kind: Literal["refcoco"]
    refs: str = Field(description="refs(unc).p, refs(umd).p or refs(google).p")
    instances: str | None = Field(
        None, description="the matching instances.json (default: the one beside refs)"
    )
    name: Literal["refcoco", "refcoco+", "refcocog"] | None = Field(
        None, description="which dataset (default: the refs file's folder name, as released)"
    )
    images: str | None = Field(
        None, description="folder of the COCO train2014 images (COCO_train2014_*.jpg)"
    )

    PATHS: ClassVar[tuple[str, ...]] = ("refs", "instances", "images")

    @property
    def dataset(self) -> str:
        folder = Path(self.refs).parent.name.lower()
        return self.name or (folder if folder in ("refcoco", "refcoco+", "refcocog") else "refcoco")


class VgSource(SourceSection):
    """Visual Genome v1.2 / v1.4: a folder of the release's files, or the files one by one."""

    kind: Literal["vg"]
    root: str | None = Field(
        None, description="folder holding image_data.json, objects.json, ... (official names)"
    )
    image_data: str | None = None
    objects: str | None = None
    attributes: str | None = None
    relationships: str | None = None
    region_descriptions: str | None = None
    scene_graphs: str | None = None
    images: str | None = Field(None, description="folder holding VG_100K/ and VG_100K_2/")
    version: str = Field(
        "1.4", description="release version, written to relations.model (visual-genome-1.4)"
    )

    PATHS: ClassVar[tuple[str, ...]] = (
        "root",
        "image_data",
        "objects",
        "attributes",
        "relationships",
        "region_descriptions",
        "scene_graphs",
        "images",
    )
    FILES: ClassVar[tuple[str, ...]] = PATHS[1:-1]
    dataset: ClassVar[str] = "vg"

    @model_validator(mode="after")
    def _some_file(self) -> VgSource:
        if self.root is None and all(getattr(self, f) is None for f in self.FILES):
            raise ValueError("give `root` (the folder of the release files) or at least one file")
        return self


class GqaSource(SourceSection):
    """GQA scene graphs (``train_sceneGraphs.json`` or ``val_sceneGraphs.json``)."""

    kind: Literal["gqa"]
    annotations: str = Field(description="a *_sceneGraphs.json file")
    images: str | None = Field(None, description="folder of the GQA images (<id>.jpg)")
    image_data: str | None = Field(
        None, description="VG image_data.json, to map GQA ids to COCO ids without a vg source"
    )
    version: str = Field("1.1", description="release version, written to relations.model (gqa-1.1)")

    PATHS: ClassVar[tuple[str, ...]] = ("annotations", "images", "image_data")
    dataset: ClassVar[str] = "gqa"


class PsgSource(SourceSection):
    """PSG (OpenPSG ``psg.json``) with the COCO panoptic PNGs."""

    kind: Literal["psg"]
    annotations: str = Field(description="psg.json")
    panoptic: str | None = Field(
        None, description="folder pan_seg_file_name is relative to (default: images)"
    )
    images: str | None = Field(
        None, description="COCO root: file_name (train2017/...) is relative to it"
    )

    PATHS: ClassVar[tuple[str, ...]] = ("annotations", "panoptic", "images")
    dataset: ClassVar[str] = "psg"

    @model_validator(mode="after")
    def _has_masks(self) -> PsgSource:
        if self.panoptic is None and self.images is None:
            raise ValueError(
                "PSG masks are in the COCO panoptic PNGs: give `panoptic` (or `images`)"
            )
        return self


class Ade20kSource(SourceSection):
    """ADE20K 2021: per-image ``<name>.json`` and ``<name>_seg.png`` (stage-2 builds)."""

    kind: Literal["ade20k"]
    root: str = Field(description="ADE20K_2021_17_01/images/ADE or any folder below it")
    images: str | None = Field(
        None, description="folder mirroring root that holds the .jpg files (usually root)"
    )

    PATHS: ClassVar[tuple[str, ...]] = ("root", "images")
    dataset: ClassVar[str] = "ade20k"


def _kind_tag(value) -> str:
    """Discriminate sources on ``kind``, defaulting to coco (the first configs had no kind)."""
    return value.get("kind", "coco") if isinstance(value, dict) else getattr(value, "kind", "coco")


SeedSource = Annotated[
    Annotated[CocoSource, Tag("coco")]
    | Annotated[LvisSource, Tag("lvis")]
    | Annotated[RefcocoSource, Tag("refcoco")]
    | Annotated[VgSource, Tag("vg")]
    | Annotated[GqaSource, Tag("gqa")]
    | Annotated[PsgSource, Tag("psg")]
    | Annotated[Ade20kSource, Tag("ade20k")],
    Discriminator(_kind_tag),
]
DATASETS = ("coco", "lvis", "refcoco", "refcoco+", "refcocog", "psg", "vg", "gqa", "ade20k")


class MergeConfig(Section):
    """When annotations from different sources are one region (docs/SEEDS.md)."""

    iou: float = Field(
        0.7, gt=0, le=1, description="box IoU at or above which regions of two datasets may merge"
    )
    names: Literal["compatible", "any"] = Field(
        "compatible", description="compatible: names must match too (readers.names)"
    )
    phrase_iou: float = Field(
        0.5,
        gt=0,
        le=1,
        description="box IoU at or above which a description-only region joins a region",
    )
    aliases: dict[str, list[str]] = Field(
        default_factory=dict, description="extra name groups: {person: [pedestrian]}"
    )


class SelectConfig(Section):
    """Which images to build (then ``limit`` keeps the first N, in image-id order)."""

    require: list[Literal[DATASETS]] = Field(
        default_factory=list, description="only images every one of these datasets annotates"
    )
    ids: list[str] = Field(
        default_factory=list, description="only these image ids (coco:397133, vg:1, ...)"
    )
    ids_file: str | None = Field(None, description="a text file of image ids, one per line")

    @field_validator("ids")
    @classmethod
    def _ids_have_dataset(cls, v: list[str]) -> list[str]:
        bad = [i for i in v if ":" not in i]
        if bad:
            raise ValueError(f"image ids are '<dataset>:<native id>', got {bad[:3]}")
        return v


#: Pillow's own decompression-bomb refusal (2 x ``PIL.Image.MAX_IMAGE_PIXELS``): the highest
#: pixel limit that can be configured, and the default.
MAX_IMAGE_PIXELS = 178_956_970


class SeedsConfig(Section):
    sources: list[SeedSource] = Field(min_length=1)
    min_region_area: float = Field(
        1.0, ge=0, description="regions below this many pixels are dropped (errors table)"
    )
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS,
        ge=1,
        le=MAX_IMAGE_PIXELS,
        description="an image file with more pixels is an image_too_large error row, never decoded",
    )
    merge: MergeConfig = MergeConfig()
    select: SelectConfig = SelectConfig()

    @model_validator(mode="after")
    def _required_sources_exist(self) -> SeedsConfig:
        have = {s.dataset for s in self.sources}
        missing = [d for d in self.select.require if d not in have]
        if missing:
            raise ValueError(
                f"select.require names {missing}, but no source of that dataset is configured"
            )
        return self


class FelzenszwalbConfig(Section):
    scale: float = Field(300.0, gt=0)
    sigma: float = Field(0.8, ge=0)
    min_size: int = Field(50, ge=1)
    max_side: int = Field(
        640, ge=32, description="images are downscaled to this longest side first"
    )
    max_proposals: int = Field(400, ge=1, description="keep the largest N segments per image")


Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class AMGParams(Section):
    """SamAutomaticMaskGenerator's parameters (the package's defaults unless a preset sets them)."""

    points_per_side: int = Field(32, ge=1, description="point grid is N x N")
    points_per_batch: int = Field(64, ge=1, description="points decoded at once (speed only)")
    pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    stability_score_offset: float = Field(1.0, ge=0)
    box_nms_thresh: float = Field(0.7, ge=0, le=1)
    crop_n_layers: int = Field(0, ge=0, description="segment_anything only")
    crop_nms_thresh: float = Field(0.7, ge=0, le=1)
    crop_overlap_ratio: float = Field(512 / 1500, ge=0, lt=1)
    crop_n_points_downscale_factor: int = Field(1, ge=1)
    min_mask_region_area: int = Field(
        0, ge=0, description="fill holes / drop islands below this (px)"
    )
    multimask_output: int | None = Field(
        None, ge=0, le=2, description="keep only this of SAM's 3 outputs per point (None: all)"
    )


#: The official demo's two SAM modes (docs/REGIONS.md): whole objects and their parts.
WHOLE_PRESET = {
    "points_per_side": 32,
    "pred_iou_thresh": 0.8,
    "stability_score_thresh": 0.8,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 300,
    "multimask_output": 2,
}
PART_PRESET = {
    **WHOLE_PRESET,
    "pred_iou_thresh": 0.9,
    "stability_score_thresh": 0.9,
    "multimask_output": 1,
}


def _over(preset: dict):
    """Keys given in YAML override the preset's; the rest keep the preset's values."""

    def merge(value):
        return {**preset, **value} if isinstance(value, dict) else value

    return BeforeValidator(merge)


class MergeParams(Section):
    """The demo's whole + part merge (docs/REGIONS.md spells out each step)."""

    union_inside: float = Field(
        0.9, ge=0, le=1, description="a member lies this much inside a union"
    )
    union_cover: float = Field(0.9, ge=0, le=1, description="members cover this much of a union")
    part_overlap: float = Field(
        0.6, ge=0, le=1, description="parts overlapping kept regions less are added"
    )
    part_max_iou: float = Field(
        0.7, ge=0, le=1, description="parts this similar to a kept region are skipped"
    )
    large_whole_quantile: float = Field(
        0.5, ge=0, le=1, description="'large': above this quantile of whole areas"
    )
    large_part_quantile: float = Field(0.75, ge=0, le=1, description="... or of part areas")


SamMode = Literal["default", "whole", "part", "whole+part"]


class SamCommonConfig(Section):
    """What both SAM backends share: which generators run, their parameters, the merge, the device."""

    mode: SamMode = Field(
        "whole+part", description="default: the package's parameters; whole+part: the demo's merge"
    )
    default: AMGParams = AMGParams()
    whole: Annotated[AMGParams, _over(WHOLE_PRESET)] = AMGParams(**WHOLE_PRESET)
    part: Annotated[AMGParams, _over(PART_PRESET)] = AMGParams(**PART_PRESET)
    merge: MergeParams = MergeParams()
    max_side: int = Field(
        2048, ge=64, description="larger images are downscaled for the model; masks map back"
    )
    max_proposals: int = Field(500, ge=1, description="keep the largest N per image")
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    dtype: Dtype = Field("auto", description="auto: bfloat16 (or float16) on GPU, float32 on CPU")

    def generators(self) -> dict[str, AMGParams]:
        """The parameter sets this mode runs, by name."""
        names = ("whole", "part") if self.mode == "whole+part" else (self.mode,)
        return {n: getattr(self, n) for n in names}


class SamEncoderSpec(Section):
    """A SAM image encoder size not in the package's registry (model_type: custom)."""

    embed_dim: int = Field(ge=1)
    depth: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    global_attn_indexes: list[int]
    img_size: int = Field(1024, ge=64, multiple_of=16, description="input side (SAM: 1024)")


class SegmentAnythingConfig(SamCommonConfig):
    """The ``segment-anything`` package's SamAutomaticMaskGenerator, one image at a time."""

    checkpoint: str = Field(description="local .pth checkpoint (sam_vit_h_4b8939.pth, ...)")
    model_type: Literal["vit_h", "vit_l", "vit_b", "custom"] = "vit_h"
    encoder: SamEncoderSpec | None = Field(None, description="required for model_type: custom")

    @model_validator(mode="after")
    def _custom_needs_encoder(self):
        if (self.model_type == "custom") != (self.encoder is not None):
            raise ValueError("encoder: give it exactly when model_type is 'custom'")
        return self


class TransformersSamConfig(SamCommonConfig):
    """SAM or SAM 2 from a local transformers model directory: batched encoder and point grid."""

    path: str = Field(
        description="local model directory (config.json, weights, preprocessor_config.json)"
    )
    batch_size: int = Field(4, ge=1, description="images encoded and decoded together")

    @model_validator(mode="after")
    def _no_crops(self):
        for name, params in self.generators().items():
            if params.crop_n_layers:
                raise ValueError(
                    f"{name}.crop_n_layers: crops are run by the segment_anything proposer only"
                )
        return self


class PrecomputedConfig(Section):
    """Proposals made elsewhere (SAM AMG, Semantic-SAM, ...): one JSON file of COCO RLEs per image."""

    path: str = Field(description="folder of per-image files")
    pattern: str = Field(
        "{stem}.json",
        description="file name; placeholders {stem}, {file_name}, {image_id}, {native_id}",
    )
    name: str = Field(
        "precomputed",
        pattern=r"^[A-Za-z0-9_.+-]+$",
        description="labels the proposals: precomputed/<name>",
    )
    max_proposals: int = Field(1000, ge=1)


class UncoveredConfig(Section):
    """Proposals no annotation covers, added as regions (source dataset 'proposal')."""

    mode: Literal["off", "unannotated", "all"] = Field(
        "off", description="unannotated: only images with no annotated region; all: every image"
    )
    iou_threshold: float = Field(
        0.5, ge=0, le=1, description="a proposal is covered when an annotation's IoU > this"
    )
    nms_threshold: float = Field(
        0.7, ge=0, le=1, description="box IoU above which the lower-scored one is dropped"
    )
    min_area: float = Field(0.0, ge=0, description="pixels")
    max_regions: int = Field(100, ge=1, description="per image, best first")


ProposerName = Literal[
    "felzenszwalb", "segment_anything", "transformers_sam", "precomputed", "none"
]


class RegionsConfig(Section):
    """``proposer`` names the proposer; its parameters are the section of the same name."""

    proposer: ProposerName = Field(
        "felzenszwalb",
        description="mask proposer; felzenszwalb is the weight-free CPU default (not SAM)",
    )
    felzenszwalb: FelzenszwalbConfig = FelzenszwalbConfig()
    segment_anything: SegmentAnythingConfig | None = None
    transformers_sam: TransformersSamConfig | None = None
    precomputed: PrecomputedConfig | None = None
    iou_threshold: float = Field(0.5, ge=0, le=1, description="keep a region iff best IoU > this")
    feed: Literal["kept", "all"] = Field(
        "kept",
        description="which regions later stages see: only confirmed ones (the paper) or all",
    )
    uncovered: UncoveredConfig = UncoveredConfig()

    @model_validator(mode="after")
    def _chosen_section_given(self):
        if self.proposer != "none" and getattr(self, self.proposer) is None:
            raise ValueError(
                f"proposer {self.proposer!r} needs its section: {self.proposer}: {{...}}"
            )
        return self

    def proposer_config(self) -> BaseModel | None:
        """The chosen proposer's section (None for ``none``)."""
        return None if self.proposer == "none" else getattr(self, self.proposer)


class NoDepthConfig(Section):
    backend: Literal["none"] = "none"


class DepthAnythingConfig(Section):
    """Depth-Anything v1 or v2 (relative or metric) from a local transformers model directory."""

    backend: Literal["depth-anything"]
    path: str = Field(
        description="local model directory (config.json, weights, preprocessor_config.json)"
    )
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", description="auto: cuda when available, else cpu")
    dtype: Dtype = Field("auto", description="auto: bfloat16 (or float16) on GPU, float32 on CPU")
    save_maps: bool = Field(
        False, description="write each depth map as a 16-bit PNG beside the tables"
    )
    max_side: int = Field(
        2048, ge=64, description="depth is upsampled to the image size, capped at this side"
    )


DepthConfig = Annotated[
    Annotated[NoDepthConfig, Tag("none")] | Annotated[DepthAnythingConfig, Tag("depth-anything")],
    _backend_tag("none"),
]


class RuleTeacherConfig(Section):
    """The weight-free teacher: spatial relations from geometry, labelled generator='rules'."""

    backend: Literal["rules"] = "rules"
    max_subjects: int = Field(10, ge=1, description="largest regions taken as subjects")
    min_subjects: int = Field(5, ge=1, description="the paper asks for >= 5 subjects per image")
    objects_per_subject: int = Field(4, ge=1, description="nearest regions related to each subject")


class VisionLLMConfig(LLMConfig):
    """What every image-reading LLM stage shares: image size, detail, Batch API mode."""

    image_max_side: int = Field(1024, ge=64, description="images sent are downscaled to this")
    detail: Literal["low", "high", "auto"] = "high"
    batch: bool = Field(False, description="send through the OpenAI Batch API (half price, hours)")
    batch_poll_seconds: float = Field(60.0, gt=0)
    batch_wait_seconds: float | None = Field(
        None, gt=0, description="stop waiting after this long; the next build resumes the batch"
    )


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
    _backend_tag("rules"),
]


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
    synonyms: str | None = Field(
        None, description="extra predicate synonym YAML (raw -> normalised)"
    )


class NoFiltersConfig(Section):
    backend: Literal["none"]


FiltersConfig = Annotated[
    Annotated[NoFiltersConfig, Tag("none")] | Annotated[RuleFiltersConfig, Tag("rules")],
    _backend_tag("none"),
]


class NoRobinConfig(Section):
    backend: Literal["none"] = "none"


class RobinModelConfig(Section):
    """Robin from a local checkpoint directory in the released layout (see docs/ROBIN.md).

    Sampling defaults: the release samples at temperature 1.0 (its demo 0.2, its evaluations
    0.5 with top_p 0.95) with up to 1024 new tokens; synthvg defaults to the demo's 0.2.
    """

    backend: Literal["robin"] = "robin"
    checkpoint: str = Field(
        description="local directory: config.json, safetensors (+ index), tokenizer files"
    )
    mode: Literal["holistic", "per_region"] = Field(
        "holistic",
        description="one 'extremely detailed scene graph' call per image, or two turns per region",
    )
    batch_size: int = Field(
        8, ge=1, description="prompts generated together (halved on CUDA out-of-memory)"
    )
    images_per_batch: int = Field(8, ge=1, description="images encoded and held at once")
    device: str = Field("auto", description="auto: cuda when available, else cpu")
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
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    allow_unexpected_keys: bool = Field(
        False, description="load despite checkpoint keys the model has no place for"
    )


def _robin_tag(value) -> str:
    """``robin: {checkpoint: DIR}`` alone means the Robin backend."""
    if isinstance(value, dict):
        return value.get("backend", "robin" if "checkpoint" in value else "none")
    return getattr(value, "backend", "none")


RobinStageConfig = Annotated[
    Annotated[NoRobinConfig, Tag("none")] | Annotated[RobinModelConfig, Tag("robin")],
    Discriminator(_robin_tag),
]


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
    _backend_tag("none"),
]


class PrefectLimit(Section):
    """A Prefect global concurrency limit shared by every build that names it.

    Without ``per_second`` at most ``limit`` shards of the listed stages run at once (GPU
    stages). With it, a rate limit: each shard takes one slot per image and slots free at
    ``per_second`` (model APIs; one teacher request per image). ``synthvg setup-prefect``
    creates the limits; builds then fail fast if one is missing.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stages: list[str] = Field(min_length=1)
    limit: int = Field(
        ge=1, description="slots: shards at once, or the rate limit's burst in images"
    )
    per_second: float | None = Field(
        None, gt=0, description="set: a rate limit, slots decaying at this rate"
    )


class ExecutorConfig(Section):
    kind: Literal["threads", "dask", "ray"] = Field(
        "threads", description="threads in the build's process, or a Dask or Ray cluster"
    )
    address: str | None = Field(
        None,
        description="Dask scheduler or Ray cluster address; none: start a local cluster per build",
    )
    workers: int = Field(
        2, ge=1, le=256, description="shards processed at once (local cluster size)"
    )
    retries: int = Field(1, ge=0, description="Prefect task retries for a failing shard")
    retry_delay_seconds: float = Field(
        2.0, ge=0, description="first retry delay; doubles each retry"
    )
    gpus: dict[str, float] = Field(
        default_factory=dict, description="GPUs each shard task of a stage requests on Ray or Dask"
    )
    limits: list[PrefectLimit] = Field(default_factory=list)
    overlap: bool | None = Field(
        None,
        description="chain shard tasks per shard (a stage works on shard 1 while the stage it reads works on "
        "shard 2); false: each stage waits for every shard of the stages it reads; none: overlap on Dask and "
        "Ray, whose schedulers hold a task back until its inputs are done, and not on threads, where a waiting "
        "task holds a worker thread (measured: benchmarks/bench_overlap.py)",
    )

    @property
    def overlapped(self) -> bool:
        return self.overlap if self.overlap is not None else self.kind != "threads"

    @model_validator(mode="after")
    def _address_needs_cluster(self) -> ExecutorConfig:
        if self.address and self.kind == "threads":
            raise ValueError("address needs kind dask or ray (threads run in the build's process)")
        return self


class BuildConfig(Section):
    """Everything one dataset build needs."""

    name: str = Field("synthvg", pattern=r"^[A-Za-z0-9_.-]+$")
    out: str = Field(description="dataset root: a folder or an fsspec URL")
    shard_size: int = Field(
        256,
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
        stages = set(type(self).model_fields) - {"name", "out", "shard_size", "limit", "executor"}
        named = set(self.executor.gpus) | {s for lim in self.executor.limits for s in lim.stages}
        if unknown := sorted(named - stages):
            raise ValueError(
                f"executor names unknown stage(s) {unknown}; stages are {sorted(stages)}"
            )
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
    """Make every relative path in ``cfg`` absolute against ``base``."""
    sources = [
        s.model_copy(
            update={k: _resolve(v, base) for k in s.PATHS if (v := getattr(s, k)) is not None}
        )
        for s in cfg.seeds.sources
    ]
    select = cfg.seeds.select
    if select.ids_file is not None:
        select = select.model_copy(update={"ids_file": _resolve(select.ids_file, base)})
    seeds = cfg.seeds.model_copy(update={"sources": sources, "select": select})
    regions = cfg.regions
    for section, key in (
        ("segment_anything", "checkpoint"),
        ("transformers_sam", "path"),
        ("precomputed", "path"),
    ):
        sub = getattr(regions, section)
        if sub is not None:
            regions = regions.model_copy(
                update={section: sub.model_copy(update={key: _resolve(getattr(sub, key), base)})}
            )
    depth = cfg.depth
    if isinstance(depth, DepthAnythingConfig):
        depth = depth.model_copy(update={"path": _resolve(depth.path, base)})
    robin = cfg.robin
    if isinstance(robin, RobinModelConfig):
        robin = robin.model_copy(update={"checkpoint": _resolve(robin.checkpoint, base)})
    filters = cfg.filters
    if isinstance(filters, RuleFiltersConfig):
        verifiers = [
            v.model_copy(update={"path": _resolve(v.path, base)})
            if isinstance(v, TransformersVerifierConfig)
            else v
            for v in filters.verifiers
        ]
        synonyms = _resolve(filters.synonyms, base) if filters.synonyms else None
        filters = filters.model_copy(update={"verifiers": verifiers, "synonyms": synonyms})
    return cfg.model_copy(
        update={
            "out": _resolve(cfg.out, base),
            "seeds": seeds,
            "regions": regions,
            "depth": depth,
            "robin": robin,
            "filters": filters,
        }
    )


def input_paths(cfg: BuildConfig) -> list[tuple[str, str]]:
    """``(key, path)`` of every file or folder the build reads: the seed sources' files, the
    chosen proposer's, the model folders of the stages that run, the filters' files."""
    found = [
        (f"seeds.sources[{i}].{k}", v)
        for i, s in enumerate(cfg.seeds.sources)
        for k in s.PATHS
        if (v := getattr(s, k)) is not None
    ]
    if cfg.seeds.select.ids_file:
        found.append(("seeds.select.ids_file", cfg.seeds.select.ids_file))
    proposer = cfg.regions.proposer_config()
    for key in ("checkpoint", "path"):
        if proposer is not None and isinstance(getattr(proposer, key, None), str):
            found.append((f"regions.{cfg.regions.proposer}.{key}", getattr(proposer, key)))
    if isinstance(cfg.depth, DepthAnythingConfig):
        found.append(("depth.path", cfg.depth.path))
    if isinstance(cfg.filters, RuleFiltersConfig):
        if cfg.filters.synonyms:
            found.append(("filters.synonyms", cfg.filters.synonyms))
        found += [
            (f"filters.verifiers[{i}].path", v.path)
            for i, v in enumerate(cfg.filters.verifiers)
            if isinstance(v, TransformersVerifierConfig)
        ]
    if isinstance(cfg.robin, RobinModelConfig):
        found.append(("robin.checkpoint", cfg.robin.checkpoint))
    return found
