"""Where shard tasks run: threads in the build's process, a Dask cluster or a Ray cluster.

Stage code is the same under every runner: a task calls :func:`synthvg.pipeline.run_shard`,
which builds its stage (and so loads its model) through ``load_stage`` once per worker process.
One cluster serves the whole build, started (or connected to) before the first stage and closed
after the last, so worker processes and the models cached in them live across shards and
stages instead of being rebuilt per stage subflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from synthvg.schemas.config import ExecutorConfig

EXTRA_HINT = "install the scale-out extra: pip install 'synthvg[scale]'"


class RunnerUnavailable(RuntimeError):
    """The executor's engine (prefect-dask, prefect-ray) is not installed."""


def require(kind: str) -> None:
    """Fail before any work when the configured engine is missing."""
    module = {"dask": "prefect_dask", "ray": "prefect_ray"}.get(kind)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError as e:
        raise RunnerUnavailable(
            f"--runner {kind} needs {module.replace('_', '-')}: {EXTRA_HINT} ({e})"
        ) from None


@contextmanager
def task_runners(executor: ExecutorConfig) -> Iterator[Callable[[], TaskRunner]]:
    """Yield a factory of task runners (one per stage subflow) bound to one cluster."""
    require(executor.kind)
    if executor.kind == "dask":
        with _dask(executor) as runner:
            yield runner
    elif executor.kind == "ray":
        with _ray(executor) as runner:
            yield runner
    else:
        yield lambda: ThreadPoolTaskRunner(max_workers=executor.workers)


@contextmanager
def _dask(executor: ExecutorConfig) -> Iterator[Callable[[], TaskRunner]]:
    from prefect_dask import DaskTaskRunner

    if executor.address:
        yield lambda: DaskTaskRunner(address=executor.address)
        return
    from distributed import LocalCluster

    # The scheduler logs every client connection at INFO through Prefect's console handler.
    chatty = logging.getLogger("distributed")
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        # One single-threaded process per worker: stages and their models are not shared
        # between threads, and a process is what keeps load_stage's cache between tasks.
        with LocalCluster(
            n_workers=executor.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster:
            # The runner is duplicated per flow run and a duplicate keeps only the address: an
            # address (not the cluster object) keeps every stage on this cluster.
            yield lambda: DaskTaskRunner(address=cluster.scheduler_address)
    finally:
        chatty.setLevel(level)


@contextmanager
def _ray(executor: ExecutorConfig) -> Iterator[Callable[[], TaskRunner]]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from prefect_ray import RayTaskRunner

    # RayTaskRunner reuses an initialised Ray, so initialising here makes every stage share it
    # (and lets callers bring their own ray.init, with its resources, before the build).
    owned = not ray.is_initialized()
    if owned:
        local: dict[str, Any] = (
            {} if executor.address else {"num_cpus": executor.workers, "include_dashboard": False}
        )
        ray.init(address=executor.address, namespace="synthvg", **local)
    try:
        if executor.gpus and not executor.address:
            have = ray.cluster_resources().get("GPU", 0.0)
            if (want := max(executor.gpus.values())) > have:
                raise RuntimeError(
                    f"a stage requests {want:g} GPUs per shard; the local Ray cluster has {have:g}"
                )
        yield lambda: RayTaskRunner(address=executor.address)
    finally:
        if owned:
            ray.shutdown()


def placement(executor: ExecutorConfig, stage: str) -> AbstractContextManager[object]:
    """Resources a stage's shard tasks request, entered around their submission.

    Ray gives GPU tasks a fresh worker process per task by default (``max_calls=1``), which
    would reload the model for every shard; ``max_calls=0`` keeps the worker, so the stage that
    ``load_stage`` cached in it, and its model, serve the next shard. Dask requests a ``GPU``
    worker resource, which only a given cluster's workers declare (``dask worker
    --resources GPU=1``); a local cluster's workers all see the machine's GPUs, as threads do.
    """
    gpus = executor.gpus.get(stage)
    if not gpus:
        return nullcontext()
    if executor.kind == "ray":
        from prefect_ray.context import remote_options

        return remote_options(num_gpus=gpus, max_calls=0)
    if executor.kind == "dask" and executor.address:
        import dask

        return dask.annotate(resources={"GPU": gpus})
    return nullcontext()
