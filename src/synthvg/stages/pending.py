"""Stages whose model backends are configured per build; with ``backend: none`` they skip.

Skipping is explicit: the stage logs its reason, the run manifest records it, and any output
it wrote under an earlier config is withdrawn so the views never mix stale rows in.
"""

from __future__ import annotations

from synthvg.schemas.config import BuildConfig
from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput


class _BackendStage(Stage):
    backend_help = ""

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        if config.stage_config(cls.name).backend == "none":
            return f"no {cls.name} backend configured ({cls.name}.backend: none){cls.backend_help}"
        return None

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        raise NotImplementedError(f"the {self.name} stage has no backend here")


class RobinStage(_BackendStage):
    name = "robin"
    writes = ("relations",)


class EditStage(_BackendStage):
    name = "edit"
    writes = ("relations", "descriptions")
