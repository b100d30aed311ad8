"""Region masks as SVG paths (traced from the RLE), so the browser can overlay, toggle and hover
them without one image file per region."""

from __future__ import annotations

import functools

import numpy as np

from synthvg import masks
from synthvg.render import palette
from synthvg.schemas import RLE

#: Masks are traced at most this many pixels on their long side (outlines scaled back up).
TRACE_SIDE = 320


def mask_path(mask: dict | None, bbox: dict) -> str:
    """An SVG path ``d`` for a region: its mask's outlines, or its box when it has no mask."""
    if mask and mask.get("counts"):
        return _rle_path(tuple(mask["size"]), mask["counts"])
    x1, y1, x2, y2 = (round(float(bbox[k]), 1) for k in ("x1", "y1", "x2", "y2"))
    return f"M{x1} {y1}H{x2}V{y2}H{x1}Z"


@functools.lru_cache(maxsize=4096)
def _rle_path(size: tuple[int, ...], counts: str) -> str:
    """The mask as rectangles of pixel runs (rows with the same runs merged), traced at most
    :data:`TRACE_SIDE` pixels on its long side: exact at that scale, numpy only."""
    m = masks.decode(RLE(size=list(size), counts=counts))
    step = max(1, -(-max(m.shape) // TRACE_SIDE))
    small = m[::step, ::step]
    edges = np.diff(np.pad(small, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, cols = np.nonzero(edges)
    runs: list[tuple[int, ...]] = [()] * small.shape[0]
    for y in np.unique(rows):
        runs[y] = tuple(cols[rows == y].tolist())  # start, end, start, end, ...
    parts, y = [], 0
    while y < len(runs):
        if not runs[y]:
            y += 1
            continue
        y1 = y + 1
        while y1 < len(runs) and runs[y1] == runs[y]:
            y1 += 1
        h = (y1 - y) * step
        for x0, x1 in zip(runs[y][::2], runs[y][1::2], strict=True):
            parts.append(f"M{x0 * step} {y * step}h{(x1 - x0) * step}v{h}h{(x0 - x1) * step}z")
        y = y1
    return "".join(parts)


def colour(region_id: int) -> str:
    r, g, b = palette(int(region_id))
    return f"#{r:02x}{g:02x}{b:02x}"
