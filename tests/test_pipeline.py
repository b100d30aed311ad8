"""Resume rules without Prefect: reruns skip, config changes redo only what they must."""

from __future__ import annotations

import pytest
from helpers import dataset_rows, demo_config

from synthvg.pipeline import WithdrawalRefused, fingerprints, run_build, up_to_date
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
    assert {s.stage: s.shards_up_to_date for s in second.stages if s.status != "skipped"} == {
        "seeds": 2,
        "regions": 2,
        "teacher": 2,
        "filters": 2,
    }


def test_changing_a_stage_redoes_it_and_later_stages_only(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=4, shard_size=2)
    run_build(cfg)
    before = connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0]
    teacher_changed = demo_config(
        tmp_path / "root",
        limit=4,
        shard_size=2,
        teacher={"max_subjects": 2, "min_subjects": 2, "objects_per_subject": 1},
    )
    assert _written(run_build(teacher_changed)) == {
        "seeds": 0,
        "regions": 0,
        "teacher": 2,
        "filters": 2,
    }
    after = connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0]
    assert 0 < after < before
    regions_changed = demo_config(
        tmp_path / "root",
        limit=4,
        shard_size=2,
        regions={"iou_threshold": 0.3},
        teacher=teacher_changed.teacher.model_dump(),
    )
    assert _written(run_build(regions_changed)) == {
        "seeds": 0,
        "regions": 2,
        "teacher": 2,
        "filters": 2,
    }


def test_fingerprints_follow_what_each_stage_reads(tmp_path):
    shard = ShardSpec(index=0, image_ids=["coco:1", "coco:2"])
    a = fingerprints(demo_config(tmp_path), shard)
    b = fingerprints(demo_config(tmp_path, teacher={"max_subjects": 3}), shard)
    assert [s for s in a if a[s] != b[s]] == [
        "teacher",
        "filters",
    ]  # robin and edit are skipped and read no teacher
    c = fingerprints(demo_config(tmp_path), ShardSpec(index=0, image_ids=["coco:1", "coco:3"]))
    assert all(a[s] != c[s] for s in a)


def test_shrinking_the_plan_is_refused_unless_replace_is_given(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=6, shard_size=2)
    run_build(cfg)
    before = dataset_rows(cfg.out)
    smaller = demo_config(tmp_path / "root", limit=3, shard_size=2)
    with pytest.raises(WithdrawalRefused) as refused:
        run_build(smaller)
    message = str(refused.value)
    assert "nothing was written" in message and "--limit 3" in message and "--replace" in message
    assert (
        "seeds: 2 shard(s) (1: the new plan puts other images in them; 2: not in the new plan) holding 4 images"
        in message
    )
    assert {w.stage for w in refused.value.withdrawn} == {"seeds", "regions", "teacher", "filters"}
    assert dataset_rows(cfg.out) == before  # nothing was written, nothing withdrawn
    run_build(smaller, replace=True)
    con = connect(cfg.out)
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(3,)]
    assert con.sql("SELECT count(DISTINCT image_id) FROM regions").fetchall() == [(3,)]


def test_growing_the_plan_or_changing_settings_withdraws_nothing(tmp_path):
    run_build(demo_config(tmp_path / "root", limit=3, shard_size=2))
    run_build(demo_config(tmp_path / "root", limit=4, shard_size=2))  # shard 1 gains an image
    run_build(demo_config(tmp_path / "root", limit=4, shard_size=2, teacher={"max_subjects": 2}))
    assert connect(str(tmp_path / "root")).sql("SELECT count(*) FROM images").fetchall() == [(4,)]


def test_skipping_a_stage_is_refused_unless_replace_is_given(tmp_path):
    cfg = demo_config(tmp_path / "root", limit=2, shard_size=2)
    run_build(cfg)
    assert connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0] > 0
    skipping = demo_config(tmp_path / "root", limit=2, shard_size=2, teacher={"backend": "none"})
    with pytest.raises(
        WithdrawalRefused, match=r"teacher: 1 shard\(s\) \(0: the stage no longer runs"
    ):
        run_build(skipping)
    assert connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall()[0][0] > 0
    run_build(skipping, replace=True)
    assert connect(cfg.out).sql("SELECT count(*) FROM relations").fetchall() == [(0,)]


def test_the_refusal_names_what_the_rows_cost(tmp_path):
    from synthvg.pipeline import planned_withdrawal
    from synthvg.stages import plan_build
    from synthvg.storage import Dataset
    from synthvg.storage.dataset import utcnow

    cfg = demo_config(tmp_path / "root", limit=2, shard_size=2)
    run_build(cfg)
    ds = Dataset(cfg.out)
    # a paid teacher shard records what it spent in its commit record
    ds.commit_shard(
        "teacher",
        0,
        "fp",
        {},
        run_id="r",
        image_count=2,
        started_at=utcnow(),
        metrics={"cost_usd": 0.25},
    )
    skipping = demo_config(tmp_path / "root", limit=2, shard_size=2, teacher={"backend": "none"})
    (teacher,) = [
        w
        for w in planned_withdrawal(ds, skipping, plan_build(skipping, "r"))
        if w.stage == "teacher"
    ]
    assert teacher.cost_usd == 0.25 and "$0.2500 was spent on them" in teacher.describe()


def test_shards_run_with_fewer_collections_and_the_threshold_comes_back(tmp_path, monkeypatch):
    """A stage sees the raised threshold; concurrent shards nest; the caller's is restored."""
    import gc
    import threading

    from synthvg.pipeline import SHARD_GC_THRESHOLD, fewer_collections
    from synthvg.stages.teacher import TeacherStage

    seen = []
    original = TeacherStage.process

    def process(self, shard, inputs, ctx):
        seen.append(gc.get_threshold()[0])
        return original(self, shard, inputs, ctx)

    monkeypatch.setattr(TeacherStage, "process", process)
    before = gc.get_threshold()
    gc.set_threshold(900, *before[1:])
    try:
        run_build(demo_config(tmp_path / "root", limit=2, regions={"proposer": "none"}))
        assert seen == [SHARD_GC_THRESHOLD] and gc.get_threshold()[0] == 900

        inside, release = threading.Event(), threading.Event()

        def hold():
            with fewer_collections():
                inside.set()
                release.wait(5)

        other = threading.Thread(target=hold)
        other.start()
        inside.wait(5)
        with fewer_collections():
            pass  # this shard ends first: the other still runs with the raised threshold
        assert gc.get_threshold()[0] == SHARD_GC_THRESHOLD
        release.set()
        other.join(5)
        assert gc.get_threshold()[0] == 900
    finally:
        gc.set_threshold(*before)
