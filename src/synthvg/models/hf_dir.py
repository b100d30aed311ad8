"""Loading a local transformers model directory, with errors that name the config key.

transformers' own loader warns and goes on with random weights when a checkpoint does not fit
the architecture; a dataset built that way would be silently wrong, so here it is an error.
"""

from __future__ import annotations

import json
import os

import torch

from synthvg.models.errors import ModelLoadError


def model_type_of(path: str, key: str) -> str:
    """The ``model_type`` in a model directory's config.json, or a clear error."""
    if not os.path.isdir(path):
        raise ModelLoadError(f"{key}: model directory not found: {path}")
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ModelLoadError(f"{key}: {path} has no config.json (not a transformers model directory)")
    try:
        with open(config) as f:
            return str(json.load(f).get("model_type"))
    except (OSError, ValueError, AttributeError) as e:
        raise ModelLoadError(f"{key}: cannot read {config}: {e}") from None


def load_pretrained(cls, path: str, key: str, dtype: torch.dtype, device: torch.device):
    """``cls.from_pretrained(path)`` in ``dtype`` on ``device``, refusing weights that miss,
    exceed or mismatch the architecture."""
    try:
        model, info = cls.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{key}: cannot load {cls.__name__} from {path}: {e}") from None
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:3]}" for k, v in bad.items())
        raise ModelLoadError(f"{key}: the weights in {path} do not fit {cls.__name__} ({detail})")
    return model.to(device).eval()
