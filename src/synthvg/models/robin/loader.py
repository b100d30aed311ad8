"""Loading a Robin checkpoint directory in the released layout.

The layout: ``config.json`` (``model_type: robin_qwen``), ``model.safetensors`` or shards
listed by ``model.safetensors.index.json``, and the tokenizer files. The model is built on
the meta device and the tensors are assigned straight from the files, so a 3B checkpoint
loads without a random initialisation first.

Key mapping (docs/ROBIN.md): the release's keys are this module tree's keys, with two
documented exceptions. (1) ConvNeXt layer scale: the checkpoint may spell it ``...gamma``
(what training saved) or ``...weight`` (what transformers 4.43 renamed it to on load, which
made the official inference keep open_clip's original values). Both are accepted; ``gamma``
wins when both are present, and the choice is logged. (2) open_clip's projection head
(``visual.head.*``) is unused by Robin and skipped. Anything else missing or unexpected is an
error that lists the keys: a dataset built from half-random weights would be silently wrong.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from synthvg.models.errors import ModelLoadError
from synthvg.models.hf_dir import read_config_json
from synthvg.models.robin.modeling import VISION_KEYS, RobinConfig, RobinForCausalLM
from synthvg.models.robin.prompt import IM_END, IMAGE, MASK, POS

log = logging.getLogger("synthvg")

_LAYER_SCALE = re.compile(
    r"^(model\.vision_tower\.vision_tower\.visual\.trunk\.stages\.\d+\.blocks\.\d+)\.(gamma|weight)$"
)
_UNUSED = re.compile(r"^model\.vision_tower\.vision_tower\.visual\.head\.")
SPECIAL_TOKENS = (IMAGE, MASK, POS, IM_END, "<|box_start|>", "<|box_end|>")


@dataclass
class LoadReport:
    """What the loader did with the checkpoint's keys (logged, and kept on the model)."""

    layer_scale: str = "none"  # gamma | weight (renamed) | mixed | none
    skipped_unused: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    tied_lm_head: bool = False


def read_config(path: str) -> RobinConfig:
    """The checkpoint's config, or a clear error when it is not a Robin config."""
    raw = read_config_json(path, "robin.checkpoint")
    config_path = os.path.join(path, "config.json")
    if raw.get("model_type") != RobinConfig.model_type and "mm_projector_type" not in raw:
        raise ModelLoadError(
            f"robin.checkpoint: {config_path} is not a Robin config (model_type {raw.get('model_type')!r}, no mm_projector_type)"
        )
    raw = {
        k: v
        for k, v in raw.items()
        if k not in ("model_type", "architectures", "transformers_version")
    }
    try:
        return RobinConfig(**raw)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"robin.checkpoint: bad config {config_path}: {e}") from None


def weight_files(path: str, key: str = "robin.checkpoint") -> list[str]:
    """The safetensors files of a checkpoint; every shard the index names must exist."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                names = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{key}: cannot read {index}: {e}") from None
        files = [os.path.join(path, n) for n in names]
        if missing := [n for n, f in zip(names, files, strict=True) if not os.path.isfile(f)]:
            raise ModelLoadError(f"{key}: {path} misses shard(s) named by its index: {missing}")
        return files
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ModelLoadError(f"{key}: {path} has no model.safetensors or model.safetensors.index.json")


def read_state_dict(files: list[str], key: str = "robin.checkpoint") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(f"{key}: cannot read {f}: {e}") from None
    return state


def map_keys(
    state: dict[str, torch.Tensor], expected: set[str]
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """The release's keys -> this module tree's, resolving the layer-scale spelling."""
    report = LoadReport()
    out: dict[str, torch.Tensor] = {}
    scales: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if _UNUSED.match(key):
            report.skipped_unused.append(key)
        elif m := _LAYER_SCALE.match(key):
            scales.setdefault(m.group(1), {})[m.group(2)] = tensor
        else:
            out[key] = tensor
    used = set()
    for block, spellings in scales.items():
        choice = "gamma" if "gamma" in spellings else "weight"
        used.add(choice)
        out[f"{block}.gamma"] = spellings[choice]
    if scales:
        report.layer_scale = used.pop() if len(used) == 1 else "mixed"
        both = sum(1 for s in scales.values() if len(s) == 2)
        log.info(
            "robin: ConvNeXt layer scale read from %d '%s' keys%s",
            len(scales),
            report.layer_scale,
            f"; {both} blocks had both spellings, 'gamma' (fine-tuned) used" if both else "",
        )
    if report.skipped_unused:
        log.info(
            "robin: skipped %d keys of open_clip's projection head (unused by Robin)",
            len(report.skipped_unused),
        )
    report.unexpected = sorted(set(out) - expected)
    return out, report


def load_robin(
    path: str,
    *,
    lm_dtype: torch.dtype = torch.float32,
    vision_dtype: torch.dtype = torch.float32,
    allow_unexpected_keys: bool = False,
) -> tuple[RobinForCausalLM, Any, LoadReport]:
    """(model on the CPU, tokenizer, report) from a released-layout directory; the vision
    tower, projector and mask extractor in ``vision_dtype``, the LM in ``lm_dtype``."""
    config = read_config(path)
    files = weight_files(path)
    tokenizer = load_tokenizer(path)
    ids = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.mask_token_id, config.pos_token_id = (
        ids(IMAGE),
        ids(MASK),
        ids(POS),
    )
    with torch.device("meta"):
        model = RobinForCausalLM(config)
    expected = set(model.state_dict())
    state, report = map_keys(read_state_dict(files), expected)
    if report.unexpected:
        detail = f"{len(report.unexpected)} unexpected key(s) in {path}: {report.unexpected[:5]}"
        if not allow_unexpected_keys:
            raise ModelLoadError(
                f"robin.checkpoint: {detail} (robin.allow_unexpected_keys: true to ignore them)"
            )
        log.warning("robin: ignoring %s", detail)
        for k in report.unexpected:
            state.pop(k)
    missing = expected - set(state)
    if config.tie_word_embeddings and "lm_head.weight" in missing:
        missing.discard("lm_head.weight")
        report.tied_lm_head = True
    if missing:
        raise ModelLoadError(
            f"robin.checkpoint: {path} misses {len(missing)} weight(s): {sorted(missing)[:5]}"
        )
    try:
        model.load_state_dict(
            {
                k: v.to(vision_dtype if k.startswith(VISION_KEYS) else lm_dtype)
                for k, v in state.items()
            },
            strict=False,
            assign=True,
        )
    except RuntimeError as e:
        raise ModelLoadError(
            f"robin.checkpoint: weights in {path} do not fit its config: {e}"
        ) from None
    if report.tied_lm_head:
        model.lm_head.weight = model.model.embed_tokens.weight
    _materialise_buffers(model, config)
    return model.eval(), tokenizer, report


def _materialise_buffers(model: RobinForCausalLM, config: RobinConfig) -> None:
    """Non-persistent buffers (rotary frequencies) are not in checkpoints: rebuild them."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    model.model.rotary_emb = Qwen2RotaryEmbedding(config=config)
    if still := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
        raise ModelLoadError(f"robin: tensors left without values after loading: {still[:5]}")


def load_tokenizer(path: str):
    """The checkpoint's tokenizer; Robin's special tokens must each be one token."""
    from transformers import AutoConfig, AutoTokenizer

    try:  # so AutoTokenizer can read config.json's model_type without a warning
        AutoConfig.register(RobinConfig.model_type, RobinConfig)
    except ValueError:
        pass  # registered already
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(
            f"robin.checkpoint: cannot load the tokenizer from {path}: {e}"
        ) from None
    for token in SPECIAL_TOKENS:
        ids = tokenizer.convert_tokens_to_ids(token)
        if (
            ids is None
            or ids == tokenizer.unk_token_id
            or tokenizer.convert_ids_to_tokens(ids) != token
        ):
            raise ModelLoadError(
                f"robin.checkpoint: the tokenizer in {path} has no special token {token}"
            )
    return tokenizer
