"""One Prefect task per (stage, shard): never one per image (the API cannot carry that)."""

from __future__ import annotations

from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from synthvg.pipeline import ShardResult, prepare, run_shard
from synthvg.prefect_setup import shard_slots
from synthvg.schemas.config import BuildConfig
from synthvg.stages import BuildPlan, ShardSpec
from synthvg.storage import Dataset


def _shard_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p['stage']}-shard-{p['shard'].index:05d}"


# Storage fingerprints decide what is done, so Prefect's own result cache stays off: the two
# can then never disagree about a shard.
@task(name="plan-shards", cache_policy=NO_CACHE)
def plan_task(config: BuildConfig, run_id: str) -> BuildPlan:
    _, plan = prepare(config, run_id)
    return plan


@task(name="run-shard", task_run_name=_shard_run_name, cache_policy=NO_CACHE)
def shard_task(config: BuildConfig, stage: str, shard: ShardSpec, run_id: str) -> ShardResult:
    slots = partial(shard_slots, config.executor, stage, len(shard.image_ids))
    return run_shard(Dataset(config.out), config, stage, shard, run_id, guard=slots)
