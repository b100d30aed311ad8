"""LLaVA-SG: a LLaVA-1.5 model with the Scene Graph Expression (SGE) module.

Modules, under the names the state dict uses:

- ``vision_tower``: transformers' ``CLIPVisionModel`` (ViT-L/14 at 336 px at full size; a real
  CLIP vision checkpoint's ``vision_model.*`` keys are these keys under ``vision_tower.``);
  image features are the patch tokens of layer ``vision_feature_layer`` (LLaVA-1.5: -2, no CLS);
- ``projector``: W_v, LLaVA-1.5's two-layer GELU MLP, vision width -> LM width;
- ``sge``: the Scene Graph Expression module (:class:`SceneGraphExpression`): node features by
  bilinear sampling of the vision feature map at each entity mask's points, averaged; message
  passing among the nodes (a small transformer encoder); prompt activation (the nodes attend to
  the prompt's token embeddings);
- ``graph_projector``: W_g, nodes -> LM width;
- ``language_model``: any transformers causal LM (Llama/Vicuna or Qwen2 configs).

The LM input is ``[W_v F_v, <sg>, W_g G', <text>, F_t]``: the token ids hold ``<image><sg><text>``
and :meth:`LlavaSGForCausalLM.splice` widens ``<image>`` into the image tokens and puts the N
graph tokens after ``<sg>``. ``sge_mode`` gives the ablation rows: ``off`` (no graph tokens: LLaVA
itself, training stage 1), ``graph`` (node features only), ``message`` (+ message passing),
``prompt`` (+ prompt activation: the full module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
)

from synthvg.models.robin.modeling import build_projector

SGE_MODES = ("off", "graph", "message", "prompt")
#: Parameter groups by module prefix (the training package's groups; ``lm`` is the rest).
PARAMETER_GROUPS = {
    "vision": ("vision_tower.",),
    "projector": ("projector.",),
    "sge": ("sge.",),
    "graph_projector": ("graph_projector.",),
}


class LlavaSGConfig(PretrainedConfig):
    """``vision_config`` (a CLIPVisionConfig as a dict) and ``text_config`` (any causal LM's
    config as a dict, with its ``model_type``), plus LLaVA-1.5's and the SGE module's fields."""

    model_type = "llava_sg"

    def __init__(
        self,
        vision_config: dict | None = None,
        text_config: dict | None = None,
        projector_type: str = "mlp2x_gelu",
        graph_projector_type: str = "mlp2x_gelu",
        vision_feature_layer: int = -2,
        sge_mode: str = "prompt",
        sge_dim: int = 1024,
        sge_layers: int = 2,
        sge_heads: int = 8,
        sge_points: int = 256,
        image_token_id: int | None = None,
        sg_token_id: int | None = None,
        text_token_id: int | None = None,
        tokenizer_model_max_length: int = 2048,
        **kwargs,
    ):
        if sge_mode not in SGE_MODES:
            raise ValueError(f"sge_mode {sge_mode!r} is not one of {SGE_MODES}")
        self.vision_config = dict(vision_config or {})
        self.text_config = dict(text_config or {"model_type": "llama"})
        self.projector_type = projector_type
        self.graph_projector_type = graph_projector_type
        self.vision_feature_layer = vision_feature_layer
        self.sge_mode = sge_mode
        self.sge_dim, self.sge_layers, self.sge_heads, self.sge_points = (
            sge_dim,
            sge_layers,
            sge_heads,
            sge_points,
        )
        self.image_token_id, self.sg_token_id, self.text_token_id = (
            image_token_id,
            sg_token_id,
            text_token_id,
        )
        self.tokenizer_model_max_length = tokenizer_model_max_length
        super().__init__(**kwargs)

    def vision(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            **{k: v for k, v in self.vision_config.items() if k != "model_type"}
        )

    def text(self) -> PretrainedConfig:
        raw = dict(self.text_config)
        return AutoConfig.for_model(raw.pop("model_type"), **raw)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.get("image_size", 224))

    @property
    def image_tokens(self) -> int:
        """Image embeddings one ``<image>`` becomes (patch tokens, no CLS)."""
        return (self.image_size // int(self.vision_config.get("patch_size", 32))) ** 2


def mask_points(masks: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``limit`` points per mask of [N, H, W] masks, as (x, y) in [-1, 1] of the
    *padded square* the image was preprocessed into (centred, as ``preprocess_image`` pads):
    evenly strided over each mask's pixels (row-major), each at its pixel centre. Returns
    (points [N, P, 2], valid [N, P]); an empty mask has no valid point. One ``nonzero`` for
    all masks."""
    n, h, w = masks.shape
    hits = masks.reshape(n, h * w).nonzero()  # (mask, pixel), grouped by mask, pixels ascending
    counts = torch.bincount(hits[:, 0], minlength=n)  # (a bool sum is far slower on the CPU)
    width = max(1, min(limit, int(counts.max()) if n else 0))
    offsets = torch.cumsum(counts, 0) - counts
    k = torch.arange(width, device=masks.device)[None].float()
    c = counts[:, None].float()
    rank = torch.where(  # the k-th of ``width`` evenly spread ranks among a mask's c pixels
        c > width, (k * (c - 1) / max(width - 1, 1)).round(), k
    ).long()
    valid = k < c
    index = (offsets[:, None] + rank).clamp(max=max(len(hits) - 1, 0))
    pixel = hits[index.flatten(), 1].reshape(n, width) if len(hits) else index
    side = max(h, w)
    x = ((pixel % w).float() + 0.5 + (side - w) // 2) / side
    y = ((pixel // w).float() + 0.5 + (side - h) // 2) / side
    return torch.stack([x, y], dim=-1) * 2 - 1, valid


def node_features(feature_map: torch.Tensor, masks: torch.Tensor, limit: int) -> torch.Tensor:
    """[N, C]: per mask, the [C, h, w] map sampled bilinearly at the mask's points and averaged
    (an empty mask: zeros). One grid_sample call for all masks."""
    n, c = masks.shape[0], feature_map.shape[0]
    if n == 0:
        return feature_map.new_zeros((0, c))
    points, valid = mask_points(masks, limit)
    weight = valid.to(feature_map.dtype)
    sampled = F.grid_sample(
        feature_map[None],
        points[None].to(feature_map.dtype),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )[0]  # [C, N, P]
    total = torch.einsum("cnp,np->nc", sampled, weight)
    return total / weight.sum(1, keepdim=True).clamp(min=1)


class SceneGraphExpression(nn.Module):
    """Entity masks + a vision feature map + the prompt's embeddings -> N graph nodes [N, dim]."""

    def __init__(self, vision_dim: int, dim: int, lm_dim: int, layers: int, heads: int):
        super().__init__()
        self.node_in = nn.Linear(vision_dim, dim)
        self.node_norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.message = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.prompt_in = nn.Linear(lm_dim, dim)
        self.prompt_attention = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.prompt_norm = nn.LayerNorm(dim)

    def forward(
        self,
        feature_map: torch.Tensor,
        masks: torch.Tensor,
        prompt: torch.Tensor | None,
        mode: str,
        points: int,
    ) -> torch.Tensor:
        """``feature_map`` [C, h, w], ``masks`` [N, H, W] (bool, the image's own size),
        ``prompt`` [P, lm_dim] (the prompt's token embeddings) -> [N, dim]."""
        feats = node_features(feature_map, masks, points)
        nodes = self.node_norm(self.node_in(feats.to(self.node_in.weight.dtype)))
        if nodes.shape[0] == 0:
            return nodes
        if mode in ("message", "prompt"):
            nodes = self.message(nodes[None])[0]
        if mode == "prompt" and prompt is not None and prompt.shape[0]:
            text = self.prompt_in(prompt.to(nodes.dtype))[None]
            attended, _ = self.prompt_attention(nodes[None], text, text, need_weights=False)
            nodes = self.prompt_norm(nodes + attended[0])
        return nodes


#: Per image: (image tokens [T, lm], the vision feature map [C, h, w], entity masks [N, H, W]).
Encoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class LlavaSGForCausalLM(PreTrainedModel):
    config_class = LlavaSGConfig
    base_model_prefix = "llava_sg"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    PARAMETER_GROUPS = PARAMETER_GROUPS

    def __init__(self, config: LlavaSGConfig):
        super().__init__(config)
        vision, text = config.vision(), config.text()
        self.vision_tower = CLIPVisionModel(vision)
        self.projector = build_projector(
            config.projector_type, vision.hidden_size, text.hidden_size
        )
        self.sge = SceneGraphExpression(
            vision.hidden_size,
            config.sge_dim,
            text.hidden_size,
            config.sge_layers,
            config.sge_heads,
        )
        self.graph_projector = build_projector(
            config.graph_projector_type, config.sge_dim, text.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(text)

    # -- transformers plumbing ---------------------------------------------------------------

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def _init_weights(self, module):  # every submodule initialises itself when built
        pass

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.language_model.gradient_checkpointing_disable()

    def set_attn_implementation(self, name: str) -> None:  # type: ignore[override]  # the LM's only
        self.language_model.config._attn_implementation = name

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """The layout :func:`~synthvg.models.llava_sg.loader.load_llava_sg` reads (Trainer
        checkpoints call this too)."""
        from synthvg.models.llava_sg.loader import save_llava_sg

        save_llava_sg(self, str(save_directory), state_dict=state_dict)

    # -- the input embeddings ----------------------------------------------------------------

    def encode(self, pixels: torch.Tensor, masks: list[torch.Tensor | None]) -> list[Encoded]:
        """Per image of the batch: (image tokens [T, lm], feature map [C, h, w], masks)."""
        out = self.vision_tower(pixels.to(self.projector_dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.config.vision_feature_layer][:, 1:]  # no CLS
        side = int(round(hidden.shape[1] ** 0.5))
        fmap = hidden.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)
        tokens = self.projector(hidden)
        return [(tokens[j], fmap[j], masks[j]) for j in range(pixels.shape[0])]

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def graph_tokens(self, encoded: Encoded, prompt: torch.Tensor | None) -> torch.Tensor:
        """W_g G': [N, lm] (N = 0 when the SGE is off or there are no entities)."""
        _, fmap, masks = encoded
        width = self.get_input_embeddings().weight.shape[1]
        if self.config.sge_mode == "off" or masks is None or masks.shape[0] == 0:
            return fmap.new_zeros((0, width))
        nodes = self.sge(fmap, masks.bool(), prompt, self.config.sge_mode, self.config.sge_points)
        return self.graph_projector(nodes)

    def splice(
        self, ids: torch.Tensor, encoded: Encoded | None, prompt_end: int | None = None
    ) -> tuple[torch.Tensor, int, int]:
        """One row's input embeddings [L', lm], with ``<image>`` widened to the image tokens and
        the graph tokens after ``<sg>``; the prompt the nodes attend to is ``ids`` after
        ``<text>`` up to ``prompt_end`` (default: the end). Returns (embeddings, image tokens
        inserted, graph tokens inserted). Differentiable in every input."""
        emb = self.get_input_embeddings()(ids)
        if encoded is None:
            return emb, 0, 0
        image_tokens = encoded[0].to(emb.dtype)
        at_image = _first(ids, self.config.image_token_id)
        at_sg = _first(ids, self.config.sg_token_id)
        at_text = _first(ids, self.config.text_token_id)
        prompt = None
        if at_text is not None:
            prompt = emb[at_text + 1 : prompt_end if prompt_end is not None else len(ids)]
        graph = self.graph_tokens(encoded, prompt).to(emb.dtype) if at_sg is not None else emb[:0]
        pieces, cut = [], 0
        for at, insert, drop in sorted(
            [(at_image, image_tokens, True), (at_sg, graph, False)],
            key=lambda x: -1 if x[0] is None else x[0],
        ):
            if at is None:
                continue
            pieces += [emb[cut:at] if drop else emb[cut : at + 1], insert]
            cut = at + 1
        pieces.append(emb[cut:])
        return (
            torch.cat(pieces),
            image_tokens.shape[0] if at_image is not None else 0,
            graph.shape[0],
        )

    def embed_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        region_masks: list | None,
        has_image: list | torch.Tensor | None,
        encoded: list[Encoded | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Right-padded (embeddings, attention mask, labels widened with -100 on the image and
        graph tokens) for a right-padded batch of ids; ``encoded`` (per row, from
        :meth:`encode`) skips the vision tower, e.g. for rows that share one image."""
        rows = input_ids.shape[0]
        lengths = (
            attention_mask.sum(1).tolist()
            if attention_mask is not None
            else [input_ids.shape[1]] * rows
        )
        with_image = (
            [bool(x) for x in has_image]
            if has_image is not None
            else [pixel_values is not None] * rows
        )
        picked = [j for j in range(rows) if with_image[j]]
        if encoded is not None:
            picked = []
        else:
            encoded = [None] * rows
        if picked and pixel_values is not None:
            masks = [region_masks[j] if region_masks is not None else None for j in picked]
            for j, row in zip(picked, self.encode(pixel_values[picked], masks), strict=True):
                encoded[j] = row
        embeds, row_labels = [], []
        for j in range(rows):
            ids = input_ids[j, : lengths[j]]
            lab = labels[j, : lengths[j]] if labels is not None else None
            prompt_end = None
            if lab is not None and (answer := (lab != -100).nonzero()).numel():
                prompt_end = int(answer[0, 0])  # the nodes never see the answer
            e, n_image, n_graph = self.splice(ids, encoded[j], prompt_end)
            embeds.append(e)
            if lab is not None:
                row_labels.append(self._widen(ids, lab, n_image, n_graph))
        width = max(e.shape[0] for e in embeds)
        batch = embeds[0].new_zeros((rows, width, embeds[0].shape[1]))
        attention = torch.zeros((rows, width), dtype=torch.long, device=input_ids.device)
        wide = torch.full((rows, width), -100, dtype=torch.long, device=input_ids.device)
        for j, e in enumerate(embeds):
            batch[j, : e.shape[0]] = e
            attention[j, : e.shape[0]] = 1
            if labels is not None:
                wide[j, : e.shape[0]] = row_labels[j]
        return batch, attention, wide if labels is not None else None

    def _widen(self, ids, lab, n_image: int, n_graph: int) -> torch.Tensor:
        out, cut = [], 0
        marks = [
            (a, n, drop)
            for a, n, drop in (
                (_first(ids, self.config.image_token_id), n_image, True),
                (_first(ids, self.config.sg_token_id), n_graph, False),
            )
            if a is not None and (n or not drop)
        ]
        for at, n, drop in sorted(marks):
            out += [lab[cut:at] if drop else lab[cut : at + 1], lab.new_full((n,), -100)]
            cut = at + 1
        out.append(lab[cut:])
        return torch.cat(out)

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
        """The LM's forward on the spliced embeddings (``region_masks``: per row [N, H, W] or
        None; ``has_image``: rows that have an image, default all when ``pixel_values`` is given)."""
        embeds, attention, wide = self.embed_batch(
            input_ids, attention_mask, labels, pixel_values, region_masks, has_image
        )
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention, labels=wide, **kwargs
        )


def _first(ids: torch.Tensor, token: int | None) -> int | None:
    if token is None:
        return None
    at = (ids == token).nonzero()
    return int(at[0, 0]) if at.numel() else None
