"""One Prefect task per (stage, shard): never one per image (the API cannot carry that)."""

from __future__ import annotations

import hashlib
from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from synthvg.pipeline import ShardResult, WithdrawalRefused, fingerprints, prepare, run_shard
from synthvg.prefect_setup import shard_slots
from synthvg.schemas.config import BuildConfig
from synthvg.stages import BuildPlan, ShardSpec
from synthvg.storage import Dataset, LockLost, StorageRefused


def _shard_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p['stage']}-shard-{p['shard'].index:05d}"


def shard_identity(config: BuildConfig, stage: str, shard: ShardSpec) -> str:
    """A shard task's identity, as the storage knows it: dataset root, stage, shard index and
    the shard's fingerprint (image ids, stage config, code version, upstream stages)."""
    root = hashlib.sha256(config.out.encode()).hexdigest()[:8]
    return f"synthvg-{root}-{stage}-{shard.index:05d}-{fingerprints(config, shard)[stage][:24]}"


class ShardIdentity(CachePolicy):
    """Prefect's cache key for ``run-shard`` is the shard's storage identity.

    The flow submits every shard whose storage commit is missing with ``refresh_cache``, so a
    cached Prefect result is only ever used for a shard the storage also holds with the same
    fingerprint: the two cannot disagree about what is done.
    """

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        return shard_identity(inputs["config"], inputs["stage"], inputs["shard"])


@task(name="plan-shards", cache_policy=NO_CACHE)
def plan_task(
    config: BuildConfig, run_id: str, replace: bool = False
) -> BuildPlan | WithdrawalRefused:
    """The plan, or the refusal to withdraw committed work: an answer, not a task failure, so
    the UI and the terminal show the refusal's message rather than a traceback."""
    try:
        _, plan = prepare(config, run_id, replace=replace)
    except WithdrawalRefused as refused:
        return refused
    return plan


def retry_unless_storage_fault(task, task_run, state) -> bool:
    """Retry a failed shard, unless storage refused the write, the build lost its lock, or the
    stage cannot succeed in this run (a rejected key, a spent budget): those fail again on every try."""
    from synthvg.stages.base import StageFatal

    try:
        state.result()
    except (StorageRefused, LockLost, StageFatal):
        return False
    except Exception:
        return True
    return True


@task(
    name="run-shard",
    task_run_name=_shard_run_name,
    cache_policy=ShardIdentity(),
    persist_result=True,
    retry_condition_fn=retry_unless_storage_fault,
)
def shard_task(
    config: BuildConfig, stage: str, shard: ShardSpec, run_id: str, fence: str | None = None
) -> ShardResult:
    """``fence``: the build lock's token (see :func:`synthvg.storage.lock.check_fence`)."""
    slots = partial(shard_slots, config.executor, stage, len(shard.image_ids))
    return run_shard(Dataset(config.out), config, stage, shard, run_id, guard=slots, fence=fence)
