"""Predicate normalisation: one canonical form per meaning, the raw text always kept beside it.

Lower-case, trimmed, punctuation and repeated spaces removed, then mapped through a synonym
table shipped as ``data/predicate_synonyms.yaml`` (users extend it with their own file).
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

import yaml

_PUNCT = re.compile(r"[^\w\s'-]+")
_SPACES = re.compile(r"\s+")


def clean(text: str) -> str:
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


@functools.lru_cache(maxsize=8)
def load_synonyms(extra: str | None = None) -> dict[str, str]:
    table = yaml.safe_load(resources.files("synthvg.data").joinpath("predicate_synonyms.yaml").read_text())
    if extra:
        table.update(yaml.safe_load(Path(extra).read_text()) or {})
    return {clean(k): clean(str(v)) for k, v in table.items()}


def normalise(text: str, synonyms: dict[str, str] | None = None) -> str:
    """The canonical predicate for ``text`` ('' when nothing is left after cleaning)."""
    cleaned = clean(text)
    table = load_synonyms() if synonyms is None else synonyms
    return table.get(cleaned, cleaned)
