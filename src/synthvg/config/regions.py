"""The regions stage's settings: the mask proposer (one section per proposer, named by
``proposer``), the confirmation threshold and the uncovered-proposal rule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, model_validator

from synthvg.config.base import Dtype, Section
from synthvg.config.fields import InputPath, SpeedOnly


class FelzenszwalbConfig(Section):
    scale: float = Field(300.0, gt=0)
    sigma: float = Field(0.8, ge=0)
    min_size: int = Field(50, ge=1)
    max_side: int = Field(
        640, ge=32, description="images are downscaled to this longest side first"
    )
    max_proposals: int = Field(400, ge=1, description="keep the largest N segments per image")


class AMGParams(Section):
    """SamAutomaticMaskGenerator's parameters (the package's defaults unless a preset sets them)."""

    points_per_side: int = Field(32, ge=1, description="point grid is N x N")
    points_per_batch: Annotated[int, SpeedOnly()] = Field(
        64, ge=1, description="points decoded at once (speed only)"
    )
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
    device: Annotated[str, SpeedOnly()] = Field(
        "auto", description="auto: cuda when available, else cpu"
    )
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

    checkpoint: InputPath = Field(description="local .pth checkpoint (sam_vit_h_4b8939.pth, ...)")
    model_type: Literal["vit_h", "vit_l", "vit_b", "custom"] = "vit_h"
    encoder: SamEncoderSpec | None = Field(None, description="required for model_type: custom")

    @model_validator(mode="after")
    def _custom_needs_encoder(self):
        if (self.model_type == "custom") != (self.encoder is not None):
            raise ValueError("encoder: give it exactly when model_type is 'custom'")
        return self


class TransformersSamConfig(SamCommonConfig):
    """SAM or SAM 2 from a local transformers model directory: batched encoder and point grid."""

    path: InputPath = Field(
        description="local model directory (config.json, weights, preprocessor_config.json)"
    )
    batch_size: Annotated[int, SpeedOnly()] = Field(
        4, ge=1, description="images encoded and decoded together"
    )

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

    path: InputPath = Field(description="folder of per-image files")
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


#: The proposers with a section of their own in :class:`RegionsConfig` (``none`` has none).
PROPOSER_SECTIONS = ("felzenszwalb", "segment_anything", "transformers_sam", "precomputed")


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

    def unused_fields(self) -> frozenset[str]:
        """The proposer sections other than the chosen one (their paths are not read)."""
        return frozenset(n for n in PROPOSER_SECTIONS if n != self.proposer)

    def proposer_config(self) -> BaseModel | None:
        """The chosen proposer's section (None for ``none``)."""
        return None if self.proposer == "none" else getattr(self, self.proposer)
