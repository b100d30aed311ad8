"""Mask and box helpers over COCO RLE (pycocotools), the one mask format of every table."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from synthvg import schemas  # RLE and Box resolve on first use: `synthvg show` builds no record

if TYPE_CHECKING:
    from synthvg.schemas import RLE, Box


def _coco(size: Sequence[int], counts: str) -> dict:
    return {"size": list(size), "counts": counts.encode("ascii")}


def to_coco(rle: RLE) -> dict:
    return _coco(rle.size, rle.counts)


def from_coco(rle: dict) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return schemas.RLE(size=[int(rle["size"][0]), int(rle["size"][1])], counts=counts)


def _check_polygon(k: int, polygon: object) -> None:
    """pycocotools would drop an odd last coordinate and rasterise NaN anywhere: refuse both."""
    if not isinstance(polygon, list):
        return
    if len(polygon) % 2:
        raise ValueError(
            f"segmentation polygon {k} has an odd number of coordinates ({len(polygon)}), not x, y pairs"
        )
    try:
        total = sum(polygon)  # one C loop: NaN or infinity anywhere makes the sum non-finite
    except TypeError:
        raise ValueError(
            f"segmentation polygon {k} holds a coordinate that is not a number"
        ) from None
    if not math.isfinite(total):
        raise ValueError(
            f"segmentation polygon {k} holds a coordinate that is not finite (NaN or infinity)"
        )


def segmentation_to_rle(segmentation, height: int, width: int) -> RLE:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> compressed RLE.

    Raises ``ValueError`` for shapes pycocotools cannot read, so callers can log the
    annotation instead of crashing.
    """
    if isinstance(segmentation, list):
        for k, p in enumerate(segmentation):
            _check_polygon(k, p)
        polys = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polys:
            raise ValueError("polygon segmentation has no polygon with >= 3 points")
        rles = mask_utils.frPyObjects(polys, height, width)
        return from_coco(mask_utils.merge(rles))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        h, w = segmentation["size"]
        if (int(h), int(w)) != (height, width):
            raise ValueError(f"RLE size {[h, w]} differs from the image size {[height, width]}")
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            counts = segmentation["counts"]
            rle = {
                "size": [height, width],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        return from_coco(rle)
    raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")


def area(rle: RLE) -> float:
    return float(mask_utils.area(to_coco(rle)))


#: pycocotools' batched ``area`` overflows (uint8) past 255 masks a call under numpy 2.
_AREA_BATCH = 255


def areas(rles: list[dict]) -> np.ndarray:
    """The areas of many COCO RLE dicts (``counts`` as bytes) at once: :func:`area`'s numbers
    without an :class:`RLE` each, in calls of at most 255 masks."""
    out = np.empty(len(rles), dtype=np.float64)
    for k in range(0, len(rles), _AREA_BATCH):
        out[k : k + _AREA_BATCH] = mask_utils.area(rles[k : k + _AREA_BATCH])
    return out


def bbox(rle: RLE) -> Box:
    x, y, w, h = (float(v) for v in mask_utils.toBbox(to_coco(rle)))
    return schemas.Box(x1=x, y1=y, x2=x + w, y2=y + h)


def decode(rle: RLE) -> np.ndarray:
    return mask_utils.decode(to_coco(rle)).astype(bool)


def decode_row(mask: Mapping[str, Any]) -> np.ndarray:
    """A mask as a table row holds it (``size``, ``counts``), decoded without an :class:`RLE`."""
    return mask_utils.decode(_coco(mask["size"], mask["counts"])).astype(bool)


def encode(mask: np.ndarray) -> RLE:
    return from_coco(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


#: RLE IoU costs about one unit per run per pair, the packed-bit path about 0.8 units per pixel
#: per mask (decoding dominates); measured with benchmarks/bench_iou.py.
_DENSE_UNITS_PER_PIXEL = 0.8

IoUMethod = Literal["auto", "rle", "dense"]


def _same_size(masks: list[RLE]) -> tuple[int, int]:
    sizes = {tuple(r.size) for r in masks}
    if len(sizes) != 1:
        raise ValueError(f"masks of different sizes cannot be compared: {sorted(sizes)}")
    h, w = sizes.pop()
    return int(h), int(w)


def iou_matrix(a: list[RLE], b: list[RLE], method: IoUMethod = "auto") -> np.ndarray:
    """Mask IoU of every ``a`` against every ``b`` (shape len(a) x len(b)).

    RLE IoU costs grow with the number of runs, so fragmented masks (noise, hair, foliage)
    can take seconds; ``auto`` switches to packed bits when that would be cheaper. Both give
    the same numbers. Masks of different sizes raise ``ValueError``.
    """
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    h, w = _same_size(a + b)
    if method == "auto":
        runs = len(b) * sum(len(r.counts) for r in a) + len(a) * sum(len(r.counts) for r in b)
        method = "dense" if runs > _DENSE_UNITS_PER_PIXEL * (len(a) + len(b)) * h * w else "rle"
    if method == "dense":
        return _dense_iou(a, b)
    out = mask_utils.iou([to_coco(r) for r in a], [to_coco(r) for r in b], [0] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))


def _packed(masks: list[RLE]) -> np.ndarray:
    """Each mask as a row of 64-bit words (bit i = pixel i in COCO's column-major order)."""
    rows = [np.packbits(mask_utils.decode(to_coco(r)).ravel(order="F")) for r in masks]
    packed = np.stack(rows)
    pad = (-packed.shape[1]) % 8
    return np.pad(packed, ((0, 0), (0, pad))).view(np.uint64)


def _dense_iou(a: list[RLE], b: list[RLE]) -> np.ndarray:
    pa, pb = _packed(a), _packed(b)
    inter = np.stack([np.bitwise_count(pb & row).sum(axis=1, dtype=np.int64) for row in pa])
    area_a = np.bitwise_count(pa).sum(axis=1, dtype=np.int64)
    area_b = np.bitwise_count(pb).sum(axis=1, dtype=np.int64)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def resize(rle: RLE, height: int, width: int) -> RLE:
    """The mask scaled to ``height`` x ``width`` by nearest neighbour: masks a model made on a
    downscaled image, mapped back to the image's own size."""
    if (int(rle.size[0]), int(rle.size[1])) == (height, width):
        return rle
    small = Image.fromarray(decode(rle).astype(np.uint8))
    return encode(np.asarray(small.resize((width, height), Image.Resampling.NEAREST)).astype(bool))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes: every row of ``a`` (n x 4) against every row of ``b`` (m x 4)."""
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    wh = np.clip(
        np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]),
        0,
        None,
    )
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy box non-maximum suppression: indices kept, best score first (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if not order:
        return []
    ious = box_iou(boxes, boxes)
    suppressed = np.zeros(len(scores), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= ious[i] > threshold
    return keep


def coverage_matrix(a: list[RLE], b: list[RLE]) -> np.ndarray:
    """Fraction of each ``a`` mask that lies inside each ``b`` mask: |a & b| / |a|."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    # pycocotools' crowd IoU divides the intersection by the first argument's area.
    out = mask_utils.iou([to_coco(r) for r in a], [to_coco(r) for r in b], [1] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))


def label_map_to_rles(labels: np.ndarray) -> dict[int, RLE]:
    """Encode every label of an integer label map at once (label -> RLE).

    Building one dense mask per segment costs a full image pass per label; instead the map is
    walked once in COCO's column-major order, cut into runs, and each label's runs become its
    uncompressed RLE counts.
    """
    h, w = labels.shape
    flat = np.asarray(labels).ravel(order="F")
    n = flat.size
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    ends = np.r_[starts[1:], n]
    run_labels = flat[starts]
    order = np.argsort(run_labels, kind="stable")
    out: dict[int, RLE] = {}
    sorted_labels = run_labels[order]
    bounds = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1], True])
    for i in range(len(bounds) - 1):
        idx = order[bounds[i] : bounds[i + 1]]
        label = int(run_labels[idx[0]])
        s, e = starts[idx], ends[idx]
        # counts alternate zeros, ones, zeros, ...: gaps before each run, then the run length.
        gaps = s - np.r_[0, e[:-1]]
        counts = np.empty(2 * len(s) + 1, dtype=np.int64)
        counts[0:-1:2] = gaps
        counts[1::2] = e - s
        counts[-1] = n - e[-1]  # trailing zeros: the counts must cover the whole image
        if counts[-1] == 0:
            counts = counts[:-1]
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
        out[label] = from_coco(rle)
    return out


def box_to_rle(box: Box, height: int, width: int) -> RLE:
    boxes = np.array([[box.x1, box.y1, box.width, box.height]], dtype=np.float64)
    rle = mask_utils.frPyObjects(boxes, height, width)[0]
    return from_coco(rle)


def clip_box(box: Box, width: int, height: int) -> Box:
    return schemas.Box(
        x1=min(max(box.x1, 0.0), width),
        y1=min(max(box.y1, 0.0), height),
        x2=min(max(box.x2, 0.0), width),
        y2=min(max(box.y2, 0.0), height),
    )


def region_mask(region: dict, height: int, width: int) -> RLE:
    """A region's mask, or its box rasterised when it only has a box."""
    if region.get("mask") is not None:
        return schemas.RLE(**region["mask"])
    b = region["bbox"]
    return box_to_rle(schemas.Box(**b), height, width)
