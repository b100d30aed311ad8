"""Regions: propose masks, then keep an annotated region iff a proposal confirms it.

For each annotated region the stage records the best mask IoU over all proposals and which
proposal reached it; the region is kept iff that IoU exceeds ``iou_threshold`` (the paper's
0.5). Proposals are stored too, and with ``uncovered`` the proposals no annotation covers
become regions themselves (source dataset ``proposal``): how images without annotations get
regions at all.
"""

from __future__ import annotations

import numpy as np

from synthvg import masks
from synthvg.config.build import BuildConfig
from synthvg.config.fields import output_settings
from synthvg.config.regions import (
    PROPOSER_SECTIONS,
    PrecomputedConfig,
    SegmentAnythingConfig,
    TransformersSamConfig,
    UncoveredConfig,
)
from synthvg.models.backends import PROPOSERS
from synthvg.models.identity import folder_identity, path_identity
from synthvg.models.proposers import ImageItem, MaskProposer, Proposal
from synthvg.schemas import RLE, ProposalRecord, RegionCheckRecord, RegionRecord, RegionSource
from synthvg.stages.base import (
    RunContext,
    ShardSpec,
    Stage,
    StageInputs,
    StageOutput,
    shared_model,
)
from synthvg.stages.common import load_rgb, per_image


def check_regions(
    region_masks: list[RLE], proposal_masks: list[RLE], threshold: float
) -> list[tuple[float | None, int | None, bool]]:
    """(best IoU, best proposal, kept) for each region mask; ties go to the lower proposal id.

    Masks of different sizes raise ``ValueError`` (IoU between them means nothing).
    """
    if not proposal_masks:
        return [(None, None, False) for _ in region_masks]
    ious = masks.iou_matrix(region_masks, proposal_masks)
    out: list[tuple[float | None, int | None, bool]] = []
    for row in ious:
        j = int(np.argmax(row))
        best = float(row[j])
        out.append((best, j, best > threshold))
    return out


def uncovered(
    proposals: list[Proposal], region_masks: list[RLE], config: UncoveredConfig
) -> list[int]:
    """Indices of the proposals no annotated region covers (every IoU <= ``iou_threshold``),
    at least ``min_area`` large, box-NMS merged, best first (score, or area when unscored)."""
    cand = [i for i, p in enumerate(proposals) if p.area >= max(config.min_area, 1.0)]
    if region_masks and cand:
        best = masks.iou_matrix([proposals[i].mask for i in cand], region_masks).max(axis=1)
        cand = [i for i, b in zip(cand, best, strict=True) if b <= config.iou_threshold]
    if not cand:
        return []
    scored = all(proposals[i].score is not None for i in cand)
    scores = np.array(
        [proposals[i].score if scored else proposals[i].area for i in cand], dtype=np.float64
    )
    boxes = np.array([[b.x1, b.y1, b.x2, b.y2] for b in (proposals[i].bbox for i in cand)])
    return [cand[k] for k in masks.nms(boxes, scores, config.nms_threshold)][: config.max_regions]


def make_proposer(config: BuildConfig) -> MaskProposer:
    """The configured proposer, loaded (the model backends need the ``models`` extra)."""
    r = config.regions
    return PROPOSERS.create(r.proposer, r.proposer_config(), config)


def model_identity(config: BuildConfig) -> dict | None:
    """What the proposer reads from disk, cheaply identified (see models.identity)."""
    chosen = config.regions.proposer_config()
    if isinstance(chosen, SegmentAnythingConfig):
        return path_identity(chosen.checkpoint)
    if isinstance(chosen, TransformersSamConfig):
        return path_identity(chosen.path)
    if isinstance(chosen, PrecomputedConfig):
        return folder_identity(chosen.path)
    return None


class RegionsStage(Stage):
    name = "regions"
    order = 20
    version = "2"
    writes = ("proposals", "region_checks", "regions")
    reads = ("images", "regions")

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        if config.regions.proposer == "none":
            return "no mask proposer configured (regions.proposer: none); every region counts as unchecked"
        return None

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        return (
            "model"
            if config.regions.proposer in ("segment_anything", "transformers_sam")
            else "free"
        )

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        r = config.regions
        section = r.proposer_config()
        # Every setting of the section but the proposers' (the chosen one's are ``params``) and
        # ``feed``, which decides what later stages read, not what this stage writes.
        own = {
            k: v
            for k, v in output_settings(r).items()
            if k not in PROPOSER_SECTIONS and k != "feed"
        }
        return {
            **own,
            "params": output_settings(section) if section else None,
            "model": model_identity(config),
        }

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        r = config.regions
        self.proposer = shared_model(  # loads once per worker, and per proposer settings
            self,
            "proposer",
            {
                "proposer": r.proposer,
                "config": r.proposer_config(),
                "model": model_identity(config),
            },
            lambda: make_proposer(config),
        )

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        regions_by_image = inputs.by_image("regions")
        images = inputs.rows("images")
        step = self.proposer.batch_size

        def failed(item: ImageItem, kind: str, reason: str) -> None:
            out.errors.append(ctx.error(kind, reason, image_id=item.image_id, source=item.file_uri))

        for start in range(0, len(images), step):
            batch: list[ImageItem] = []
            for image in images[start : start + step]:
                rgb = (
                    load_rgb(image, out, ctx, self.proposer.max_input_side)
                    if self.proposer.needs_pixels
                    else None
                )
                if rgb is not None or not self.proposer.needs_pixels:
                    batch.append(
                        ImageItem(
                            image["image_id"],
                            image["file_uri"],
                            image["width"],
                            image["height"],
                            rgb,
                        )
                    )
            found = per_image(self.proposer.propose_batch, batch, failed, "proposer_failed")
            for item, proposals in zip(batch, found, strict=True):
                if proposals is not None:
                    self._record(item, proposals, regions_by_image.get(item.image_id, []), out, ctx)
        return out

    def _record(
        self,
        item: ImageItem,
        proposals: list[Proposal],
        regions: list[dict],
        out: StageOutput,
        ctx: RunContext,
    ) -> None:
        image_id = item.image_id
        out.add(
            "proposals",
            *(
                ProposalRecord(
                    image_id=image_id,
                    proposal_id=i,
                    bbox=p.bbox,
                    mask=p.mask,
                    area=p.area,
                    score=p.score,
                    proposer=self.proposer.name,
                )
                for i, p in enumerate(proposals)
            ),
        )
        region_masks = [masks.region_mask(r, item.height, item.width) for r in regions]
        try:
            checks = check_regions(
                region_masks, [p.mask for p in proposals], self.config.regions.iou_threshold
            )
        except ValueError as e:
            out.errors.append(
                ctx.error(
                    "mask_size_mismatch",
                    f"proposals cannot be compared with the regions: {e}",
                    image_id=image_id,
                    source=item.file_uri,
                )
            )
            return
        out.add(
            "region_checks",
            *(
                RegionCheckRecord(
                    image_id=image_id,
                    region_id=r["region_id"],
                    best_iou=iou,
                    best_proposal_id=pid,
                    kept=kept,
                )
                for r, (iou, pid, kept) in zip(regions, checks, strict=True)
            ),
        )
        mode = self.config.regions.uncovered.mode
        if mode == "all" or (mode == "unannotated" and not regions):
            self._add_uncovered(image_id, proposals, regions, region_masks, out)

    def _add_uncovered(
        self,
        image_id: str,
        proposals: list[Proposal],
        regions: list[dict],
        region_masks: list[RLE],
        out: StageOutput,
    ) -> None:
        """Uncovered proposals as regions after the annotated ones; each confirms itself."""
        next_id = max((r["region_id"] for r in regions), default=-1) + 1
        for k, i in enumerate(uncovered(proposals, region_masks, self.config.regions.uncovered)):
            p = proposals[i]
            rid = next_id + k
            out.add(
                "regions",
                RegionRecord(
                    image_id=image_id,
                    region_id=rid,
                    bbox=p.bbox,
                    mask=p.mask,
                    area=p.area,
                    sources=[RegionSource(dataset="proposal", annotation_id=str(i))],
                ),
            )
            out.add(
                "region_checks",
                RegionCheckRecord(
                    image_id=image_id, region_id=rid, best_iou=1.0, best_proposal_id=i, kept=True
                ),
            )
