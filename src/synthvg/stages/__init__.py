"""Pipeline stages, in build order. Each is a plain class: see :mod:`synthvg.stages.base`."""

from synthvg.schemas.config import BuildConfig
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput, load_stage
from synthvg.stages.depth import DepthStage
from synthvg.stages.edit import EditStage
from synthvg.stages.filters import FiltersStage
from synthvg.stages.graph import GraphError, StageNode, stage_graph
from synthvg.stages.regions import RegionsStage
from synthvg.stages.robin import RobinStage
from synthvg.stages.seeds import BuildPlan, SeedsStage, plan_build
from synthvg.stages.teacher import TeacherStage

#: The shard stages as declared; a build runs them in the graph's order (:func:`build_order`),
#: which is this order unless a config makes a stage read a later one (publish follows).
STAGES: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (SeedsStage, RegionsStage, DepthStage, TeacherStage, FiltersStage, RobinStage, EditStage)
}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


def graph(config: BuildConfig) -> dict[str, StageNode]:
    """The stage graph of ``config``, in build order (see :mod:`synthvg.stages.graph`)."""
    return stage_graph(STAGES, config)


def build_order(config: BuildConfig) -> list[str]:
    """Every stage, in the order a build runs them under ``config``."""
    return list(graph(config))


def table_writers() -> dict[str, list[str]]:
    """Which stages write each table, in build order."""
    out: dict[str, list[str]] = {}
    for name, cls in STAGES.items():
        for table in cls.writes:
            out.setdefault(table, []).append(name)
    return out


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
    "table_writers",
]
