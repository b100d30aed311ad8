"""Stages whose model backends are configured per build; with ``backend: none`` they skip.

Skipping is explicit: the stage logs its reason, the run manifest records it, and any output
it wrote under an earlier config is withdrawn so the views never mix stale rows in.
"""

from __future__ import annotations

from synthvg.stages.base import RunContext, ShardSpec, Stage, StageInputs, StageOutput


class _BackendStage(Stage):
    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        raise NotImplementedError(f"the {self.name} stage has no backend here")


class RobinStage(_BackendStage):
    name = "robin"
    writes = ("relations",)
