"""Pipeline stages, in build order. Each is a plain class: see :mod:`synthvg.stages.base`."""

from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput, load_stage
from synthvg.stages.depth import DepthStage
from synthvg.stages.edit import EditStage
from synthvg.stages.filters import FiltersStage
from synthvg.stages.regions import RegionsStage
from synthvg.stages.robin import RobinStage
from synthvg.stages.seeds import BuildPlan, SeedsStage, plan_build
from synthvg.stages.teacher import TeacherStage

#: The shard stages in the order a build runs them (publish follows, over the whole dataset).
STAGES: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (SeedsStage, RegionsStage, DepthStage, TeacherStage, FiltersStage, RobinStage, EditStage)
}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


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
    "RunContext",
    "ShardSpec",
    "Stage",
    "StageInputs",
    "StageOutput",
    "load_stage",
    "plan_build",
    "table_writers",
]
