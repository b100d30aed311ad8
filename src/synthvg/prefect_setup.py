"""Server-side Prefect objects builds share: global concurrency limits and the work pool.

Several builds (and several teams) share GPUs and model-API quota; a limit held by the Prefect
server is what they can all see. ``synthvg setup-prefect`` creates the limits a config names and
the work pool ``prefect.yaml`` deploys to; shard tasks then take slots through
:func:`shard_slots`, and only when the config names limits (no API calls otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from synthvg.prefect_env import WORK_POOL
from synthvg.schemas.config import ExecutorConfig, PrefectLimit


@contextmanager
def shard_slots(executor: ExecutorConfig, stage: str, images: int) -> Iterator[None]:
    """Hold the stage's concurrency slots while a shard runs; wait out its rate limits first.

    ``strict``: a named limit that the server lacks fails the shard instead of silently not
    limiting, which is the failure that would overrun a GPU or an API quota.
    """
    from prefect.concurrency.sync import concurrency, rate_limit

    with ExitStack() as held:
        for lim in executor.limits:
            if stage not in lim.stages:
                continue
            if lim.per_second:
                # The server refuses a request above the limit: a shard larger than the burst
                # takes the whole burst.
                rate_limit(lim.name, occupy=min(images, lim.limit), strict=True)
            else:
                held.enter_context(concurrency(lim.name, occupy=1, strict=True))
        yield


def setup_prefect(limits: list[PrefectLimit], work_pool: str | None = WORK_POOL) -> list[str]:
    """Create or update ``limits`` and create ``work_pool`` (a process pool) if missing.

    The equivalent commands: ``prefect gcl create NAME --limit N [--slot-decay-per-second R]``
    and ``prefect work-pool create NAME --type process``. Returns what was done, for people.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    done = []
    with get_client(sync_client=True) as client:
        for lim in limits:
            # A rate limit needs a slot decay; 0 makes a plain concurrency limit.
            client.upsert_global_concurrency_limit_by_name(
                lim.name, lim.limit, lim.per_second or 0.0
            )
            kind = (
                f"rate limit {lim.per_second:g}/s, burst {lim.limit}"
                if lim.per_second
                else f"{lim.limit} at once"
            )
            done.append(
                f"global concurrency limit {lim.name}: {kind} (stages {', '.join(lim.stages)})"
            )
        if work_pool:
            try:
                client.read_work_pool(work_pool)
                done.append(f"work pool {work_pool}: exists")
            except ObjectNotFound:
                # The process worker's default job template, as `prefect work-pool create` sets it.
                template = ProcessWorker.get_default_base_job_template()
                client.create_work_pool(
                    WorkPoolCreate(name=work_pool, type="process", base_job_template=template)
                )
                done.append(f"work pool {work_pool}: created (type process)")
    return done
