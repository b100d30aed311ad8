"""Several shards per orchestrator task when every stage is light: the grouping, the task body
without Prefect (failures, retries, what each shard reports), and the flow end to end."""

from __future__ import annotations

import pickle

import pytest
from helpers import dataset_rows, demo_config

from synthvg.pipeline import prepare, run_build, task_groups
from synthvg.runs import new_run_id
from synthvg.stages import ShardSpec
from synthvg.stages.base import StageFatal
from synthvg.stages.teacher import TeacherStage
from synthvg.storage import StorageRefused
from synthvg.tasks.shard import ShardsFailed, run_shards


def cheap_config(out, images: bool = False, **overrides):
    """Seeds (from the annotations alone, unless ``images``), rule teacher and rule filters:
    every stage light, but seeds that decode image files."""
    sources = [
        {**s.model_dump(), **({} if images else {"images": None})}
        for s in demo_config(out).seeds.sources
    ]
    return demo_config(out, regions={"proposer": "none"}, seeds={"sources": sources}, **overrides)


def specs(n: int, size: int) -> list[ShardSpec]:
    return [ShardSpec(index=i, image_ids=[f"i{i}-{k}" for k in range(size)]) for i in range(n)]


def sizes(groups: list[list[ShardSpec]]) -> list[int]:
    return [len(g) for g in groups]


def test_light_builds_group_shards_up_to_2000_images_and_never_below_the_workers(tmp_path):
    shards = specs(20, 500)
    one = cheap_config(tmp_path, shard_size=500, executor={"workers": 1})
    assert sizes(task_groups(one, shards)) == [4] * 5
    groups = task_groups(cheap_config(tmp_path, shard_size=500, executor={"workers": 8}), shards)
    assert sizes(groups) == [2] * 10  # no fewer tasks than workers
    assert [s.index for g in groups for s in g] == list(range(20))  # consecutive, in order
    small = cheap_config(tmp_path, shard_size=8, executor={"workers": 2})
    assert sizes(task_groups(small, specs(5, 8))) == [2, 2, 1]
    assert sizes(task_groups(small, specs(1, 8))) == [1]


def test_heavy_stages_keep_one_shard_per_task_unless_told(tmp_path):
    shards = specs(6, 500)
    demo = demo_config(tmp_path, shard_size=500, executor={"workers": 1})  # felzenszwalb masks
    assert sizes(task_groups(demo, shards)) == [1] * 6
    told = demo_config(tmp_path, shard_size=500, executor={"workers": 1, "task_images": 1000})
    assert sizes(task_groups(told, shards)) == [2] * 3
    below = cheap_config(tmp_path, shard_size=500, executor={"workers": 1, "task_images": 100})
    assert sizes(task_groups(below, shards)) == [1] * 6
    decoding = cheap_config(tmp_path, images=True, shard_size=500, executor={"workers": 1})
    assert sizes(task_groups(decoding, shards)) == [1] * 6  # seeds decode every image file


@pytest.fixture
def seeded(tmp_path):
    """A cheap build's plan (3 shards of 2 images) with its seeds committed."""
    cfg = cheap_config(tmp_path / "root", limit=6, shard_size=2)
    run_id = new_run_id()
    _, plan = prepare(cfg, run_id)
    assert [r.status for r in run_shards(cfg, "seeds", plan.shards, run_id, None)] == [
        "written"
    ] * 3
    return cfg, run_id, plan.shards


def failing_on(monkeypatch, shard_index: int, error: Exception) -> dict:
    original = TeacherStage.process
    calls = {"n": 0}

    def process(self, shard, inputs, ctx):
        if shard.index == shard_index:
            calls["n"] += 1
            raise error
        return original(self, shard, inputs, ctx)

    monkeypatch.setattr(TeacherStage, "process", process)
    return calls


def test_a_failing_shard_fails_the_task_after_the_others_ran_and_a_retry_reports_them_written(
    seeded, monkeypatch
):
    cfg, run_id, shards = seeded
    calls = failing_on(monkeypatch, 1, RuntimeError("simulated crash"))
    for _ in range(2):  # the first try, then Prefect's retry of the task
        with pytest.raises(ShardsFailed) as err:
            run_shards(cfg, "teacher", shards, run_id, None)
        assert err.value.retryable and err.value.fatal is None
        assert [r.status for r in err.value.results] == ["written", "failed", "written"]
        assert err.value.results[1].message == "RuntimeError: simulated crash"
        assert all(r.rows for r in err.value.results if r.status == "written")
        assert "teacher shard 00001: RuntimeError: simulated crash" in str(err.value)
    assert calls["n"] == 2

    with pytest.raises(ShardsFailed) as blocked:  # the stage that reads it: not worth retrying
        run_shards(cfg, "filters", shards, run_id, None)
    assert not blocked.value.retryable
    assert [r.status for r in blocked.value.results] == ["written", "failed", "written"]
    assert "upstream stage 'teacher' has not completed shard 1" in blocked.value.results[1].message

    monkeypatch.undo()
    again = run_shards(cfg, "teacher", shards, run_id, None)
    assert [r.status for r in again] == ["written"] * 3  # written in this run, one try or another
    later = run_shards(cfg, "teacher", shards, new_run_id(), None)
    assert [r.status for r in later] == ["up_to_date"] * 3


def test_a_stage_that_cannot_succeed_fails_the_rest_without_running_them(seeded, monkeypatch):
    cfg, run_id, shards = seeded
    calls = failing_on(monkeypatch, 0, StageFatal("the API key was rejected"))
    with pytest.raises(ShardsFailed) as err:
        run_shards(cfg, "teacher", shards, run_id, None)
    assert (err.value.retryable, err.value.fatal, calls["n"]) == (False, None, 1)
    assert [r.message for r in err.value.results] == ["the API key was rejected"] * 3


def test_a_storage_refusal_ends_the_build_and_survives_pickling(seeded, monkeypatch):
    cfg, run_id, shards = seeded
    failing_on(monkeypatch, 1, StorageRefused("disk full"))
    with pytest.raises(ShardsFailed) as err:
        run_shards(cfg, "teacher", shards, run_id, None)
    assert isinstance(err.value.fatal, StorageRefused) and not err.value.retryable
    assert [r.status for r in err.value.results] == ["written", "failed", "failed"]
    back = pickle.loads(pickle.dumps(err.value))  # Dask and Ray send it back pickled
    assert back.results == err.value.results and isinstance(back.fatal, StorageRefused)
    assert str(back) == str(err.value)


@pytest.mark.slow
def test_the_flow_runs_a_light_build_in_grouped_tasks_equal_to_the_plain_build(
    prefect_server, tmp_path, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from synthvg.flows import BuildIncomplete, build_dataset

    settings = {"limit": 6, "shard_size": 2}
    executor = {"workers": 1, "retries": 1, "retry_delay_seconds": 0}
    cfg = cheap_config(tmp_path / "flow", executor=executor, **settings)
    calls = failing_on(monkeypatch, 1, RuntimeError("simulated crash"))
    with pytest.raises(BuildIncomplete) as err:
        build_dataset(cfg)
    done = {s.stage: (s.shards_written, s.shards_failed) for s in err.value.run.stages}
    assert done == {
        **done,
        "seeds": (3, 0),
        "teacher": (2, 1),  # the failing shard's neighbours in its task are committed
        "filters": (2, 1),  # and their relations filtered: the task ran despite the failure
    }
    assert calls["n"] == 2  # Prefect retried the task once

    monkeypatch.undo()
    run = build_dataset(cfg)
    assert {s.stage: s.shards_written for s in run.stages if s.status == "done"} == {
        "seeds": 0,
        "teacher": 1,
        "filters": 1,
    }
    plain = cheap_config(tmp_path / "plain", **settings)
    run_build(plain)
    assert dataset_rows(cfg.out) == dataset_rows(plain.out)
    with get_client(sync_client=True) as client:
        names = {
            t.name
            for t in client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="-shard-00000-00002"))
            )
        }
    assert {"seeds-shard-00000-00002", "teacher-shard-00000-00002"} <= names
