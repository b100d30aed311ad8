"""The stage graph: derived from declared reads, it orders the build and scopes every redo."""

from __future__ import annotations

import json

import pytest
from helpers import demo_config

from synthvg.pipeline import fingerprints
from synthvg.stages import ShardSpec, StageInputs, build_order, graph
from synthvg.storage import Dataset

SHARD = ShardSpec(index=0, image_ids=["coco:1", "coco:2"])


@pytest.fixture()
def full(tmp_path):
    """The demo with Robin and the editor configured (only fingerprints and the graph are used)."""
    ckpt = tmp_path / "robin"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "robin_qwen"}))
    depth = tmp_path / "depth"
    depth.mkdir()
    (depth / "config.json").write_text("{}")

    def make(**overrides):
        base = {
            "robin": {"backend": "robin", "checkpoint": str(ckpt)},
            "edit": {
                "backend": "openai",
                "source": "robin",
                "model": "gpt-4o",
                "base_url": "http://127.0.0.1:9/v1",
            },
        }
        return demo_config(tmp_path / "root", **{**base, **overrides})

    make.depth = str(depth)
    return make


def _changed(a: dict, b: dict) -> list[str]:
    return [s for s in a if a[s] != b[s]]


def test_the_graph_follows_declared_reads(full):
    nodes = graph(full())
    assert list(nodes) == ["seeds", "regions", "depth", "teacher", "filters", "robin", "edit"]
    assert nodes["depth"].skipped and nodes["depth"].reads == {}
    assert nodes["teacher"].depends_on == ["regions"]  # images and regions come through regions
    assert nodes["robin"].depends_on == ["regions"]
    assert nodes["filters"].reads["relations"] == ["teacher"]
    assert nodes["edit"].reads["relations"] == ["robin"] and nodes["edit"].reads[
        "relation_verdicts"
    ] == ["filters"]
    assert nodes["edit"].depends_on == ["filters", "robin"]


def test_a_filter_setting_redoes_filters_and_edit_but_not_robin(full):
    a = fingerprints(full(), SHARD)
    b = fingerprints(full(filters={"spatial": {"near_keep": 0.5}}), SHARD)
    assert _changed(a, b) == ["filters", "edit"]


def test_a_teacher_setting_redoes_what_reads_the_teacher_only(full):
    a = fingerprints(full(), SHARD)
    b = fingerprints(full(teacher={"max_subjects": 3}), SHARD)
    assert _changed(a, b) == ["teacher", "filters", "edit"]


def test_enabling_depth_redoes_only_what_reads_depth(full):
    a = fingerprints(full(), SHARD)
    b = fingerprints(full(depth={"backend": "depth-anything", "path": full.depth}), SHARD)
    assert _changed(a, b) == ["depth", "filters", "edit"]


def test_filters_on_robin_run_after_robin(full):
    cfg = full(filters={"stages": ["robin", "teacher"]})
    order = build_order(cfg)
    assert order.index("robin") < order.index("filters") < order.index("edit")
    assert graph(cfg)["filters"].reads["relations"] == ["teacher", "robin"]


def test_a_stage_cannot_read_what_it_did_not_declare(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    inputs = StageInputs(ds, 0, {"images": ["seeds"]})
    assert inputs.table("images").num_rows == 0
    with pytest.raises(KeyError, match="does not declare that it reads 'relations'"):
        inputs.table("relations")


def test_demo_fingerprints_of_stages_before_the_first_skipped_one_are_unchanged(tmp_path):
    """seeds and regions keep the fingerprints of the chained scheme (no demo shard is redone
    for them); the teacher no longer chains through the skipped depth stage."""
    from synthvg import __version__
    from synthvg.runs import stable_hash
    from synthvg.stages import STAGES

    cfg = demo_config(tmp_path)
    previous, chained = SHARD.digest(), {}
    for name in ("seeds", "regions"):
        previous = stable_hash(
            [
                name,
                STAGES[name].version,
                __version__,
                STAGES[name].fingerprint_payload(cfg),
                previous,
            ]
        )
        chained[name] = previous
    fps = fingerprints(cfg, SHARD)
    assert {k: fps[k] for k in chained} == chained


def test_plan_prints_the_graph_and_what_a_change_would_redo(tmp_path):
    from typer.testing import CliRunner

    from synthvg.cli import app
    from synthvg.pipeline import run_build

    cfg = demo_config(tmp_path / "root", limit=4, shard_size=2)
    run_build(cfg)
    config = tmp_path / "changed.yaml"
    data = cfg.model_dump(mode="json")
    data["filters"]["spatial"]["near_keep"] = 0.5
    import yaml

    config.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["plan", "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        "  teacher  reads images <- seeds; regions <- seeds, regions; region_checks <- regions"
        in lines
    )
    assert "  teacher  2 up to date" in lines
    assert "  filters  0 up to date; redo 2: its settings or code changed" in lines
    assert (
        not (tmp_path / "root" / "runs").exists()
        or len(list((tmp_path / "root" / "runs").iterdir())) == 1
    )  # wrote nothing


def test_a_stage_and_its_model_are_kept_across_executor_changes_and_replaced_for_new_settings(
    tmp_path,
):
    from synthvg.stages import STAGES, load_stage

    cfg = demo_config(tmp_path / "root")
    teacher = load_stage(STAGES["teacher"], cfg)
    assert (
        load_stage(
            STAGES["teacher"], demo_config(tmp_path / "root", executor={"workers": 7}, limit=3)
        )
        is teacher
    )
    other = load_stage(
        STAGES["teacher"], demo_config(tmp_path / "root", teacher={"max_subjects": 2})
    )
    assert other is not teacher
    assert (
        load_stage(STAGES["teacher"], cfg) is not teacher
    )  # the first build's instance was released
