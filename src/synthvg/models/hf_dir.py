"""Loading a local transformers model directory, with errors that name the config key.

transformers' own loader warns and goes on with random weights when a checkpoint does not fit
the architecture; a dataset built that way would be silently wrong, so here it is an error.
"""

from __future__ import annotations

import json
import os

import torch

from synthvg.models.errors import ModelLoadError


def read_config_json(path: str, key: str) -> dict:
    """A model directory's config.json as a dict, or a clear error naming the config ``key``."""
    if not os.path.isdir(path):
        raise ModelLoadError(f"{key}: model directory not found: {path}")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ModelLoadError(
            f"{key}: {path} has no config.json (not a transformers model directory)"
        )
    try:
        with open(config) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{key}: cannot read {config}: {e}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{key}: {config} holds a {type(raw).__name__}, not a config mapping")
    return raw


def model_type_of(path: str, key: str) -> str:
    """The ``model_type`` in a model directory's config.json, or a clear error."""
    return str(read_config_json(path, key).get("model_type"))


def load_pretrained(cls, path: str, key: str, dtype: torch.dtype, device: torch.device):
    """``cls.from_pretrained(path)`` in ``dtype`` on ``device``, refusing weights that miss,
    exceed or mismatch the architecture."""
    try:
        model, info = cls.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{key}: cannot load {cls.__name__} from {path}: {e}") from None
    bad = {
        k: v
        for k, v in info.items()
        if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
    }
    if bad:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:3]}" for k, v in bad.items())
        raise ModelLoadError(f"{key}: the weights in {path} do not fit {cls.__name__} ({detail})")
    return model.to(device).eval()
