"""What both SAM backends do around the model: the point grid, small-region clean-up, the
official demo's whole + part merge, and mapping masks back to the image's own size.

Pure numpy and pycocotools (no torch), so the merge is testable without a model. Masks are
handled as :class:`Proposal` at the model's working resolution until :func:`finish`.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from synthvg import masks
from synthvg.models.proposers import Proposal, to_proposals
from synthvg.schemas import RLE
from synthvg.schemas.config import MergeParams, SamCommonConfig

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def point_grid(n: int) -> np.ndarray:
    """N x N points at the centres of an even grid over the unit square, as (x, y) rows."""
    side = (np.arange(n) + 0.5) / n
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def work_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size a model works at: the image's, or scaled down so its long side is ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def remove_small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Fill holes and drop islands smaller than ``min_area`` pixels (8-connected), keeping the
    largest island when all are small: SAM's ``min_mask_region_area`` without OpenCV."""
    from scipy import ndimage  # ~0.5 s of imports: only when masks are cleaned

    changed = False
    holes, n = ndimage.label(~mask, structure=_EIGHT_CONNECTED)
    if n:
        sizes = np.bincount(holes.ravel())[1:]
        small = np.flatnonzero(sizes < min_area) + 1
        if small.size:
            mask = mask | np.isin(holes, small)
            changed = True
    islands, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n:
        sizes = np.bincount(islands.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_area) + 1
        if keep.size < n:
            mask = np.isin(islands, keep if keep.size else [int(np.argmax(sizes)) + 1])
            changed = True
    return mask, changed


def clean_small_regions(
    proposals: list[Proposal], min_area: int, nms_threshold: float
) -> list[Proposal]:
    """Clean every mask, then box-NMS again preferring masks the clean-up did not change (as
    the package's automatic mask generator does)."""
    if not proposals or min_area <= 0:
        return proposals
    cleaned, untouched = [], []
    for p in proposals:
        m, changed = remove_small_regions(masks.decode(p.mask), min_area)
        cleaned.append(masks.encode(m) if changed else p.mask)
        untouched.append(0.0 if changed else 1.0)
    boxes = np.array([_xyxy(r) for r in cleaned])
    keep = masks.nms(boxes, np.array(untouched), nms_threshold)
    return [
        Proposal(cleaned[i], masks.bbox(cleaned[i]), masks.area(cleaned[i]), proposals[i].score)
        for i in keep
    ]


def _xyxy(rle: RLE) -> list[float]:
    b = masks.bbox(rle)
    return [b.x1, b.y1, b.x2, b.y2]


def remove_unions(props: list[Proposal], params: MergeParams) -> list[Proposal]:
    """Drop masks that are unions of others: at least two other masks lie mostly inside it
    (> ``union_inside``) and together cover most of it (> ``union_cover``)."""
    if len(props) < 3:
        return props
    rles = [p.mask for p in props]
    inside = masks.coverage_matrix(rles, rles)  # [i, u] = |i & u| / |i|
    out = []
    for u, p in enumerate(props):
        members = [i for i in range(len(props)) if i != u and inside[i, u] > params.union_inside]
        if len(members) >= 2 and p.area > 0:
            union = mask_utils.merge([masks.to_coco(rles[i]) for i in members])
            covered = mask_utils.merge([union, masks.to_coco(p.mask)], intersect=True)
            if float(mask_utils.area(covered)) / p.area > params.union_cover:
                continue
        out.append(p)
    return out


def merge_whole_part(
    whole: list[Proposal], part: list[Proposal], params: MergeParams
) -> list[Proposal]:
    """The official demo's merge of its two SAM modes (docs/REGIONS.md).

    Union masks are dropped from the whole set; then each part mask, best score first, is added
    when it overlaps every kept mask by less than ``part_overlap`` (of its own area) or is large
    (area above the ``large_whole_quantile`` of whole areas or the ``large_part_quantile`` of
    part areas), unless its IoU with a kept mask exceeds ``part_max_iou``; unions are dropped
    again at the end.
    """
    kept = remove_unions(whole, params)
    thresholds = []
    if whole:
        thresholds.append(np.quantile([p.area for p in whole], params.large_whole_quantile))
    if part:
        thresholds.append(np.quantile([p.area for p in part], params.large_part_quantile))
    large = min(thresholds) if thresholds else np.inf
    for p in sorted(part, key=lambda q: -(q.score if q.score is not None else q.area)):
        if kept:
            rles = [k.mask for k in kept]
            if masks.iou_matrix([p.mask], rles).max() > params.part_max_iou:
                continue
            overlap = masks.coverage_matrix([p.mask], rles).max()
            if overlap >= params.part_overlap and p.area <= large:
                continue
        kept.append(p)
    return remove_unions(kept, params)


def finish(
    sets: dict[str, list[Proposal]], config: SamCommonConfig, height: int, width: int
) -> list[Proposal]:
    """The mode's result (the merge for ``whole+part``) mapped back to the image's size."""
    props = (
        merge_whole_part(sets["whole"], sets["part"], config.merge)
        if config.mode == "whole+part"
        else sets[config.mode]
    )
    rles = [masks.resize(p.mask, height, width) for p in props]
    return to_proposals(rles, [p.score for p in props], config.max_proposals)
