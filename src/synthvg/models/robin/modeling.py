"""Robin's modules under the released checkpoint's names.

``RobinForCausalLM`` is transformers' ``Qwen2ForCausalLM`` with three additions, placed where
the release's state dict puts them, so its keys load one-to-one:

- ``model.vision_tower.vision_tower.visual.trunk``: open_clip's ``convnext_large_d_320``
  visual trunk (a timm ConvNeXt; open_clip's unused projection head is not built);
- ``model.mm_projector``: image features (res4, 768 ch) -> LM hidden size;
- ``mask_extractor``: per region, a mask feature (masked average of the four ConvNeXt stage
  maps, one Linear per level, summed, then ``feat_linear``) and a position feature (the raw
  mask at 112x112 through an MLP).

The language model's forward pass is transformers' own; Robin's work is building the input
embeddings: :meth:`RobinForCausalLM.encode` (image tokens and region features) and
:meth:`RobinForCausalLM.splice` (those spliced into the text embeddings). Both are plain,
differentiable torch, shared by generation (:mod:`synthvg.models.robin.inference`, which runs
them under inference mode) and training (:meth:`RobinForCausalLM.forward` with
``pixel_values``/``region_masks``/``labels``).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

#: open_clip convnext_large_d_320 / timm convnext_large.
CONVNEXT_LARGE_DEPTHS = (3, 3, 27, 3)
CONVNEXT_LARGE_DIMS = (192, 384, 768, 1536)
#: The image tokens are the res4 map (ConvNeXt stage 2): 32x32 = 1024 tokens at 512 px.
IMAGE_FEATURE_STAGE = 2
#: Parameters that run in the vision dtype (fp16 in the release): tower, projector, extractor.
VISION_KEYS = ("model.vision_tower.", "model.mm_projector.", "mask_extractor.")


#: (image tokens [T, hidden], mask features [N, hidden], pos features [N, hidden]) of one image.
Encoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class RobinConfig(Qwen2Config):
    """A Qwen2 config carrying Robin's multimodal fields.

    ``mm_projector_type``, ``mm_hidden_size``, ``image_aspect_ratio`` and
    ``tokenizer_model_max_length`` are the release's (LLaVA/Osprey) names. The ``vision_*``,
    ``mask_*`` and ``pos_size`` fields are synthvg's: the release fixes them in code, so
    their defaults are the release's values and only tiny test models set them.
    """

    model_type = "robin_qwen"

    def __init__(
        self,
        mm_projector_type: str = "mlp2x_gelu",
        mm_hidden_size: int = CONVNEXT_LARGE_DIMS[IMAGE_FEATURE_STAGE],
        image_aspect_ratio: str = "pad",
        tokenizer_model_max_length: int = 2048,
        vision_depths: tuple[int, ...] | list[int] = CONVNEXT_LARGE_DEPTHS,
        vision_dims: tuple[int, ...] | list[int] = CONVNEXT_LARGE_DIMS,
        vision_image_size: int = 512,
        mask_dim: int = 1024,
        pos_size: int = 112,
        image_token_id: int | None = None,
        mask_token_id: int | None = None,
        pos_token_id: int | None = None,
        **kwargs,
    ):
        self.mm_projector_type = mm_projector_type
        self.mm_hidden_size = mm_hidden_size
        self.image_aspect_ratio = image_aspect_ratio
        self.tokenizer_model_max_length = tokenizer_model_max_length
        self.vision_depths = list(vision_depths)
        self.vision_dims = list(vision_dims)
        self.vision_image_size = vision_image_size
        self.mask_dim = mask_dim
        self.pos_size = pos_size
        # The tokenizer's ids of <image>/<mask>/<pos>; the release's config lacks them, so the
        # loader fills them from the checkpoint's tokenizer.
        self.image_token_id, self.mask_token_id, self.pos_token_id = (
            image_token_id,
            mask_token_id,
            pos_token_id,
        )
        super().__init__(**kwargs)

    @property
    def image_tokens(self) -> int:
        """Image embeddings one ``<image>`` token becomes (res4 grid, stride 16)."""
        return (self.vision_image_size // 16) ** 2


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA's projector family: ``linear`` or ``mlp{N}x_gelu`` (Sequential, GELU between)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if m := re.fullmatch(r"mlp(\d+)x_gelu", kind):
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(int(m.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown mm_projector_type {kind!r} (expected linear or mlpNx_gelu)")


class ConvNeXtVisual(nn.Module):
    """open_clip's TimmModel layout: the ConvNeXt under ``trunk``; the head is never run."""

    def __init__(self, depths, dims):
        super().__init__()
        import timm

        self.trunk = timm.create_model(
            "convnext_large",
            pretrained=False,
            num_classes=0,
            global_pool="",
            depths=tuple(depths),
            dims=tuple(dims),
            drop_path_rate=0.0,
        )

    def stage_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The four stage maps (res2..res5), strides 4, 8, 16, 32."""
        x = self.trunk.stem(pixels)
        feats = []
        for stage in self.trunk.stages:
            x = stage(x)
            feats.append(x)
        return feats


class _CLIPVisual(nn.Module):
    def __init__(self, config: RobinConfig):
        super().__init__()
        self.visual = ConvNeXtVisual(config.vision_depths, config.vision_dims)


class RobinVisionTower(nn.Module):
    """``model.vision_tower.vision_tower.visual``: the release wraps the open_clip model twice."""

    def __init__(self, config: RobinConfig):
        super().__init__()
        self.vision_tower = _CLIPVisual(config)

    def forward(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        return self.vision_tower.visual.stage_features(pixels)


class _PosMLP(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskExtractor(nn.Module):
    """Per-region mask and position features from one image's stage maps and masks."""

    def __init__(self, config: RobinConfig):
        super().__init__()
        for level, dim in zip(("res2", "res3", "res4", "res5"), config.vision_dims, strict=True):
            setattr(self, level, nn.Linear(dim, config.mask_dim))
        self.feat_linear = nn.Linear(config.mask_dim, config.hidden_size)
        self.mask_linear = _PosMLP(
            [config.pos_size**2, config.mask_dim, config.mask_dim, config.hidden_size]
        )
        self.pos_size = config.pos_size

    def forward(
        self, feats: list[torch.Tensor], masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats``: the four [C, h, w] maps of one image; ``masks``: [N, H, W] at the image's
        original size (not padded, as in training). Returns ([N, hidden], [N, hidden])."""
        masks = masks.to(feats[0].dtype)[:, None]
        total = None
        for level, feat in zip(("res2", "res3", "res4", "res5"), feats, strict=True):
            inside = (
                F.interpolate(masks, size=feat.shape[-2:], mode="bilinear", align_corners=False) > 0
            ).to(feat.dtype)[:, 0]
            pooled = torch.einsum("nhw,chw->nc", inside, feat) / (
                inside.sum(dim=(1, 2))[:, None] + 1e-8
            )
            projected = getattr(self, level)(pooled)
            total = projected if total is None else total + projected
        mask_feats = self.feat_linear(total)
        pos = F.interpolate(
            masks, size=(self.pos_size, self.pos_size), mode="bilinear", align_corners=False
        ).flatten(1)
        return mask_feats, self.mask_linear(pos)


class RobinForCausalLM(Qwen2ForCausalLM):
    config_class = RobinConfig

    def __init__(self, config: RobinConfig):
        super().__init__(config)
        self.model.vision_tower = RobinVisionTower(config)
        self.model.mm_projector = build_projector(
            config.mm_projector_type, config.mm_hidden_size, config.hidden_size
        )
        self.mask_extractor = MaskExtractor(config)

    def encode_images(self, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Stage maps and projected image tokens ([B, T, hidden]) for a batch of images."""
        feats = self.model.vision_tower(pixels)
        tokens = feats[IMAGE_FEATURE_STAGE].flatten(2).transpose(1, 2)
        return feats, self.model.mm_projector(tokens)

    def encode(self, pixels: torch.Tensor, masks: list[torch.Tensor | None]) -> list[Encoded]:
        """Per image of the batch: (image tokens [T, hidden], mask features [N, hidden], pos
        features [N, hidden]); ``masks[j]`` is image j's [N, H, W] masks (None or N = 0: none)."""
        feats, tokens = self.encode_images(pixels)
        out = []
        for j, m in enumerate(masks):
            if m is not None and m.shape[0]:
                mask_feats, pos_feats = self.mask_extractor([f[j] for f in feats], m)
            else:
                mask_feats = pos_feats = tokens.new_zeros((0, tokens.shape[-1]))
            out.append((tokens[j], mask_feats, pos_feats))
        return out

    def splice(
        self,
        ids: torch.Tensor,
        encoded: Encoded | None,
        regions: list[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One row's input embeddings [L', hidden]: the text embeddings of ``ids`` ([L]) with the
        k-th ``<mask>``/``<pos>`` replaced by region ``regions[k]``'s features (default: region k)
        and ``<image>`` expanded to the image tokens. Differentiable in every input."""
        emb = self.get_input_embeddings()(ids)
        if encoded is None:
            return emb
        image_tokens, mask_feats, pos_feats = (t.to(emb.dtype) for t in encoded)
        is_mask, is_pos = ids == self.config.mask_token_id, ids == self.config.pos_token_id
        n = int(is_mask.sum())
        index = torch.as_tensor(
            regions if regions is not None else list(range(n)), device=ids.device, dtype=torch.long
        )
        emb = emb.clone()  # the replacements are index_put on a copy: autograd flows to both sides
        emb[is_mask] = mask_feats[index]
        emb[is_pos] = pos_feats[index]
        at = (ids == self.config.image_token_id).nonzero()
        if not len(at):
            return emb
        at = int(at[0, 0])
        return torch.cat([emb[:at], image_tokens, emb[at + 1 :]])

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        labels=None,
        pixel_values=None,
        region_masks=None,
        has_image=None,
        **kwargs,
    ):
        """Qwen2's forward; with ``pixel_values`` ([B, 3, S, S]) the rows of ``input_ids`` (right
        padded, ``attention_mask`` 1 on real tokens) get the image and region features spliced
        in (``region_masks``: per row [N, H, W] or None; ``has_image``: rows that have an image,
        default all), and ``labels`` are widened to match (-100 on the image tokens)."""
        if pixel_values is None:
            return super().forward(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )
        rows = input_ids.shape[0]
        with_image = [bool(x) for x in has_image] if has_image is not None else [True] * rows
        picked = [j for j in range(rows) if with_image[j]]
        encoded: list[Encoded | None] = [None] * rows
        if picked:
            vision_dtype = next(self.model.mm_projector.parameters()).dtype
            masks = [region_masks[j] if region_masks is not None else None for j in picked]
            for j, e in zip(
                picked, self.encode(pixel_values[picked].to(vision_dtype), masks), strict=True
            ):
                encoded[j] = e
        lengths = (
            attention_mask.sum(1).tolist()
            if attention_mask is not None
            else [input_ids.shape[1]] * rows
        )
        embeds, row_labels = [], []
        for j in range(rows):
            ids = input_ids[j, : lengths[j]]
            e = self.splice(ids, encoded[j])
            embeds.append(e)
            if labels is not None:
                lab = labels[j, : lengths[j]]
                if (
                    encoded[j] is not None
                    and (at := (ids == self.config.image_token_id).nonzero()).numel()
                ):
                    at = int(at[0, 0])
                    fill = lab.new_full((encoded[j][0].shape[0],), -100)
                    lab = torch.cat([lab[:at], fill, lab[at + 1 :]])
                row_labels.append(lab)
        width = max(e.shape[0] for e in embeds)
        batch = embeds[0].new_zeros((rows, width, embeds[0].shape[1]))
        attention = torch.zeros((rows, width), dtype=torch.long, device=input_ids.device)
        wide_labels = torch.full((rows, width), -100, dtype=torch.long, device=input_ids.device)
        for j, e in enumerate(embeds):  # right padding, as training pads
            batch[j, : e.shape[0]] = e
            attention[j, : e.shape[0]] = 1
            if labels is not None:
                wide_labels[j, : e.shape[0]] = row_labels[j]
        return super().forward(
            inputs_embeds=batch,
            attention_mask=attention,
            labels=wide_labels if labels is not None else None,
            **kwargs,
        )
