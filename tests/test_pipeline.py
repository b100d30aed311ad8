"""Resume rules without Prefect: reruns skip, config changes redo only what they must."""

from __future__ import annotations

from helpers import demo_config

from synthvg.pipeline import fingerprints, run_build, up_to_date
from synthvg.stages import ShardSpec
from synthvg.storage import connect


def _written(run):
    return {s.stage: s.shards_written for s in run.stages if s.status != "skipped"}


def test_rerun_writes_nothing(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=4, shard_size=2)
    first = run_build(cfg)
    assert _written(first) == {"seeds": 2, "regions": 2, "teacher": 2, "filters": 2}
    second = run_build(cfg)
    assert up_to_date(second)
    assert {s.stage: s.shards_up_to_date for s in second.stages if s.status != "skipped"} == {"seeds": 2, "regions": 2, "teacher": 2, "filters": 2}


def test_changing_a_stage_redoes_it_and_later_stages_only(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=4, shard_size=2)
    run_build(cfg)
    before = connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0]
    teacher_changed = demo_config(tmp_path / "root", limit=4, shard_size=2, teacher={"max_subjects": 2, "min_subjects": 2, "objects_per_subject": 1})
    assert _written(run_build(teacher_changed)) == {"seeds": 0, "regions": 0, "teacher": 2, "filters": 2}
    after = connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0]
    assert 0 < after < before
    regions_changed = demo_config(tmp_path / "root", limit=4, shard_size=2, regions={"iou_threshold": 0.3}, teacher=teacher_changed.teacher.model_dump())
    assert _written(run_build(regions_changed)) == {"seeds": 0, "regions": 2, "teacher": 2, "filters": 2}


def test_fingerprints_chain_in_stage_order(tmp_path):
    shard = ShardSpec(index=0, image_ids=["coco:1", "coco:2"])
    a = fingerprints(demo_config(tmp_path), shard)
    b = fingerprints(demo_config(tmp_path, teacher={"max_subjects": 3}), shard)
    assert [s for s in a if a[s] != b[s]] == ["teacher", "filters", "robin", "edit"]
    c = fingerprints(demo_config(tmp_path), ShardSpec(index=0, image_ids=["coco:1", "coco:3"]))
    assert all(a[s] != c[s] for s in a)


def test_shrinking_the_plan_withdraws_extra_shards(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=6, shard_size=2)
    run_build(cfg)
    smaller = demo_config(tmp_path / "root", limit=3, shard_size=2)
    run_build(smaller)
    con = connect(cfg.out)
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(3,)]
    assert con.sql("SELECT count(DISTINCT image_id) FROM regions").fetchall() == [(3,)]


def test_skipping_a_stage_withdraws_its_rows(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=2, shard_size=2)
    run_build(cfg)
    assert connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0] > 0
    run_build(demo_config(tmp_path / "root", limit=2, shard_size=2, teacher={"backend": "none"}))
    assert connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall() == [(0,)]
