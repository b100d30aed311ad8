"""Writing a Robin in the released layout, the layout :func:`~synthvg.models.robin.loader.load_robin` reads.

``config.json`` (``architectures: RobinQwenForCausalLM``, ``model_type: robin_qwen``),
safetensors shards listed by ``model.safetensors.index.json`` (the tied ``lm_head`` left out,
as the release leaves it out) and, when given, the tokenizer's files. Training exports its
final model this way, so ``robin: {checkpoint: DIR}`` loads what it trained.
"""

from __future__ import annotations

import json
import os

from synthvg.models.robin.modeling import RobinForCausalLM


def save_released(
    model: RobinForCausalLM,
    path: str,
    *,
    shards: int = 1,
    layer_scale: str = "gamma",
    tokenizer=None,
) -> None:
    """Write ``model`` (and ``tokenizer``) as the release is written. ``layer_scale='weight'``
    spells ConvNeXt's layer scale as transformers 4.43 did (for loader tests)."""
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    if layer_scale == "weight":
        state = {
            (k[: -len("gamma")] + "weight" if k.endswith(".gamma") else k): v
            for k, v in state.items()
        }
    write_shards(state, path, shards)
    config = model.config.to_dict()
    config["architectures"] = ["RobinQwenForCausalLM"]
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def write_shards(state: dict, path: str, shards: int = 1) -> None:
    """``state`` as ``shards`` safetensors files (keys dealt round-robin in sorted order) and
    the ``model.safetensors.index.json`` that lists them."""
    from safetensors.torch import save_file

    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
