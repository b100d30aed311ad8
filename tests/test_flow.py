"""The Prefect flow end to end under a test server: same rows as the plain runner, artifacts, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import dataset_rows, demo_config

from synthvg.flows import BuildIncomplete, build_dataset
from synthvg.models.rule_teacher import RuleTeacher
from synthvg.pipeline import run_build, up_to_date

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("overlap", [None, True], ids=["default", "overlapped"])
def test_flow_build_equals_plain_build_and_reruns_clean(prefect_server, tmp_path, overlap):
    cfg = demo_config(tmp_path / "flow", limit=6, shard_size=2, executor={"overlap": overlap})
    run = build_dataset(cfg)
    assert run.status == "completed"
    assert {s.stage: s.status for s in run.stages} == {
        "seeds": "done",
        "regions": "done",
        "depth": "skipped",
        "teacher": "done",
        "filters": "done",
        "robin": "skipped",
        "edit": "skipped",
    }
    plain = demo_config(tmp_path / "plain", limit=6, shard_size=2)
    run_build(plain)
    assert dataset_rows(cfg.out) == dataset_rows(plain.out)
    assert (tmp_path / "flow" / "stats.json").exists()
    assert up_to_date(build_dataset(cfg))

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        wanted = [
            "demo-stage-seeds",
            "demo-stage-regions",
            "demo-stage-teacher",
            "demo-stage-depth",
            "demo-stats",
            "demo-build-progress",
        ]
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted))
        )  # the server holds other tests' too
        keys = {a.key for a in found}
    assert {
        "demo-stage-seeds",
        "demo-stage-regions",
        "demo-stage-teacher",
        "demo-stage-depth",
        "demo-stats",
        "demo-build-progress",
    } <= keys


def test_a_failing_shard_fails_the_build_but_keeps_the_rest(prefect_server, tmp_path, monkeypatch):
    cfg = demo_config(
        tmp_path / "root", limit=4, shard_size=2, executor={"retries": 1, "retry_delay_seconds": 0}
    )
    original = RuleTeacher.relate
    calls = {"n": 0}

    def flaky(self, regions):
        if len(regions) == 14:  # coco:37777, the only image in shard 1 with 14 regions
            calls["n"] += 1
            raise RuntimeError("simulated crash")
        return original(self, regions)

    monkeypatch.setattr(RuleTeacher, "relate", flaky)
    with pytest.raises(BuildIncomplete) as err:
        build_dataset(cfg)
    teacher = next(s for s in err.value.run.stages if s.stage == "teacher")
    assert (teacher.shards_failed, teacher.shards_written) == (1, 1)
    assert calls["n"] == 2  # the task was retried once
    monkeypatch.setattr(RuleTeacher, "relate", original)
    again = run_build(cfg)
    assert {s.stage: s.shards_written for s in again.stages if s.status == "done"} == {
        "seeds": 0,
        "regions": 0,
        "teacher": 1,
        "filters": 1,
    }


def test_prefect_caches_shards_by_their_storage_identity_and_never_against_storage(
    prefect_server, tmp_path
):
    """run-shard's cache key is the shard's storage identity; a shard the storage lost is run,
    not answered from Prefect's cache."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        TaskRunFilter,
        TaskRunFilterName,
        TaskRunFilterState,
        TaskRunFilterStateName,
    )

    from synthvg.stages import ShardSpec
    from synthvg.storage import Dataset
    from synthvg.tasks.shard import shard_identity

    cfg = demo_config(tmp_path / "root", limit=4, shard_size=2)
    build_dataset(cfg)
    before = dataset_rows(cfg.out)
    assert up_to_date(
        build_dataset(cfg)
    )  # storage says done: results now cached under the identity
    third = build_dataset(cfg)
    assert up_to_date(third)
    teacher = Dataset(cfg.out).read_manifest("teacher", 0)
    Dataset(cfg.out).drop_stage_shard("teacher", 0, "test")
    fourth = build_dataset(cfg)
    assert {s.stage: s.shards_written for s in fourth.stages if s.status == "done"}["teacher"] == 1
    assert (
        dataset_rows(cfg.out) == before
        and Dataset(cfg.out).read_manifest("teacher", 0).fingerprint == teacher.fingerprint
    )
    with get_client(sync_client=True) as client:
        cached = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                name=TaskRunFilterName(like_="teacher-shard-"),
                state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["Cached"])),
            )
        )
    assert len(cached) >= 2  # the third build's teacher shards came from Prefect's cache
    key = shard_identity(cfg, "teacher", ShardSpec(index=0, image_ids=["a"]))
    assert key.startswith("synthvg-") and "-teacher-00000-" in key


def test_the_flow_refuses_to_withdraw_without_replace_and_the_cli_says_why(
    prefect_server, tmp_path
):
    from typer.testing import CliRunner

    from synthvg.cli import app
    from synthvg.pipeline import WithdrawalRefused

    root = tmp_path / "root"
    build_dataset(demo_config(root, limit=4, shard_size=2))
    before = dataset_rows(str(root))
    with pytest.raises(WithdrawalRefused, match="--limit 2 builds a subset"):
        build_dataset(demo_config(root, limit=2, shard_size=2))
    assert dataset_rows(str(root)) == before

    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    result = CliRunner().invoke(
        app, ["build", "--config", str(config), "--out", str(root), "--limit", "2"]
    )
    assert result.exit_code == 2
    assert "refused: this build would withdraw committed work" in result.output
    assert "Traceback" not in result.output
    assert dataset_rows(str(root)) == before
    replaced = build_dataset(demo_config(root, limit=2, shard_size=2), replace=True)
    assert replaced.status == "completed" and replaced.images == 2


def test_progress_artifacts_are_updated_at_most_every_interval_and_always_at_the_end(monkeypatch):
    """One API request per finished shard task was most of a build's requests: progress
    artifacts are updated every PROGRESS_EVERY_S seconds at most, and always at 100%."""
    from synthvg.flows import build

    now = [1000.0]
    monkeypatch.setattr(build.time, "monotonic", lambda: now[0])
    updates = []
    for k in range(1, 101):  # 100 shards finishing 0.1 s apart: 10 s in all
        now[0] += 0.1
        if build._due("artifact-a", final=k == 100):
            updates.append(k)
    assert updates[0] == 1 and updates[-1] == 100
    assert len(updates) <= 10 / build.PROGRESS_EVERY_S + 2


def test_only_the_build_flow_sends_heartbeats_and_the_cli_prints_the_published_stats(
    prefect_server, tmp_path, monkeypatch
):
    """Subflows run in the build's process, so the build's heartbeat covers them; their own
    would cost up to 1 s each at their end (Prefect joins the heartbeat thread). The CLI prints
    the statistics publish wrote, not a second computation of them."""
    from prefect.flow_engine import BaseFlowRunEngine
    from prefect.settings import get_current_settings
    from typer.testing import CliRunner

    from synthvg.cli import app
    from synthvg.stats import compute_stats, format_stats

    beats: list[str] = []
    monkeypatch.setattr(
        BaseFlowRunEngine,
        "_emit_flow_run_heartbeat",
        lambda self, resource, related: beats.append(self.flow.name),
    )
    before = get_current_settings()
    root = tmp_path / "root"
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    result = CliRunner().invoke(
        app, ["build", "--config", str(config), "--out", str(root), "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    assert beats == ["build-dataset"]
    assert get_current_settings() is before  # the subflows' settings did not leak out
    assert format_stats(compute_stats(str(root))) in result.output
