"""The ``segment-anything`` package's SamAutomaticMaskGenerator as a mask proposer.

This is the official per-image path: the generator encodes one image, decodes its point grid
in chunks and filters the masks. Two things are added around it, both through the package's
public classes: the whole and part generators of ``mode: whole+part`` share one predictor that
encodes each image once, and that predictor can keep a single one of SAM's three masks per
point (``multimask_output``), which the demo's presets need.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import partial

import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from synthvg import masks
from synthvg.models import amg
from synthvg.models.errors import ModelLoadError
from synthvg.models.proposers import ImageItem, Proposal
from synthvg.models.runtime import autocast, resolve_device, resolve_dtype
from synthvg.schemas.config import AMGParams, SamEncoderSpec, SegmentAnythingConfig

KEY = "regions.segment_anything"
_WIDTHS = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768}


class SharedPredictor(SamPredictor):
    """A predictor every generator of one image shares: the image is encoded once (in reduced
    precision on GPU), and ``output`` keeps one of SAM's three masks per point (None: all)."""

    def __init__(self, model: Sam, dtype: torch.dtype):
        super().__init__(model)
        self.dtype = dtype
        self.output: int | None = None
        self._memo: dict[tuple, tuple] = {}

    def forget(self) -> None:
        """Drop the embeddings kept for the last image."""
        self._memo.clear()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
        if key in self._memo:
            self.original_size, self.input_size, self.features = self._memo[key]
            self.is_image_set = True
            return
        super().set_image(image, image_format)
        self._memo[key] = (self.original_size, self.input_size, self.features)

    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        with autocast(self.device, self.dtype):
            super().set_torch_image(transformed_image, original_image_size)
        self.features = self.features.float()  # the mask decoder and filters stay in float32

    def predict_torch(self, *args, **kwargs):
        masks_, iou, low_res = super().predict_torch(*args, **kwargs)
        if self.output is None:
            return masks_, iou, low_res
        k = slice(self.output, self.output + 1)
        return masks_[:, k], iou[:, k], low_res[:, k]


def load_sam(config: SegmentAnythingConfig, device: torch.device) -> Sam:
    """Build the architecture ``model_type`` names and load the checkpoint into it strictly."""
    path = config.checkpoint
    if os.path.isdir(path):
        raise ModelLoadError(
            f"{KEY}.checkpoint: {path} is a folder; a transformers model directory goes under regions.transformers_sam.path"
        )
    if not os.path.isfile(path):
        raise ModelLoadError(f"{KEY}.checkpoint: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise ModelLoadError(
            f"{KEY}.checkpoint: cannot read {path} as a torch checkpoint: {e}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{KEY}.checkpoint: {path} does not hold a SAM state dict")
    width = config.encoder.embed_dim if config.encoder else _WIDTHS[config.model_type]
    pos = state.get("image_encoder.pos_embed")
    if pos is None or int(pos.shape[-1]) != width:  # found before building a ViT-H for nothing
        raise ModelLoadError(
            f"{KEY}.checkpoint: {path} does not match model_type {config.model_type!r}{_guess(state)}"
        )
    sam = (
        build_custom(config.encoder)
        if config.encoder
        else sam_model_registry[config.model_type](checkpoint=None)
    )
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{KEY}.checkpoint: {path} does not match model_type {config.model_type!r}{_guess(state)}: "
            + str(e).splitlines()[0]
        ) from None
    return sam.to(device).eval()


def build_custom(spec: SamEncoderSpec) -> Sam:
    """SAM with an encoder of another size (the registry's builders fix vit_h/l/b at 1024 px);
    prompt encoder and mask decoder are SAM's own."""
    prompt_dim, patch = 256, 16
    grid = spec.img_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=spec.img_size,
            patch_size=patch,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.num_heads,
            mlp_ratio=4,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=14,
            global_attn_indexes=tuple(spec.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(spec.img_size, spec.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8
            ),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def _guess(state: dict) -> str:
    pos = state.get("image_encoder.pos_embed")
    if pos is None:
        return " (it has no SAM image encoder)"
    guess = {w: t for t, w in _WIDTHS.items()}.get(int(pos.shape[-1]))
    return (
        f" (its encoder looks like {guess})"
        if guess
        else f" (its encoder width is {int(pos.shape[-1])})"
    )


def _generator(
    sam: Sam, params: AMGParams, predictor: SharedPredictor
) -> SamAutomaticMaskGenerator:
    kwargs = params.model_dump(exclude={"multimask_output"})
    try:
        gen = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **kwargs)
    except ImportError as e:  # min_mask_region_area > 0 imports OpenCV
        raise ModelLoadError(
            f"{KEY}: min_mask_region_area > 0 needs OpenCV (pip install opencv-python-headless): {e}"
        ) from None
    gen.predictor = predictor
    return gen


class SegmentAnythingProposer:
    """SamAutomaticMaskGenerator from a local checkpoint; one image at a time, as the package
    does. Images larger than ``max_side`` are downscaled for it and the masks mapped back."""

    batch_size = 1
    needs_pixels = True
    max_input_side = None

    def __init__(self, config: SegmentAnythingConfig):
        self.config = config
        self.device = resolve_device(config.device)
        sam = load_sam(config, self.device)
        self.predictor = SharedPredictor(sam, resolve_dtype(config.dtype, self.device))
        self.generators = {
            n: (p, _generator(sam, p, self.predictor)) for n, p in config.generators().items()
        }
        self.name = f"segment-anything/{config.model_type}/{config.mode}"
        self._lock = threading.Lock()  # the predictor holds one image's state; one GPU anyway

    def propose_batch(self, items: list[ImageItem]) -> list[list[Proposal]]:
        return [self._propose(item) for item in items]

    def _propose(self, item: ImageItem) -> list[Proposal]:
        pixels = item.pixels()
        h, w = pixels.shape[:2]
        wh, ww = amg.work_size(h, w, self.config.max_side)
        rgb = (
            pixels
            if (wh, ww) == (h, w)
            else np.asarray(Image.fromarray(pixels).resize((ww, wh), Image.Resampling.BILINEAR))
        )
        sets = {}
        with self._lock, torch.inference_mode():
            for name, (params, gen) in self.generators.items():
                self.predictor.output = params.multimask_output
                records = gen.generate(rgb)
                rles = [masks.from_coco(r["segmentation"]) for r in records]
                sets[name] = [
                    Proposal(r, masks.bbox(r), float(rec["area"]), float(rec["predicted_iou"]))
                    for r, rec in zip(rles, records, strict=True)
                ]
            self.predictor.forget()
        return amg.finish(sets, self.config, h, w)
