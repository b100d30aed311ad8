"""The two ways a model backend fails: for the whole stage, or for one image."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model cannot be built from what the config names. Raised at stage construction, so a
    wrong path fails before any image is read; the message names the config key and the path."""


class ImageError(Exception):
    """A backend cannot use this one image; the stage records ``kind`` and goes on."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
