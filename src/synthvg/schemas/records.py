"""The records every stage reads and writes, one pydantic model per table row.

The Arrow schema of each Parquet table is derived from these models
(:func:`synthvg.schemas.arrow.schema_of`), so a column exists exactly when a field does.
Field descriptions double as column documentation (``docs/SCHEMA.md``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from synthvg.schemas.vocabulary import (
    Category,
    EditAction,
    Generator,
    RelationStage,
    Verdict,
)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Box(Record):
    """An axis-aligned box in pixels, xyxy (x1 <= x2, y1 <= y2)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


class RLE(Record):
    """A binary mask as COCO run-length encoding (compressed ``counts`` string)."""

    size: list[int] = Field(description="[height, width] of the mask")
    counts: str = Field(description="COCO compressed RLE counts")


class RegionSource(Record):
    """One annotation that described a region (a region may have several)."""

    dataset: str = Field(description="annotation source, e.g. coco, lvis, refcoco, vg")
    annotation_id: str = Field(description="the annotation's id in its source")
    category: str | None = Field(None, description="the source's class name, if any")
    split: str | None = Field(
        None,
        description="the split the source puts this annotation in (RefCOCO testA, PSG test, ...)",
    )


class ImageRecord(Record):
    """One real image, with every native id it is known by."""

    image_id: str = Field(description="stable id: '<dataset>:<native id>' of its primary source")
    sources: list[str] = Field(description="datasets that annotate this image")
    coco_id: int | None = Field(None, description="COCO image id")
    vg_id: int | None = Field(None, description="Visual Genome image id")
    gqa_id: str | None = Field(None, description="GQA image id (equals the VG id)")
    psg_id: int | None = Field(None, description="PSG image id (its coco_image_id)")
    file_uri: str = Field(description="where the image file is (absolute path or fsspec URL)")
    width: int
    height: int
    split: str | None = Field(None, description="the source's split (train2017, val2017, ...)")
    content_hash: str = Field(
        description="sha256 of the image file's bytes ('' when built without image files)"
    )


class RegionRecord(Record):
    """An annotated region: a box, a mask, and what the sources said about it."""

    image_id: str
    region_id: int = Field(description="0-based id, unique within the image")
    bbox: Box = Field(description="box in xyxy pixels")
    mask: RLE | None = Field(None, description="mask as COCO RLE (None when only a box is known)")
    area: float = Field(description="mask area in pixels (box area when there is no mask)")
    label: str | None = Field(None, description="class name")
    descriptions: list[str] = Field(default_factory=list, description="free-text descriptions")
    attributes: list[str] = Field(
        default_factory=list, description="attributes the sources give (VG, GQA, ADE20K)"
    )
    is_crowd: bool = Field(False, description="COCO iscrowd: the region covers a group")
    sources: list[RegionSource] = Field(description="the annotations merged into this region")


class ProposalRecord(Record):
    """A mask proposed by a segmenter (SAM, a classical proposer, precomputed files)."""

    image_id: str
    proposal_id: int = Field(description="0-based id, unique within the image")
    bbox: Box
    mask: RLE
    area: float
    score: float | None = Field(None, description="the proposer's confidence, if it gives one")
    proposer: str = Field(description="which proposer made it (labelled honestly)")


class RegionCheckRecord(Record):
    """The regions stage's verdict on an annotated region: does a proposal confirm it?"""

    image_id: str
    region_id: int
    best_iou: float | None = Field(
        description="highest mask IoU with any proposal (None: no proposals)"
    )
    best_proposal_id: int | None = Field(description="the proposal that reached best_iou")
    kept: bool = Field(description="best_iou > the configured threshold")


class RegionDepthRecord(Record):
    """Per-region relative depth statistics (filled by the depth stage)."""

    image_id: str
    region_id: int
    depth_median: float | None = Field(
        description="median relative depth inside the mask: 0 farthest, 1 nearest in the image"
    )
    depth_spread: float | None = Field(description="interquartile range of depth inside the mask")
    depth_model: str


class DepthMapRecord(Record):
    """Where the depth stage saved an image's depth map (a 16-bit PNG beside the tables)."""

    image_id: str
    depth_uri: str = Field(
        description="16-bit grayscale PNG: value / 65535 = relative depth, larger = nearer"
    )
    depth_model: str


class DescriptionRecord(Record):
    """A description of a region written by a stage (teacher, robin, edit), with provenance."""

    image_id: str
    region_id: int
    description: str
    stage: RelationStage = Field(description="which stage wrote it")
    generator: Generator
    model: str
    prompt_version: str | None = None
    run_id: str


class RelationRecord(Record):
    """One (subject, predicate, object) triple of a scene graph, with provenance."""

    relation_id: str = Field(description="stable hash of image, stage, subject, object, predicate")
    image_id: str
    subject_id: int = Field(description="region_id of the subject")
    object_id: int = Field(description="region_id of the object")
    predicate: str = Field(description="normalised predicate")
    predicate_raw: str = Field(description="the predicate as the generator wrote it")
    category: Category
    stage: RelationStage = Field(description="which stage produced it")
    generator: Generator = Field(description="human annotation, rules, or a model")
    verdict: Verdict = Field("unverified", description="the filters' verdict")
    verdict_reason: str | None = Field(None, description="why the filters kept or dropped it")
    score: float | None = Field(None, description="confidence of the generator or filter")
    model: str = Field(description="model or rule set that produced it")
    prompt_version: str | None = Field(None, description="prompt or rule version")
    run_id: str = Field(description="build run that produced it")


class RelationVerdictRecord(Record):
    """A filter's verdict on one relation; the ``relations`` view applies it."""

    relation_id: str
    image_id: str
    verdict: Verdict
    verdict_reason: str = Field(description="why: the rule or verifier and its evidence")
    verdict_score: float | None = Field(None, description="rule margin or the verifier's P(yes)")
    verified_by: str = Field(description="the rule (rule:left_of) or verifier(s) that decided")
    run_id: str


class EditRecord(Record):
    """One edit the SG-EDIT editor asked for, applied or rejected, with provenance."""

    image_id: str
    region_id: int = Field(description="the object edited (for same_as: the one that is kept)")
    action: EditAction = Field(description="rename, add, remove or same_as")
    predicate: str | None = Field(None, description="normalised predicate of an add or remove")
    predicate_raw: str | None = Field(None, description="the predicate as the editor wrote it")
    object_id: int | None = Field(
        None, description="target of an add or remove; for same_as the duplicate merged away"
    )
    old_name: str | None = Field(None, description="name before a rename")
    new_name: str | None = Field(None, description="name the editor asked for")
    applied: bool = Field(description="the edit changed the graph")
    reason: str | None = Field(None, description="why it was not applied")
    source: str = Field(description="whose graph was edited: robin, teacher, seed or union")
    model: str
    prompt_version: str | None = None
    run_id: str


class GenerationRecord(Record):
    """One model call's raw text, kept for audit: what was asked, what came back, what parsing
    made of it (Robin writes these; the relations and descriptions rows are parsed from them)."""

    image_id: str
    stage: RelationStage
    turn: str = Field(description="scene_graph, description or relationships")
    region_ids: list[int] = Field(
        description="the regions listed in the prompt: region1 is the first"
    )
    subject_id: int | None = Field(None, description="the region asked about (per-region turns)")
    text: str | None = Field(None, description="the generated text (NULL when the call failed)")
    prompt_tokens: int | None = Field(
        None, description="prompt length after splicing in the image tokens"
    )
    new_tokens: int | None = Field(None, description="tokens generated")
    finished: bool | None = Field(
        None, description="stopped by itself (false: hit max_new_tokens, text may be cut)"
    )
    error: str | None = Field(None, description="why the call did not run (prompt too long, ...)")
    problems: list[str] = Field(default_factory=list, description="what the parser dropped and why")
    model: str
    prompt_version: str
    run_id: str


class ErrorRecord(Record):
    """An input that failed: what, where, why. A build records these and goes on."""

    run_id: str
    stage: str
    shard: int | None = None
    image_id: str | None = None
    source: str | None = Field(None, description="the file or annotation at fault")
    kind: str = Field(description="short machine-readable class of the fault")
    reason: str = Field(description="what went wrong, for a person")
    created_at: dt.datetime


class ShardFile(Record):
    """One committed file. Its size is checked by every build, its checksum by ``synthvg verify``;
    both are ``None`` in manifests written before synthvg recorded them."""

    table: str
    path: str = Field(description="path relative to the dataset root")
    rows: int
    bytes: int | None = Field(None, description="file size in bytes, as committed")
    sha256: str | None = Field(None, description="hex SHA-256 of the file's bytes, as committed")
    schema_id: str | None = Field(
        None,
        description="hash of the file's columns and types: the views read a table whose files "
        "share one schema_id without unifying their schemas file by file",
    )


class ShardManifest(Record):
    """The completion record of one stage on one shard, written last (its presence = done)."""

    stage: str
    shard: int
    fingerprint: str = Field(description="hash of inputs, stage config, code version, upstream")
    image_count: int
    files: list[ShardFile]
    run_id: str
    synthvg_version: str
    started_at: dt.datetime
    finished_at: dt.datetime
    seconds: float
    metrics: dict[str, float] = Field(
        default_factory=dict,
        description="what the stage measured on this shard: requests, tokens, cost_usd, ...",
    )


class StageSummary(Record):
    """What one stage did in one run."""

    stage: str
    status: Literal["done", "skipped", "failed", "partial"]
    reason: str | None = None
    shards_total: int = 0
    shards_written: int = 0
    shards_up_to_date: int = 0
    shards_failed: int = 0
    redone: list[str] = Field(
        default_factory=list,
        description="shards redone because a committed file was missing or changed, and why",
    )
    rows_out: dict[str, int] = Field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = Field(
        default_factory=dict, description="summed over shards: requests, tokens, cost_usd, ..."
    )


class RunManifest(Record):
    """One build run: its config, its stages, how it ended."""

    run_id: str
    name: str
    status: Literal["running", "completed", "failed", "interrupted"] = Field(
        description="interrupted: the build was killed; the next build marked it"
    )
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    synthvg_version: str
    config: dict
    shards: int = 0
    images: int = 0
    stages: list[StageSummary] = Field(default_factory=list)
    version: int | None = Field(
        None, description="the dataset version the run left (read it with --as-of)"
    )
    prefect_flow_run_id: str | None = Field(
        None, description="the Prefect flow run that ran the build (None outside Prefect)"
    )


def relation_id(image_id: str, stage: str, subject_id: int, object_id: int, predicate: str) -> str:
    """Stable id of a relation: the same triple from the same stage always gets the same id."""
    key = f"{image_id}|{stage}|{subject_id}|{object_id}|{predicate}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


#: Physical tables: name -> the record model that defines its schema.
TABLES: dict[str, type[Record]] = {
    "images": ImageRecord,
    "regions": RegionRecord,
    "proposals": ProposalRecord,
    "region_checks": RegionCheckRecord,
    "region_depth": RegionDepthRecord,
    "depth_maps": DepthMapRecord,
    "relations": RelationRecord,
    "descriptions": DescriptionRecord,
    "relation_verdicts": RelationVerdictRecord,
    "edits": EditRecord,
    "generations": GenerationRecord,
    "errors": ErrorRecord,
}
