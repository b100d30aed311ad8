"""Moved to :mod:`synthvg.stages.common` (kept for existing imports)."""

from synthvg.stages.common import load_rgb, per_image, to_rgb

__all__ = ["load_rgb", "per_image", "to_rgb"]
