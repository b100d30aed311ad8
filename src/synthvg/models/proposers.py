"""Mask proposers: anything that turns an RGB image into candidate masks.

The regions stage only sees :class:`MaskProposer`; the SAM backends (``sam_package``,
``sam_transformers``) and precomputed files (``precomputed``, how Semantic-SAM plugs in) sit
behind the same interface. The default here needs no weights: scikit-image's graph-based
Felzenszwalb segmentation. It is a classical CPU stand-in, not SAM, and it is labelled so in
every row it produces (``proposer='felzenszwalb-cpu'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from synthvg import masks
from synthvg.schemas import RLE, Box
from synthvg.schemas.config import FelzenszwalbConfig


@dataclass(frozen=True)
class Proposal:
    mask: RLE
    bbox: Box
    area: float
    score: float | None = None


@dataclass(frozen=True)
class ImageItem:
    """One image handed to a proposer; ``rgb`` is None for proposers that need no pixels."""

    image_id: str
    file_uri: str
    width: int
    height: int
    rgb: np.ndarray | None = None

    def pixels(self) -> np.ndarray:
        """The decoded image, for proposers that read pixels (the stage decodes it for them)."""
        if self.rgb is None:
            raise ValueError(f"image {self.image_id} was handed over without its pixels")
        return self.rgb


class MaskProposer(Protocol):
    #: Written to every proposal row (labelled honestly: 'felzenszwalb-cpu' is not SAM).
    name: str
    #: Images the stage hands over at once (a GPU proposer batches them).
    batch_size: int
    #: False for proposers that read their masks from files rather than from pixels.
    needs_pixels: bool
    #: The longest side a proposer looks at (None: the full image). Larger images are handed
    #: over downscaled, to at least this side; masks still come back at the image's size.
    max_input_side: int | None

    def propose_batch(self, items: list[ImageItem]) -> list[list[Proposal]]:
        """Candidate masks for each image (at its own size), largest first. Raises
        :class:`~synthvg.models.errors.ImageError` for an image it cannot use (the stage then retries one by one)."""
        ...


def to_proposals(rles: list[RLE], scores: list[float | None], limit: int) -> list[Proposal]:
    """Proposals from masks, largest first, at most ``limit``; empty masks are dropped."""
    out = [
        Proposal(mask=r, bbox=masks.bbox(r), area=masks.area(r), score=s)
        for r, s in zip(rles, scores, strict=True)
    ]
    out = [p for p in out if p.area > 0]
    out.sort(key=lambda p: -p.area)
    return out[:limit]


class FelzenszwalbProposer:
    """Graph-based segmentation (Felzenszwalb & Huttenlocher 2004) as mask proposals."""

    name = "felzenszwalb-cpu"
    batch_size = 1
    needs_pixels = True

    def __init__(self, config: FelzenszwalbConfig):
        self.config = config
        self.max_input_side = config.max_side

    def propose_batch(self, items: list[ImageItem]) -> list[list[Proposal]]:
        return [self.propose(item.pixels(), (item.height, item.width)) for item in items]

    def propose(self, rgb: np.ndarray, size: tuple[int, int] | None = None) -> list[Proposal]:
        """Proposals at ``size`` (height, width; default: the rgb's own), which ``rgb`` may be a
        downscaled copy of."""
        from skimage.segmentation import felzenszwalb

        h, w = size or rgb.shape[:2]
        rh, rw = rgb.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        work = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = rgb
        if work != (rw, rh):
            from PIL import Image

            small = np.asarray(Image.fromarray(rgb).resize(work, Image.Resampling.BILINEAR))
        labels = felzenszwalb(
            small, scale=self.config.scale, sigma=self.config.sigma, min_size=self.config.min_size
        )
        labels = labels.astype(np.int32 if labels.max() >= 1 << 15 else np.int16)
        if labels.shape != (h, w):
            # nearest-neighbour upsampling back to full resolution, built transposed so that
            # the column-major walk below reads it without another full-size copy
            rows = np.minimum(
                (np.arange(h) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1
            )
            cols = np.minimum(
                (np.arange(w) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1
            )
            labels = labels.T[cols[:, None], rows[None, :]].T
        rles = list(masks.label_map_to_rles(labels).values())
        return to_proposals(rles, [None] * len(rles), self.config.max_proposals)
