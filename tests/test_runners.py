"""Scale-out: the demo build on a local Dask and a local Ray cluster gives the threaded run's
rows, and Ray keeps a GPU stage's model loaded in its worker process between shards."""

from __future__ import annotations

import os

import pytest
from helpers import dataset_rows, demo_config

from synthvg.flows import build_dataset

pytestmark = pytest.mark.slow

# Small and quick, yet every stage kind that runs shards on workers: seeds, teacher, filters
# (the CPU proposer only adds minutes of segmentation, the same under every runner).
SMALL = {"limit": 4, "shard_size": 2, "regions": {"proposer": "none"}}


@pytest.fixture(scope="module")
def threaded(prefect_server, tmp_path_factory) -> dict:
    cfg = demo_config(tmp_path_factory.mktemp("threads"), **SMALL)
    assert build_dataset(cfg).status == "completed"
    return dataset_rows(cfg.out)


@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_a_local_cluster_builds_the_threaded_rows(kind, threaded, prefect_server, tmp_path):
    pytest.importorskip(f"prefect_{kind}")
    cfg = demo_config(tmp_path, **SMALL, executor={"kind": kind, "workers": 2})
    run = build_dataset(cfg)
    assert run.status == "completed"
    assert [s.stage for s in run.stages if s.status == "done"] == ["seeds", "teacher", "filters"]
    rows = dataset_rows(cfg.out)
    assert rows["relations"] and rows == threaded


def test_ray_gpu_tasks_keep_the_stage_loaded_in_their_worker(prefect_server, tmp_path):
    """Ray starts a new process per GPU task by default (max_calls=1), reloading the model each
    time; placement() keeps the worker, so each process builds the stage once."""
    pytest.importorskip("prefect_ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from prefect import flow, task
    from prefect_ray import RayTaskRunner

    from synthvg.flows.runners import placement

    cfg = demo_config(tmp_path, executor={"kind": "ray", "gpus": {"regions": 1}})

    @task
    def where(config) -> tuple[int, int]:
        from synthvg.stages import STAGES, load_stage

        return os.getpid(), id(load_stage(STAGES["regions"], config))

    @flow(task_runner=RayTaskRunner())
    def shards() -> list[tuple[int, int]]:
        with placement(cfg.executor, "regions"):
            futures = [where.submit(cfg) for _ in range(4)]
        return [f.result() for f in futures]

    # A logical GPU: Ray schedules GPU requests on any machine that declares one.
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
    try:
        served = shards()
    finally:
        ray.shutdown()
    stage_of = {}
    for pid, stage in served:
        assert stage_of.setdefault(pid, stage) == stage, "a worker built the stage twice"
    assert len(stage_of) < len(served), f"every GPU task got a fresh process: {served}"
