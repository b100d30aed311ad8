"""Regions: propose masks, then keep an annotated region iff a proposal confirms it.

For each annotated region the stage records the best mask IoU over all proposals and which
proposal reached it; the region is kept iff that IoU exceeds ``iou_threshold`` (the paper's
0.5). Proposals are stored too, so images without annotations can use them as regions later.
"""

from __future__ import annotations

import numpy as np

from synthvg import masks
from synthvg.models.proposers import FelzenszwalbProposer, MaskProposer
from synthvg.schemas import RLE, Box, ProposalRecord, RegionCheckRecord
from synthvg.schemas.config import BuildConfig
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput
from synthvg.stages.seeds import read_image


def region_mask(region: dict, height: int, width: int) -> RLE:
    """A region's mask, or its box rasterised when it only has a box."""
    if region.get("mask") is not None:
        return RLE(**region["mask"])
    b = region["bbox"]
    return masks.box_to_rle(Box(**b), height, width)


def check_regions(region_masks: list[RLE], proposal_masks: list[RLE], threshold: float) -> list[tuple[float | None, int | None, bool]]:
    """(best IoU, best proposal, kept) for each region mask."""
    if not proposal_masks:
        return [(None, None, False) for _ in region_masks]
    ious = masks.iou_matrix(region_masks, proposal_masks)
    out = []
    for row in ious:
        j = int(np.argmax(row))
        best = float(row[j])
        out.append((best, j, best > threshold))
    return out


def make_proposer(config: BuildConfig) -> MaskProposer:
    if config.regions.proposer == "felzenszwalb":
        return FelzenszwalbProposer(config.regions.felzenszwalb)
    raise ValueError(f"no proposer for {config.regions.proposer!r}")


class RegionsStage(Stage):
    name = "regions"
    version = "1"
    writes = ("proposals", "region_checks")

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        if config.regions.proposer == "none":
            return "no mask proposer configured (regions.proposer: none); every region counts as unchecked"
        return None

    def __init__(self, config: BuildConfig):
        super().__init__(config)
        self.proposer = make_proposer(config)  # loads once per worker

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        out = StageOutput()
        regions_by_image: dict[str, list[dict]] = {}
        for r in inputs.rows("regions"):
            regions_by_image.setdefault(r["image_id"], []).append(r)
        for image in inputs.rows("images"):
            image_id = image["image_id"]
            try:
                _, img = read_image(image["file_uri"])
            except ValueError as e:
                out.errors.append(ctx.error("bad_image", str(e), image_id=image_id, source=image["file_uri"]))
                continue
            rgb = np.asarray(img.convert("RGB"))
            proposals = self.proposer.propose(rgb)
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
            regions = regions_by_image.get(image_id, [])
            checks = check_regions(
                [region_mask(r, image["height"], image["width"]) for r in regions],
                [p.mask for p in proposals],
                self.config.regions.iou_threshold,
            )
            out.add(
                "region_checks",
                *(
                    RegionCheckRecord(image_id=image_id, region_id=r["region_id"], best_iou=iou, best_proposal_id=pid, kept=kept)
                    for r, (iou, pid, kept) in zip(regions, checks, strict=True)
                ),
            )
        return out
