"""Proposals made elsewhere, read from one JSON file per image.

This is how Semantic-SAM, SAM 2 or any segmenter run on another machine plugs in: save what
its automatic mask generator returns (``output_mode="coco_rle"``) as JSON, one file per image.
A file holds a list of mask records, or an object with an ``annotations`` list (SA-1B's
layout). Each record needs ``segmentation`` (COCO RLE, compressed or not, or polygons) at the
image's size; ``predicted_iou`` or ``score`` becomes the proposal's score.
"""

from __future__ import annotations

import json
import os
import posixpath

from synthvg import masks
from synthvg.models.errors import ImageError, ModelLoadError
from synthvg.models.proposers import ImageItem, Proposal, to_proposals
from synthvg.schemas.config import PrecomputedConfig

KEY = "regions.precomputed"


def proposal_file(config: PrecomputedConfig, item: ImageItem) -> str:
    """The file holding ``item``'s proposals, from ``pattern``."""
    file_name = posixpath.basename(item.file_uri)
    name = config.pattern.format(
        stem=os.path.splitext(file_name)[0],
        file_name=file_name,
        image_id=item.image_id.replace(":", "_"),
        native_id=item.image_id.split(":", 1)[-1],
    )
    return os.path.join(config.path, name)


class PrecomputedProposer:
    """Reads proposals instead of computing them; needs no pixels."""

    batch_size = 64
    needs_pixels = False
    max_input_side = None

    def __init__(self, config: PrecomputedConfig):
        if not os.path.isdir(config.path):
            raise ModelLoadError(f"{KEY}.path: folder not found: {config.path}")
        try:
            config.pattern.format(stem="", file_name="", image_id="", native_id="")
        except (KeyError, IndexError, ValueError) as e:
            raise ModelLoadError(
                f"{KEY}.pattern: {config.pattern!r} is not a valid pattern: {e}"
            ) from None
        self.config = config
        self.name = f"precomputed/{config.name}"

    def propose_batch(self, items: list[ImageItem]) -> list[list[Proposal]]:
        return [self.read(item) for item in items]

    def read(self, item: ImageItem) -> list[Proposal]:
        path = proposal_file(self.config, item)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ImageError("no_proposals", f"no precomputed proposals file {path}") from None
        except (OSError, ValueError) as e:
            raise ImageError("bad_proposals", f"cannot read {path} as JSON: {e}") from None
        records = data.get("annotations") if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise ImageError(
                "bad_proposals", f"{path}: expected a list of masks or an object with 'annotations'"
            )
        rles, scores = [], []
        for i, rec in enumerate(records):
            try:
                rles.append(masks.segmentation_to_rle(rec["segmentation"], item.height, item.width))
            except (KeyError, TypeError, ValueError) as e:
                raise ImageError(
                    "bad_proposals",
                    f"{path}: mask {i} is unusable at {item.width}x{item.height}: {e}",
                ) from None
            score = rec.get("predicted_iou", rec.get("score"))
            scores.append(float(score) if isinstance(score, int | float) else None)
        return to_proposals(rles, scores, self.config.max_proposals)
