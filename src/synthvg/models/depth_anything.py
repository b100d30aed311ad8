"""Depth-Anything (v1 and v2, relative or metric) from a local transformers model directory.

Its relative output is inverse depth (larger = nearer). Each map is scaled to [0, 1] within
its image, so 1 is the nearest point and 0 the farthest; metric models (larger = farther) are
flipped to the same convention. Images are batched when the processor gives them the same
input size (it keeps aspect ratios, so a batch is cut into groups of equal shape).
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from synthvg.models.errors import ModelLoadError
from synthvg.models.hf_dir import load_pretrained, model_type_of
from synthvg.models.runtime import AdaptiveBatcher, resolve_device, resolve_dtype
from synthvg.schemas.config import DepthAnythingConfig

KEY = "depth.path"


def _default_processor():
    """Depth-Anything's published preprocessing, for directories that do not ship one."""
    from transformers import DPTImageProcessor

    return DPTImageProcessor(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def normalise(depth: torch.Tensor, metric: bool) -> torch.Tensor:
    """Scale to [0, 1] within the image, larger = nearer (a flat map becomes all zeros)."""
    lo, hi = depth.min(), depth.max()
    scaled = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
    return 1.0 - scaled if metric else scaled


class DepthAnything:
    """Loads once per worker; :meth:`predict` turns RGB images into normalised depth maps."""

    def __init__(self, config: DepthAnythingConfig):
        from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        model_type = model_type_of(config.path, KEY)
        if model_type != "depth_anything":
            raise ModelLoadError(
                f"{KEY}: {config.path} holds a {model_type!r} model, not Depth-Anything ('depth_anything')"
            )
        self.model = load_pretrained(
            DepthAnythingForDepthEstimation, config.path, KEY, self.dtype, self.device
        )
        self.metric = getattr(self.model.config, "depth_estimation_type", "relative") == "metric"
        if os.path.isfile(os.path.join(config.path, "preprocessor_config.json")):
            self.processor = AutoImageProcessor.from_pretrained(config.path)
        else:
            self.processor = _default_processor()
        self.name = f"depth-anything/{os.path.basename(os.path.normpath(config.path))}"
        self.batcher = AdaptiveBatcher(config.batch_size)
        self._lock = threading.Lock()  # one batch on the device at a time

    def predict(self, rgbs: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """One float32 map per image at the given (height, width), normalised as above."""
        pixels = [
            self.processor(images=rgb, return_tensors="pt")["pixel_values"][0] for rgb in rgbs
        ]
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(pixels):
            groups[tuple(p.shape)].append(i)
        out: dict[int, np.ndarray] = {}
        with self._lock, torch.inference_mode():
            for idx in groups.values():
                maps = self.batcher.run(
                    lambda chunk: self._forward(
                        [pixels[i] for i in chunk], [sizes[i] for i in chunk]
                    ),
                    idx,
                )
                for i, m in zip(idx, maps, strict=True):
                    out[i] = m
        return [out[i] for i in range(len(rgbs))]

    def raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """The model's own prediction (B x h x w, float32) for preprocessed pixels."""
        return self.model(pixel_values=pixels.to(self.device, self.dtype)).predicted_depth.float()

    def _forward(
        self, pixels: list[torch.Tensor], sizes: list[tuple[int, int]]
    ) -> list[np.ndarray]:
        predicted = self.raw(torch.stack(pixels))
        maps = []
        for depth, size in zip(predicted, sizes, strict=True):
            full = F.interpolate(depth[None, None], size, mode="bilinear", align_corners=False)[
                0, 0
            ]
            maps.append(normalise(full, self.metric).cpu().numpy().astype(np.float32))
        return maps
