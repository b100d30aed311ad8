"""The seeds stage's settings: its sources (:mod:`synthvg.readers.config`), the merge and the
selection."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from synthvg.config.base import Section
from synthvg.config.fields import InputPath, SpeedOnly
from synthvg.readers.config import DatasetName, SeedSource


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

    require: list[DatasetName] = Field(
        default_factory=list, description="only images every one of these datasets annotates"
    )
    ids: list[str] = Field(
        default_factory=list, description="only these image ids (coco:397133, vg:1, ...)"
    )
    ids_file: InputPath | None = Field(None, description="a text file of image ids, one per line")

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
    select: Annotated[
        SelectConfig, SpeedOnly("which images: a shard's fingerprint hashes its image ids")
    ] = SelectConfig()

    @model_validator(mode="after")
    def _required_sources_exist(self) -> SeedsConfig:
        have = {s.dataset for s in self.sources}
        missing = [d for d in self.select.require if d not in have]
        if missing:
            raise ValueError(
                f"select.require names {missing}, but no source of that dataset is configured"
            )
        return self
