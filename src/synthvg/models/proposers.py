"""Mask proposers: anything that turns an RGB image into candidate masks.

The regions stage only sees :class:`MaskProposer`; SAM, Semantic-SAM or precomputed files plug
in behind the same interface. The default here needs no weights: scikit-image's graph-based
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


class MaskProposer(Protocol):
    name: str

    def propose(self, rgb: np.ndarray) -> list[Proposal]:
        """Candidate masks for one HxWx3 uint8 image, largest first."""
        ...


class FelzenszwalbProposer:
    """Graph-based segmentation (Felzenszwalb & Huttenlocher 2004) as mask proposals."""

    name = "felzenszwalb-cpu"

    def __init__(self, config: FelzenszwalbConfig):
        self.config = config

    def propose(self, rgb: np.ndarray) -> list[Proposal]:
        from skimage.segmentation import felzenszwalb

        h, w = rgb.shape[:2]
        scale = min(1.0, self.config.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            from PIL import Image

            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        labels = felzenszwalb(small, scale=self.config.scale, sigma=self.config.sigma, min_size=self.config.min_size)
        if labels.shape != (h, w):
            # nearest-neighbour upsampling back to full resolution
            rows = np.minimum((np.arange(h) * labels.shape[0] / h).astype(np.int64), labels.shape[0] - 1)
            cols = np.minimum((np.arange(w) * labels.shape[1] / w).astype(np.int64), labels.shape[1] - 1)
            labels = labels[rows[:, None], cols[None, :]]
        rles = masks.label_map_to_rles(labels)
        proposals = [Proposal(mask=r, bbox=masks.bbox(r), area=masks.area(r)) for r in rles.values()]
        proposals.sort(key=lambda p: -p.area)
        return proposals[: self.config.max_proposals]
