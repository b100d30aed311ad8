"""Operations: runner choice and placement, per-stage artifacts, Prefect limits, the report flow."""

from __future__ import annotations

import json
import sys

import pytest
from helpers import DEMO_CONFIG, demo_config
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.flows.build import _stage_table
from synthvg.flows.runners import RunnerUnavailable, placement, require, task_runners
from synthvg.pipeline import ShardResult, run_build, summarize_stage
from synthvg.schemas.config import ConfigError, ExecutorConfig, with_executor

# --------------------------------------------------------------------------- configuration


def test_runner_and_address_override_the_config(tmp_path):
    cfg = with_executor(demo_config(tmp_path), kind="ray", address="ray://head:10001")
    assert (cfg.executor.kind, cfg.executor.address, cfg.executor.workers) == (
        "ray",
        "ray://head:10001",
        2,
    )
    with pytest.raises(ConfigError, match="address needs kind dask or ray"):
        with_executor(demo_config(tmp_path), address="tcp://scheduler:8786")


def test_executor_sections_name_real_stages(tmp_path):
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['regoins'\]"):
        demo_config(tmp_path, executor={"gpus": {"regoins": 1}})
    with pytest.raises(ValueError, match="unknown stage"):
        demo_config(tmp_path, executor={"limits": [{"name": "gpu", "stages": ["sam"], "limit": 1}]})


def test_cli_refuses_an_address_for_threads_before_any_work(tmp_path):
    result = CliRunner().invoke(
        app, ["build", "-c", str(DEMO_CONFIG), "--out", str(tmp_path), "--address", "tcp://x:8786"]
    )
    assert result.exit_code == 2
    assert "address needs kind dask or ray" in result.output
    assert not (tmp_path / "synthvg.json").exists()


def test_a_missing_engine_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # makes `import prefect_ray` fail
    with pytest.raises(RunnerUnavailable, match=r"synthvg\[scale\]"):
        require("ray")
    require("threads")


def test_placement_requests_gpus_and_keeps_ray_workers():
    pytest.importorskip("prefect_ray")
    from prefect_ray.context import RemoteOptionsContext

    ray = ExecutorConfig(kind="ray", gpus={"regions": 0.5})
    with placement(ray, "regions"):
        assert RemoteOptionsContext.get().current_remote_options == {
            "num_gpus": 0.5,
            "max_calls": 0,
        }
    with placement(ray, "teacher"):
        assert not RemoteOptionsContext.get().current_remote_options


def test_a_local_ray_cluster_without_the_gpus_asked_for_is_refused(monkeypatch):
    ray = pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    calls: list = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    with pytest.raises(
        RuntimeError, match="requests 1 GPUs per shard; the local Ray cluster has 0"
    ):
        with task_runners(ExecutorConfig(kind="ray", gpus={"regions": 1})):
            pass
    assert calls == [
        {"address": None, "namespace": "synthvg", "num_cpus": 2, "include_dashboard": False},
        "shutdown",
    ]


def test_dask_gpu_requests_go_to_a_given_cluster_only():
    dask = pytest.importorskip("dask")
    pytest.importorskip("prefect_dask")
    with placement(
        ExecutorConfig(kind="dask", address="tcp://s:8786", gpus={"regions": 1}), "regions"
    ):
        assert dask.get_annotations() == {"resources": {"GPU": 1}}
    with placement(ExecutorConfig(kind="dask", gpus={"regions": 1}), "regions"):
        assert dask.get_annotations() == {}


# --------------------------------------------------------------------------- stage table


def test_stage_table_has_a_row_per_shard_and_a_total():
    results = [
        ShardResult(
            stage="teacher",
            shard=0,
            status="written",
            rows={"relations": 30},
            errors=2,
            errors_by_kind={"zero_area": 2},
            seconds=2.0,
            metrics={"cost_usd": 0.25, "requests": 4},
        ),
        ShardResult(stage="teacher", shard=1, status="up_to_date"),
        ShardResult(stage="teacher", shard=2, status="failed", message="boom"),
    ]
    summary = summarize_stage("teacher", results, seconds=4.0)
    rows = _stage_table(summary, results, {0: 4, 1: 4, 2: 3})
    assert [r["shard"] for r in rows] == ["00000", "00001", "00002", "total"]
    first, total = rows[0], rows[-1]
    assert (first["images_in"], first["rows_out"], first["dropped_by_reason"]) == (
        4,
        "relations=30",
        "zero_area=2",
    )
    assert (first["images_per_s"], first["cost_usd"], first["metrics"]) == (2.0, 0.25, "requests=4")
    # The total counts the work done in this run: the written shard, over the stage's wall time.
    assert (total["status"], total["images_in"], total["images_per_s"], total["cost_usd"]) == (
        "partial",
        4,
        1.0,
        0.25,
    )
    assert total["message"] == "boom"


# --------------------------------------------------------------------------- report pieces

# 'near' only for touching boxes: some relations get dropped, so drop reasons have content.
DROP_NEAR = {"backend": "rules", "spatial": {"near_keep": 0.0, "near_drop": 0.0}}


def test_report_pieces_on_a_plain_build(tmp_path):
    from synthvg.flows.report import drop_reasons, histogram_png, stage_costs
    from synthvg.storage import Dataset

    cfg = demo_config(
        tmp_path, limit=2, shard_size=2, regions={"proposer": "none"}, filters=DROP_NEAR
    )
    run_build(cfg)
    run_build(cfg)  # a second run: costs sum over runs; it wrote nothing
    costs = {r["stage"]: r for r in stage_costs(Dataset(cfg.out).runs())}
    assert set(costs) == {"seeds", "teacher", "filters"}
    assert (
        costs["teacher"]["runs"],
        costs["teacher"]["shards_written"],
        costs["teacher"]["cost_usd"],
    ) == (2, 1, 0.0)
    drops = drop_reasons(cfg.out)
    assert drops["regions"] == drops["inputs"] == []
    (near,) = drops["relations"]
    assert near["rule"] == "rule:near" and near["dropped"] > 0
    png = histogram_png([{"p": "near", "n": 3}, {"p": "on", "n": 1}], "p", "n", "t")
    assert png.startswith(b"\x89PNG")


# --------------------------------------------------------------------------- against a server


@pytest.mark.slow
def test_setup_prefect_limits_hold_slots_only_while_a_shard_works(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError

    from synthvg.prefect_setup import WORK_POOL, setup_prefect, shard_slots

    ex = ExecutorConfig(
        limits=[
            {"name": "test-gpu", "stages": ["regions"], "limit": 2},
            {"name": "test-api", "stages": ["teacher"], "limit": 3, "per_second": 0.01},
        ]
    )
    done = setup_prefect(ex.limits)
    assert any("test-api: rate limit 0.01/s, burst 3" in d for d in done)
    assert setup_prefect(ex.limits)[-1] == f"work pool {WORK_POOL}: exists"  # idempotent

    def active(name: str) -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(name).active_slots

    with shard_slots(ex, "regions", images=16):
        assert active("test-gpu") == 1
    assert active("test-gpu") == 0
    with shard_slots(ex, "teacher", images=16):  # capped at the burst; decays, not released
        pass
    assert active("test-api") == 3
    with shard_slots(ex, "seeds", images=16):  # stages no limit names take nothing
        pass
    missing = ExecutorConfig(limits=[{"name": "never-created", "stages": ["regions"], "limit": 1}])
    with pytest.raises(ConcurrencySlotAcquisitionError), shard_slots(missing, "regions", images=1):
        pass


@pytest.mark.slow
def test_build_with_limits_then_report(prefect_server, tmp_path):
    """Limits wired into shard tasks, a progress and a table artifact per stage, `synthvg report`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from synthvg.flows import build_dataset
    from synthvg.prefect_setup import setup_prefect

    cfg = demo_config(
        tmp_path / "root",
        limit=4,
        shard_size=2,
        name="ops",
        regions={"proposer": "none"},
        filters=DROP_NEAR,
        executor={
            "limits": [
                {"name": "ops-gpu", "stages": ["filters"], "limit": 1},
                {"name": "ops-api", "stages": ["teacher"], "limit": 4, "per_second": 100},
            ]
        },
    )
    setup_prefect(cfg.executor.limits, work_pool=None)
    assert build_dataset(cfg).status == "completed"

    result = CliRunner().invoke(app, ["report", "--root", cfg.out, "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 7 files" in result.output  # 3 histograms, 2 samples, report.json, README.md
    report = tmp_path / "root" / "report"
    assert {"README.md", "report.json", "categories.png", "predicates.png", "objects.png"} <= {
        p.name for p in report.iterdir()
    }
    assert len(list((report / "samples").glob("*.png"))) == 2
    card = (report / "README.md").read_text()
    assert (
        "| this dataset | 4 |" in card and "| rule:near |" in card and "| teacher | 1 | 2 |" in card
    )

    with get_client(sync_client=True) as client:
        keys = {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="ops-"))
            )
        }
        teacher = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["ops-stage-teacher"]))
        )
    for stage in ("seeds", "teacher", "filters"):
        assert {f"ops-stage-{stage}", f"ops-stage-{stage}-progress"} <= keys
    assert {
        "ops-dataset-card",
        "ops-dataset-card-file",
        "ops-report-table1",
        "ops-report-drops",
        "ops-report-cost",
        "ops-dataset",
    } <= keys
    assert "ops-stage-regions-progress" not in keys  # skipped stages submit nothing
    total = [r for r in json.loads(teacher[0].data) if r["shard"] == "total"][0]
    assert total["images_in"] == 4
