"""Saving and loading a LLaVA-SG directory: ``config.json`` (``model_type: llava_sg``),
safetensors shards listed by ``model.safetensors.index.json`` (a tied ``lm_head`` left out) and
the tokenizer's files.

Loading builds the model on the meta device and assigns the tensors from the files, after a
key check as strict as Robin's: a missing or unexpected key is an error that lists the keys (a
model half made of random weights would verify relations at random without a word).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from synthvg.models.errors import ModelLoadError
from synthvg.models.hf_dir import read_config_json
from synthvg.models.llava_sg.modeling import LlavaSGConfig, LlavaSGForCausalLM
from synthvg.models.llava_sg.prompt import SPECIAL_TOKENS
from synthvg.models.robin.loader import read_state_dict, weight_files
from synthvg.models.robin.writer import write_shards

log = logging.getLogger("synthvg")
KEY = "llava_sg.path"
ARCHITECTURE = "LlavaSGForCausalLM"


def _tied(model: LlavaSGForCausalLM) -> bool:
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is emb.weight


def save_llava_sg(
    model: LlavaSGForCausalLM,
    path: str,
    *,
    tokenizer=None,
    shards: int = 1,
    state_dict: dict | None = None,
) -> None:
    os.makedirs(path, exist_ok=True)
    state = {
        k: v.detach().cpu().contiguous().clone()
        for k, v in (state_dict or model.state_dict()).items()
    }
    if _tied(model):
        state.pop("language_model.lm_head.weight", None)
    write_shards(state, path, shards)
    config = model.config.to_dict()
    config["architectures"] = [ARCHITECTURE]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def read_config(path: str, key: str = KEY) -> LlavaSGConfig:
    raw = read_config_json(path, key)
    if raw.get("model_type") != LlavaSGConfig.model_type:
        raise ModelLoadError(
            f"{key}: {os.path.join(path, 'config.json')} is not a LLaVA-SG config (model_type {raw.get('model_type')!r})"
        )
    raw = {
        k: v
        for k, v in raw.items()
        if k not in ("model_type", "architectures", "transformers_version")
    }
    try:
        config = LlavaSGConfig(**raw)
        config.text()
        config.vision()
    except (TypeError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{key}: bad config in {path}: {e}") from None
    return config


def load_tokenizer(path: str, key: str = KEY):
    """The directory's tokenizer; ``<image>``, ``<sg>`` and ``<text>`` must each be one token."""
    from transformers import AutoConfig, AutoTokenizer

    try:  # so AutoTokenizer can read config.json's model_type without a warning
        AutoConfig.register(LlavaSGConfig.model_type, LlavaSGConfig)
    except ValueError:
        pass  # registered already
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{key}: cannot load the tokenizer from {path}: {e}") from None
    for token in SPECIAL_TOKENS:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is None or i == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(i) != token:
            raise ModelLoadError(f"{key}: the tokenizer in {path} has no special token {token}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_llava_sg(
    path: str, *, dtype: torch.dtype = torch.float32, key: str = KEY
) -> tuple[LlavaSGForCausalLM, Any]:
    """(model on the CPU in eval mode, tokenizer) from a local directory, keys checked."""
    from synthvg.models.llava_sg.prompt import token_ids

    config = read_config(path, key)
    files = weight_files(path, key)
    tokenizer = load_tokenizer(path, key)
    config.image_token_id, config.sg_token_id, config.text_token_id = token_ids(tokenizer)
    with torch.device("meta"):
        model = LlavaSGForCausalLM(config)
    expected = set(model.state_dict())
    state = read_state_dict(files, key)
    tied = _tied(model)
    if unexpected := sorted(set(state) - expected):
        raise ModelLoadError(
            f"{key}: {len(unexpected)} unexpected key(s) in {path}: {unexpected[:5]}"
        )
    missing = expected - set(state)
    if tied:
        missing.discard("language_model.lm_head.weight")
    if missing:
        raise ModelLoadError(
            f"{key}: {path} misses {len(missing)} weight(s): {sorted(missing)[:5]}"
        )
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{key}: weights in {path} do not fit its config: {e}") from None
    if tied:
        model.language_model.lm_head.weight = model.get_input_embeddings().weight
    _materialise_buffers(model)
    return model.eval(), tokenizer


def _materialise_buffers(model: LlavaSGForCausalLM) -> None:
    """Buffers not in checkpoints (rotary frequencies, CLIP's position ids) are rebuilt on
    the CPU by building those modules again from the config."""
    for name, module in list(model.named_modules()):
        metas = [b for b in module.buffers(recurse=False) if b.is_meta]
        if not metas:
            continue
        fresh = _rebuild(module)
        if fresh is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, fresh)
    for module in model.modules():
        for bname, b in list(module.named_buffers(recurse=False)):
            if b.is_meta:  # a plain index buffer (CLIP position ids): arange over its length
                if b.dtype in (torch.int64, torch.int32) and b.ndim == 2 and b.shape[0] == 1:
                    module.register_buffer(
                        bname, torch.arange(b.shape[1], dtype=b.dtype)[None], persistent=False
                    )
    if still := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
        raise ModelLoadError(f"{KEY}: tensors left without values after loading: {still[:5]}")


def _rebuild(module):
    """A rotary embedding module built again on the CPU from its own config."""
    if "Rotary" in type(module).__name__ and hasattr(module, "config"):
        return type(module)(config=module.config)
    return None
