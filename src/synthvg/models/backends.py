"""Backends of each stage kind, registered under the config tag that selects them.

One interface per kind: mask proposers (:class:`~synthvg.models.proposers.MaskProposer`,
``regions.proposer``), depth estimators (:class:`DepthModel`, ``depth.backend``), VQA verifiers
(:class:`~synthvg.models.vqa.VQAVerifier`, ``filters.verifiers[].kind``); the teacher's
backends (``teacher.backend``: rules and an LLM behind one protocol) register in
:mod:`synthvg.stages.teacher` through the same :class:`Registry`. A backend is a factory
``(section, build config) -> backend``; its module is imported only when it is created, so a
config check or a CPU build never imports torch, and a missing extra is a one-line
:class:`~synthvg.models.errors.ModelLoadError`. A new backend is one line here (a class that
takes its section) or one factory function (here or in its stage's module), and its config
section, nothing else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from synthvg.models.errors import ModelLoadError

if TYPE_CHECKING:
    from synthvg.config.build import BuildConfig
    from synthvg.models.proposers import MaskProposer
    from synthvg.models.vqa import VQAVerifier

B = TypeVar("B")
Factory = Callable[[Any, "BuildConfig"], Any]


class DepthModel(Protocol):
    """Relative depth in [0, 1] (larger = nearer), one map per image at the size asked for."""

    #: Written to every row (``depth-anything/<folder>``).
    name: str

    def predict(self, rgbs: list[np.ndarray], sizes: list[tuple[int, int]]) -> list[np.ndarray]: ...


class Registry(Generic[B]):
    """Factories of one kind of backend by config tag."""

    def __init__(self, key: str):
        self.key = key  # the config key whose value is the tag, for messages
        self._factories: dict[str, Factory] = {}

    def register(self, tag: str) -> Callable[[Factory], Factory]:
        def add(factory: Factory) -> Factory:
            if tag in self._factories:
                raise ValueError(f"{self.key}: {tag!r} is registered twice")
            self._factories[tag] = factory
            return factory

        return add

    def register_class(self, tag: str, target: str) -> None:
        """Register a backend class that takes its config section, as ``"module:Class"`` (imported
        only when a build creates it)."""

        def factory(section: Any, build: BuildConfig) -> Any:
            module, name = target.split(":")
            return getattr(importlib.import_module(module), name)(section)

        self.register(tag)(factory)

    def tags(self) -> list[str]:
        return list(self._factories)

    def create(self, tag: str, section: Any, build: BuildConfig) -> B:
        """The backend ``tag`` names, built from its config ``section``."""
        factory = self._factories.get(tag)
        if factory is None:
            raise ModelLoadError(
                f"{self.key}: no backend {tag!r} (known: {', '.join(self._factories)})"
            )
        try:
            return factory(section, build)
        except ImportError as e:
            raise ModelLoadError(
                f"{self.key}: {tag} needs the models extra (pip install 'synthvg[models]'): {e}"
            ) from None


PROPOSERS: Registry[MaskProposer] = Registry("regions.proposer")
DEPTH: Registry[DepthModel] = Registry("depth.backend")
VERIFIERS: Registry[VQAVerifier] = Registry("filters.verifiers[].kind")


for _registry, _tag, _target in (
    (PROPOSERS, "felzenszwalb", "synthvg.models.proposers:FelzenszwalbProposer"),
    (PROPOSERS, "precomputed", "synthvg.models.precomputed:PrecomputedProposer"),
    (PROPOSERS, "segment_anything", "synthvg.models.sam_package:SegmentAnythingProposer"),
    (PROPOSERS, "transformers_sam", "synthvg.models.sam_transformers:TransformersSamProposer"),
    (DEPTH, "depth-anything", "synthvg.models.depth_anything:DepthAnything"),
    (VERIFIERS, "transformers", "synthvg.models.vqa_transformers:TransformersVerifier"),
    (VERIFIERS, "llava_sg", "synthvg.models.llava_sg.verifier:LlavaSGVerifier"),
):
    _registry.register_class(_tag, _target)


@VERIFIERS.register("openai")
def _openai_verifier(section: Any, build: BuildConfig) -> Any:
    from synthvg.models.vqa import OpenAIVerifier
    from synthvg.stages.llm_stage import make_client

    return OpenAIVerifier(
        section, None, client=make_client(section, build, scope=f"filters:{section.model}")
    )
