"""Pipeline stages. Each is a plain class: see :mod:`synthvg.stages.base`; a build runs them in
the order of their graph (:mod:`synthvg.stages.dag`).

Names resolve on first use (PEP 562): importing one stage module (``synthvg.stages.seeds`` for
``plan_build``, say) must not load every stage's model SDKs (openai, torch) with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from synthvg.lazy import lazy_getattr

if TYPE_CHECKING:
    from synthvg.schemas.config import BuildConfig
    from synthvg.stages.base import Stage
    from synthvg.stages.dag import StageNode

#: Stage classes importable from this package by name (each also from its module). The set of
#: stages is not this list: every module of the package that defines a :class:`Stage` is one
#: (:func:`_stages`), so a new stage is its module, its config section and its record types.
_STAGE_CLASSES = {
    "SeedsStage": "synthvg.stages.seeds",
    "RegionsStage": "synthvg.stages.regions",
    "DepthStage": "synthvg.stages.depth",
    "TeacherStage": "synthvg.stages.teacher",
    "FiltersStage": "synthvg.stages.filters",
    "RobinStage": "synthvg.stages.robin",
    "EditStage": "synthvg.stages.edit",
}
#: Modules of the package that hold what stages share, never a stage.
_HELPERS = frozenset({"base", "common", "dag", "images", "llm_stage"})
_EXPORTS = {
    **{
        n: "synthvg.stages.base"
        for n in ("RunContext", "ShardSpec", "Stage", "StageInputs", "StageOutput", "load_stage")
    },
    **{n: "synthvg.stages.seeds" for n in ("BuildPlan", "plan_build")},
    **{n: "synthvg.stages.dag" for n in ("GraphError", "StageNode", "stage_graph")},
    **_STAGE_CLASSES,
}


def _stages() -> dict[str, type[Stage]]:
    """Every stage class by name, in declaration order (``Stage.order``, then name): the
    concrete :class:`Stage` subclasses defined in this package's modules (imports them all)."""
    import inspect
    import pkgutil

    from synthvg.stages.base import Stage

    found: list[type[Stage]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _HELPERS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [
            cls
            for cls in vars(module).values()
            if inspect.isclass(cls)
            and issubclass(cls, Stage)
            and cls.__module__ == module.__name__
            and not inspect.isabstract(cls)
        ]
    found.sort(key=lambda cls: (cls.order, cls.name))
    stages: dict[str, type[Stage]] = {}
    for cls in found:
        if cls.name in stages:
            raise RuntimeError(f"two stages are named {cls.name!r}: {stages[cls.name]} and {cls}")
        stages[cls.name] = cls
    return stages


_lazy = lazy_getattr(__name__, _EXPORTS)


def __getattr__(name: str):
    if name in ("STAGES", "STAGE_ORDER"):
        stages = _stages()
        globals().update(STAGES=stages, STAGE_ORDER=tuple(stages))
        return globals()[name]
    return _lazy(name)


def graph(config: BuildConfig) -> dict[str, StageNode]:
    """The stage graph of ``config``, in build order (see :mod:`synthvg.stages.dag`)."""
    from synthvg.stages.dag import stage_graph

    return stage_graph(_stages(), config)


def build_order(config: BuildConfig) -> list[str]:
    """Every stage, in the order a build runs them under ``config``."""
    return list(graph(config))


__all__ = [
    "STAGES",
    "STAGE_ORDER",
    "BuildPlan",
    "GraphError",
    "RunContext",
    "ShardSpec",
    "Stage",
    "StageInputs",
    "StageNode",
    "StageOutput",
    "build_order",
    "graph",
    "load_stage",
    "plan_build",
]
