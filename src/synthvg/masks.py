"""Mask and box helpers over COCO RLE (pycocotools), the one mask format of every table."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from synthvg.schemas import RLE, Box


def to_coco(rle: RLE) -> dict:
    return {"size": list(rle.size), "counts": rle.counts.encode("ascii")}


def from_coco(rle: dict) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return RLE(size=[int(rle["size"][0]), int(rle["size"][1])], counts=counts)


def segmentation_to_rle(segmentation, height: int, width: int) -> RLE:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) -> compressed RLE.

    Raises ``ValueError`` for shapes pycocotools cannot read, so callers can log the
    annotation instead of crashing.
    """
    if isinstance(segmentation, list):
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
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return from_coco(rle)
    raise ValueError(f"unknown segmentation format: {type(segmentation).__name__}")


def area(rle: RLE) -> float:
    return float(mask_utils.area(to_coco(rle)))


def bbox(rle: RLE) -> Box:
    x, y, w, h = (float(v) for v in mask_utils.toBbox(to_coco(rle)))
    return Box(x1=x, y1=y, x2=x + w, y2=y + h)


def decode(rle: RLE) -> np.ndarray:
    return mask_utils.decode(to_coco(rle)).astype(bool)


def encode(mask: np.ndarray) -> RLE:
    return from_coco(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def iou_matrix(a: list[RLE], b: list[RLE]) -> np.ndarray:
    """Mask IoU of every ``a`` against every ``b`` (shape len(a) x len(b))."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    out = mask_utils.iou([to_coco(r) for r in a], [to_coco(r) for r in b], [0] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))


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
    return Box(
        x1=min(max(box.x1, 0.0), width),
        y1=min(max(box.y1, 0.0), height),
        x2=min(max(box.x2, 0.0), width),
        y2=min(max(box.y2, 0.0), height),
    )
