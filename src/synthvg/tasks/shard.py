"""Prefect tasks per stage over one shard or a few consecutive ones (never one per image: the
API cannot carry that); each shard commits on its own."""

from __future__ import annotations

import hashlib
import logging
import threading
from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE, CachePolicy

from synthvg.pipeline import (
    ShardResult,
    WithdrawalRefused,
    failed_shard,
    fingerprints,
    prepare,
    run_shard,
)
from synthvg.prefect_setup import shard_slots
from synthvg.schemas.config import BuildConfig
from synthvg.stages import BuildPlan, ShardSpec
from synthvg.stages.base import StageFatal
from synthvg.storage import Dataset, LockLost, StorageRefused

log = logging.getLogger(__name__)


def _shards_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    first, last = p["shards"][0].index, p["shards"][-1].index
    return f"{p['stage']}-shard-{first:05d}" + (f"-{last:05d}" if last != first else "")


def shard_identity(config: BuildConfig, stage: str, shard: ShardSpec) -> str:
    """A shard task's identity, as the storage knows it: dataset root, stage, shard index and
    the shard's fingerprint (image ids, stage config, code version, upstream stages)."""
    root = hashlib.sha256(config.out.encode()).hexdigest()[:8]
    return f"synthvg-{root}-{stage}-{shard.index:05d}-{fingerprints(config, shard)[stage][:24]}"


class ShardIdentity(CachePolicy):
    """Prefect's cache key for ``run-shard`` is its shards' storage identity (of a task of
    several shards, a hash of theirs).

    The flow submits every task with a shard whose storage commit is missing with
    ``refresh_cache``, so a cached Prefect result is only ever used for shards the storage also
    holds with the same fingerprints: the two cannot disagree about what is done.
    """

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        keys = [shard_identity(inputs["config"], inputs["stage"], s) for s in inputs["shards"]]
        if len(keys) == 1:
            return keys[0]
        return (
            f"{keys[0]}-to-{inputs['shards'][-1].index:05d}-"
            + hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
        )


class ShardsFailed(RuntimeError):
    """Some shards of a task failed: Prefect shows the task failed (and retries it while
    ``retryable``), and the flow still reports every shard of it as it ended (``results``).
    ``fatal``: the storage fault or lost lock that ends the build, if that was the cause."""

    def __init__(
        self,
        results: list[ShardResult],
        retryable: bool,
        fatal: StorageRefused | LockLost | None = None,
    ):
        failed = [r for r in results if r.status == "failed"]
        super().__init__(
            "; ".join(f"{r.stage} shard {r.shard:05d}: {r.message}" for r in failed)
            or "shards failed"
        )
        self.results, self.retryable, self.fatal = results, retryable, fatal

    def __reduce__(self):  # Dask and Ray send it back pickled
        return (ShardsFailed, (self.results, self.retryable, self.fatal))


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
    """Retry a failed shard task, unless storage refused the write, the build lost its lock, or
    the stage cannot succeed in this run (a rejected key, a spent budget): those fail again on
    every try; nor when its shards only wait for an upstream stage that failed."""
    try:
        state.result()
    except ShardsFailed as failed:
        return failed.retryable
    except (StorageRefused, LockLost, StageFatal):
        return False
    except Exception:
        return True
    return True


#: Shards a failed try of their task wrote, by (run id, stage, shard): its retry finds them up
#: to date and reports them as written in this run, as they were.
_WRITTEN: dict[tuple[str, str, int], ShardResult] = {}
_WRITTEN_LOCK = threading.Lock()


def run_shards(
    config: BuildConfig, stage: str, shards: list[ShardSpec], run_id: str, fence: str | None
) -> list[ShardResult]:
    """Run ``stage`` on each shard in turn (each commits on its own); raise
    :class:`ShardsFailed` at the end if any failed, after the others ran."""
    dataset = Dataset(config.out)
    results: list[ShardResult] = []
    first_error: Exception | None = None
    for i, shard in enumerate(shards):
        key = (run_id, stage, shard.index)
        slots = partial(shard_slots, config.executor, stage, len(shard.image_ids))
        try:
            result = run_shard(dataset, config, stage, shard, run_id, guard=slots, fence=fence)
        except (StorageRefused, LockLost, StageFatal) as e:  # every later shard fails the same way
            rest = [failed_shard(stage, s, e) for s in shards[i:]]
            fatal = e if isinstance(e, StorageRefused | LockLost) else None
            raise ShardsFailed(results + rest, retryable=False, fatal=fatal) from e
        except Exception as e:
            log.error("%s shard %05d failed: %s", stage, shard.index, e)
            results.append(failed_shard(stage, shard, e))
            first_error = first_error or e
            continue
        with _WRITTEN_LOCK:
            if result.status == "written" and len(shards) > 1:
                _WRITTEN[key] = result
            elif result.status == "up_to_date":
                result = _WRITTEN.get(key, result)
        results.append(result)
    if any(r.status == "failed" for r in results):  # a crash, or an upstream stage's failure
        raise ShardsFailed(results, retryable=first_error is not None) from first_error
    with _WRITTEN_LOCK:
        for shard in shards:
            _WRITTEN.pop((run_id, stage, shard.index), None)
    return results


@task(
    name="run-shard",
    task_run_name=_shards_run_name,
    cache_policy=ShardIdentity(),
    persist_result=True,
    retry_condition_fn=retry_unless_storage_fault,
)
def shard_task(
    config: BuildConfig,
    stage: str,
    shards: list[ShardSpec],
    run_id: str,
    fence: str | None = None,
) -> list[ShardResult]:
    """One stage over consecutive shards (:func:`synthvg.pipeline.task_groups`). ``fence``: the
    build lock's token (see :func:`synthvg.storage.lock.check_fence`)."""
    return run_shards(config, stage, shards, run_id, fence)
