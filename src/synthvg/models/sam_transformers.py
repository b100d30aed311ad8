"""SAM and SAM 2 from a local transformers model directory, batched for GPUs.

The package's generator encodes one image and decodes its point grid; here a batch of images
is encoded in one call and every chunk of grid points is decoded for all of them at once. The
filters are the generator's (predicted IoU, stability, box NMS, small-region clean-up), done
at a working resolution of at most ``max_side``; masks are mapped back to the image's size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from synthvg import masks
from synthvg.models import amg
from synthvg.models.errors import ModelLoadError
from synthvg.models.hf_dir import load_pretrained, model_type_of
from synthvg.models.proposers import ImageItem, Proposal
from synthvg.models.runtime import AdaptiveBatcher, resolve_device, resolve_dtype
from synthvg.schemas.config import AMGParams, TransformersSamConfig

KEY = "regions.transformers_sam"


def _classes(model_type: str, path: str):
    import transformers

    names = {"sam": ("SamModel", "SamImageProcessor"), "sam2": ("Sam2Model", "Sam2ImageProcessor")}
    if model_type not in names:
        raise ModelLoadError(
            f"{KEY}.path: {path} holds a {model_type!r} model, not SAM ('sam') or SAM 2 ('sam2')"
        )
    model_name, processor_name = names[model_type]
    if not hasattr(transformers, model_name):
        raise ModelLoadError(
            f"{KEY}.path: {path} is SAM 2, which transformers {transformers.__version__} lacks"
        )
    return getattr(transformers, model_name), getattr(transformers, processor_name)


def stability_score(logits: torch.Tensor, offset: float) -> torch.Tensor:
    """IoU of each mask thresholded at +offset and at -offset: how little the cut-off matters."""
    inner = (logits > offset).sum(dim=(-1, -2), dtype=torch.int64)
    outer = (logits > -offset).sum(dim=(-1, -2), dtype=torch.int64)
    return inner / outer.clamp(min=1)


class TransformersSamProposer:
    """A batch of images: one encoder call, then the point grid in chunks for all of them."""

    needs_pixels = True
    max_input_side = None

    def __init__(self, config: TransformersSamConfig):
        self.config = config
        self.batch_size = config.batch_size
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.model_type = model_type_of(config.path, f"{KEY}.path")
        model_cls, processor_cls = _classes(self.model_type, config.path)
        self.model = load_pretrained(model_cls, config.path, f"{KEY}.path", self.dtype, self.device)
        self.frame = int(self.model.config.prompt_encoder_config.image_size)
        if os.path.isfile(os.path.join(config.path, "preprocessor_config.json")):
            self.processor = processor_cls.from_pretrained(config.path)
        elif self.model_type == "sam":
            self.processor = processor_cls(
                size={"longest_edge": self.frame},
                pad_size={"height": self.frame, "width": self.frame},
            )
        else:
            self.processor = processor_cls(size={"height": self.frame, "width": self.frame})
        self.name = f"transformers-{self.model_type}/{os.path.basename(os.path.normpath(config.path))}/{config.mode}"
        self.batcher = AdaptiveBatcher(config.batch_size)
        self._lock = threading.Lock()  # one batch on the device at a time

    def propose_batch(self, items: list[ImageItem]) -> list[list[Proposal]]:
        with self._lock, torch.inference_mode():
            return self.batcher.run(self._propose, items)

    def _propose(self, items: Sequence[ImageItem]) -> list[list[Proposal]]:
        embeddings, frames = self.encode([item.pixels() for item in items])
        sizes = [item.pixels().shape[:2] for item in items]
        works = [amg.work_size(h, w, self.config.max_side) for h, w in sizes]
        sets = {
            name: self.decode_grid(embeddings, frames, works, params)
            for name, params in self.config.generators().items()
        }
        return [
            amg.finish({n: s[b] for n, s in sets.items()}, self.config, h, w)
            for b, (h, w) in enumerate(sizes)
        ]

    def encode(
        self, rgbs: list[np.ndarray]
    ) -> tuple[torch.Tensor | list[torch.Tensor], list[tuple[int, int]]]:
        """Image embeddings of a batch (SAM 2: one tensor per feature level) and the size each
        image occupies in the model's input frame."""
        inputs = self.processor(images=rgbs, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        embeddings = self.model.get_image_embeddings(pixels)
        reshaped = inputs.get("reshaped_input_sizes")
        frames = (
            [(int(h), int(w)) for h, w in reshaped]
            if reshaped is not None
            else [(self.frame, self.frame)] * len(rgbs)
        )
        return embeddings, frames

    def decode(self, embeddings, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (B x P x 3 x h x w) and predicted IoUs (B x P x 3) for one
        foreground point per prompt; ``points`` is B x P x 2 in input-frame pixels."""
        labels = torch.ones(points.shape[:2] + (1,), dtype=torch.long, device=self.device)
        out = self.model(
            image_embeddings=embeddings,
            input_points=points[:, :, None, :].to(self.device),
            input_labels=labels,
            multimask_output=True,
        )
        return out.pred_masks.float(), out.iou_scores.float()

    def decode_grid(self, embeddings, frames, works, params: AMGParams) -> list[list[Proposal]]:
        """The generator's point grid over every image of the batch, filtered as it does."""
        grid = torch.as_tensor(amg.point_grid(params.points_per_side), dtype=torch.float32)
        scale = torch.tensor([[w, h] for h, w in frames], dtype=torch.float32)
        points = grid[None] * scale[:, None, :]
        found: list[list[Proposal]] = [[] for _ in frames]
        for start in range(0, points.shape[1], params.points_per_batch):
            logits, iou = self.decode(
                embeddings, points[:, start : start + params.points_per_batch]
            )
            if params.multimask_output is not None:
                k = slice(params.multimask_output, params.multimask_output + 1)
                logits, iou = logits[:, :, k], iou[:, :, k]
            for b, (frame, work) in enumerate(zip(frames, works, strict=True)):
                found[b].extend(
                    self._filter(logits[b].flatten(0, 1), iou[b].flatten(), frame, work, params)
                )
        out = []
        for props in found:
            boxes = np.array([[p.bbox.x1, p.bbox.y1, p.bbox.x2, p.bbox.y2] for p in props]).reshape(
                -1, 4
            )
            keep = masks.nms(boxes, np.array([p.score for p in props]), params.box_nms_thresh)
            props = [props[i] for i in keep]
            nms = max(params.box_nms_thresh, params.crop_nms_thresh)
            out.append(amg.clean_small_regions(props, params.min_mask_region_area, nms))
        return out

    def _filter(self, logits, scores, frame, work, params: AMGParams) -> list[Proposal]:
        if params.pred_iou_thresh > 0:
            keep = scores > params.pred_iou_thresh
            logits, scores = logits[keep], scores[keep]
        if not len(scores):
            return []
        up = F.interpolate(
            logits[:, None], (self.frame, self.frame), mode="bilinear", align_corners=False
        )
        up = up[:, :, : frame[0], : frame[1]]
        up = F.interpolate(up, work, mode="bilinear", align_corners=False)[:, 0]
        if params.stability_score_thresh > 0:
            keep = (
                stability_score(up, params.stability_score_offset) >= params.stability_score_thresh
            )
            up, scores = up[keep], scores[keep]
        binary = (up > 0).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        rles = (
            [masks.from_coco(r) for r in mask_utils.encode(np.asfortranarray(binary))]
            if len(scores)
            else []
        )
        return [
            Proposal(r, masks.bbox(r), masks.area(r), float(s))
            for r, s in zip(rles, scores.tolist(), strict=True)
            if masks.area(r) > 0
        ]
