"""SG-EDIT: the editor against a local OpenAI-protocol server, and the pure edit application."""

from __future__ import annotations

import shutil

import pytest
from edit_scripts import CAPTION, KEY, KEY_ENV, MODEL, edit_config, scripted_editor
from helpers import demo_config
from hypothesis import given, settings
from hypothesis import strategies as st

from synthvg.llm.testing import FakeOpenAIServer
from synthvg.models.llm_editor import EditAnswer, requested_edits, validate_edits
from synthvg.models.scene_graph import Edit, apply_edits, build_graph, has_relation
from synthvg.pipeline import fingerprints, run_build
from synthvg.schemas.config import ConfigError, load_config
from synthvg.stages import ShardSpec
from synthvg.stages.base import RunContext, StageInputs, StageOutput
from synthvg.stages.edit import EditStage
from synthvg.storage import Dataset, connect, fetch_dicts, query
from synthvg.storage.dataset import utcnow


def _rows(cfg, sql):
    return fetch_dicts(connect(cfg.out), sql)


def test_valid_edits_are_applied_and_invalid_ones_logged_with_reasons(edit_build):
    cfg, run, _ = edit_build
    edit = next(s for s in run.stages if s.stage == "edit")
    assert run.status == "completed" and edit.status == "done"
    log = _rows(cfg, "SELECT * FROM edits")
    assert {r["reason"] for r in log if not r["applied"]} >= {
        "unknown_object_id",
        "unknown_target_id",
        "self_relation",
        "not_present",
        "unchanged",
    }
    assert {r["action"] for r in log if r["applied"]} == {"rename", "add", "remove", "same_as"}
    assert all(r["applied"] == (r["reason"] is None) for r in log)
    assert {(r["model"], r["source"]) for r in log} == {(MODEL, "teacher")}
    assert edit.metrics["edits_applied"] == sum(r["applied"] for r in log)

    full = {
        (r["image_id"], r["subject_id"], r["object_id"], r["predicate"])
        for r in _rows(cfg, "SELECT * FROM svg_full")
    }
    teacher = {
        (r["image_id"], r["subject_id"], r["object_id"], r["predicate"])
        for r in _rows(cfg, "SELECT * FROM relations WHERE stage = 'teacher'")
    }
    names = {
        (r["image_id"], r["region_id"]): r["description"]
        for r in _rows(cfg, "SELECT * FROM descriptions WHERE stage = 'edit'")
    }
    for r in log:
        triple = (r["image_id"], r["region_id"], r["object_id"], r["predicate"])
        if r["applied"] and r["action"] == "add":
            assert (
                triple in full
                and triple not in teacher
                and r["predicate"] == "looking at"
                and r["predicate_raw"] == "Looking AT"
            )
        if r["applied"] and r["action"] == "remove":
            assert triple in teacher and triple not in full
        if r["applied"] and r["action"] == "rename":
            assert names[(r["image_id"], r["region_id"])] == r["new_name"] != r["old_name"]
        if r["applied"] and r["action"] == "same_as":  # the duplicate is merged away
            gone = r["object_id"]
            assert (r["image_id"], gone) not in names
            assert not [t for t in full if t[0] == r["image_id"] and gone in t[1:3]]


def test_edit_rows_carry_provenance_and_svg_full_is_the_edited_graph(edit_build):
    cfg, _, _ = edit_build
    rows = _rows(
        cfg, "SELECT DISTINCT generator, model, prompt_version FROM relations WHERE stage = 'edit'"
    )
    assert len(rows) == 1 and rows[0]["generator"] == "model" and rows[0]["model"] == MODEL
    assert (
        rows[0]["prompt_version"].startswith("edit/v1@")
        and "+edit/caption_v1@" in rows[0]["prompt_version"]
    )
    con = connect(cfg.out)
    assert (
        con.sql("SELECT count(*) FROM svg_full").fetchall()
        == con.sql("SELECT count(*) FROM relations WHERE stage = 'edit'").fetchall()
    )
    # the analyst's question: what did the editor change, per action, applied or not
    by_action = query(
        cfg.out, "SELECT action, applied, count(*) AS n FROM edits GROUP BY ALL"
    ).to_pylist()
    assert {(r["action"], r["applied"]) for r in by_action} >= {
        ("add", True),
        ("add", False),
        ("remove", False),
    }


def test_the_editor_sees_caption_both_images_and_the_graph_and_a_bad_answer_fails_one_image(
    edit_build,
):
    cfg, _, requests = edit_build
    captions = [r for r in requests if "response_format" not in r]
    edits = [r for r in requests if "response_format" in r]
    assert (
        len(captions) == 4 and len(edits) == 5
    )  # 4 images; the single-region one got a repair request
    assert edits[0]["response_format"]["json_schema"]["name"] == "EditAnswer"
    assert edits[0]["temperature"] == 0.2
    user = edits[0]["messages"][1]["content"]
    assert [p["type"] for p in user] == ["text", "image_url", "image_url"]
    assert CAPTION in user[0]["text"] and "Image size (width, height)" in user[0]["text"]
    failed = _rows(cfg, "SELECT image_id FROM errors WHERE kind = 'edit_failed'")
    assert len(failed) == 1
    assert not _rows(
        cfg,
        f"SELECT * FROM descriptions WHERE stage = 'edit' AND image_id = '{failed[0]['image_id']}'",
    )


def test_the_key_is_in_no_written_file(edit_build):
    cfg, _, _ = edit_build
    written = [p for p in Dataset(cfg.out).fs.find(cfg.out)]
    assert any("cache" in p for p in written) and any(p.endswith(".parquet") for p in written)
    assert not [p for p in written if KEY.encode() in open(p, "rb").read()]


def test_dropped_relations_are_not_shown_to_the_editor(edit_build, tmp_path, monkeypatch):
    cfg, _, _ = edit_build
    monkeypatch.setenv(KEY_ENV, KEY)
    root = tmp_path / "copy"
    shutil.copytree(cfg.out, root)
    ds = Dataset(root)
    teacher = fetch_dicts(
        connect(ds), "SELECT * FROM relations WHERE stage = 'teacher' ORDER BY relation_id"
    )
    image_id = teacher[0]["image_id"]
    shard = next(
        s
        for s in range(2)
        if ds.read_shard_table("images", "seeds", s)["image_id"].to_pylist().count(image_id)
    )
    dropped = teacher[0]
    from synthvg.schemas import RelationVerdictRecord, to_table

    verdict = RelationVerdictRecord(
        relation_id=dropped["relation_id"],
        image_id=image_id,
        verdict="dropped",
        verdict_reason="test",
        verified_by="rule:test",
        run_id="r",
    )
    ds.commit_shard(
        "filters",
        shard,
        "f" * 64,
        {"relation_verdicts": to_table(RelationVerdictRecord, [verdict])},
        run_id="r",
        image_count=2,
        started_at=utcnow(),
    )
    writers = {
        "images": ["seeds"],
        "regions": ["seeds"],
        "region_checks": ["regions"],
        "relations": ["teacher"],
        "descriptions": ["teacher"],
        "relation_verdicts": ["filters"],
    }
    stage = EditStage(cfg.model_copy(update={"out": str(root)}))
    jobs = stage._jobs(
        StageInputs(ds, shard, writers), RunContext("r", "edit", shard), StageOutput()
    )
    graph = next(j.graph for j in jobs if j.image_id == image_id)
    assert not has_relation(
        graph, dropped["subject_id"], dropped["predicate"], dropped["object_id"]
    )
    kept = [r for r in teacher[1:] if r["image_id"] == image_id]
    assert kept and all(
        has_relation(graph, r["subject_id"], r["predicate"], r["object_id"]) for r in kept
    )


def test_budget_stops_the_edit_stage_cleanly_and_a_rerun_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor) as server:
        run = run_build(
            edit_config(tmp_path / "root", server, limit=2, shard_size=1, budget_usd=0.0)
        )
        edit = next(s for s in run.stages if s.stage == "edit")
        assert (
            run.status == "failed" and edit.shards_failed == 2 and "BudgetExceeded" in edit.reason
        )
        assert server.chat_requests == []
        assert next(s for s in run.stages if s.stage == "teacher").status == "done"
        done = run_build(
            edit_config(tmp_path / "root", server, limit=2, shard_size=1, caption=False)
        )
        assert done.status == "completed" and len(server.chat_requests) >= 2
        assert all("response_format" in r for r in server.chat_requests)  # no caption asked
    assert connect(str(tmp_path / "root")).sql("SELECT count(*) FROM svg_full").fetchall()[0][0] > 0


def test_dry_run_prices_captions_and_edits_and_sends_nothing(tmp_path, monkeypatch):
    from synthvg.pipeline import dry_run

    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor) as server:
        report = dry_run(edit_config(tmp_path / "root", server, limit=2))
        assert server.requests == []
    assert report["edit"]["requests"] == 4 and report["edit"]["cost_usd"] > 0  # 2 captions, 2 edits


def test_source_config_default_skip_and_fingerprint(tmp_path):
    cfg = demo_config(tmp_path)
    assert cfg.edit.backend == "none" and EditStage.skip_reason(cfg).startswith("no edit backend")
    base = {"backend": "openai", "model": MODEL}
    robin = demo_config(tmp_path, edit={**base, "source": "robin"})
    assert "there is no robin graph to edit" in EditStage.skip_reason(robin)
    assert EditStage.skip_reason(demo_config(tmp_path, edit={**base, "source": "union"})) is None
    shard = ShardSpec(index=0, image_ids=["coco:1"])
    fp = fingerprints(demo_config(tmp_path, edit={**base, "source": "teacher"}), shard)["edit"]
    assert (
        fingerprints(
            demo_config(
                tmp_path,
                edit={**base, "source": "teacher", "budget_usd": 5.0, "max_concurrency": 2},
            ),
            shard,
        )["edit"]
        == fp
    )
    assert (
        fingerprints(demo_config(tmp_path, edit={**base, "source": "union"}), shard)["edit"] != fp
    )
    assert (
        fingerprints(
            demo_config(tmp_path, edit={**base, "source": "teacher", "caption": False}), shard
        )["edit"]
        != fp
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "out: x\nseeds: {sources: [{annotations: a.json, images: i}]}\nedit: {backend: openai, model: m, source: vg}\n"
    )
    with pytest.raises(ConfigError, match="edit.openai.source"):
        load_config(bad)


# ---- the pure edit application ------------------------------------------------------------------

IDS = st.integers(0, 6)
PREDICATES = st.sampled_from(["on", "near", "holding", "left of", "", " "])


@st.composite
def graphs(draw):
    ids = sorted(draw(st.sets(IDS, min_size=1, max_size=5)))
    regions = [
        {"region_id": i, "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}, "label": f"obj{i}"}
        for i in ids
    ]
    triples = draw(st.lists(st.tuples(IDS, IDS, PREDICATES), max_size=12))
    return build_graph(regions, {}, triples)


EDITS = st.builds(
    Edit,
    action=st.sampled_from(["rename", "add", "remove", "same_as"]),
    subject_id=IDS,
    predicate=PREDICATES,
    object_id=IDS,
    name=st.sampled_from(["", "a red cup", "obj1"]),
)


def _is_normal(graph) -> bool:
    return all(
        p.strip()
        and targets
        and targets == sorted(set(targets))
        and s not in targets
        and set(targets) <= set(graph)
        for s, node in graph.items()
        for p, targets in node["rel"].items()
    )


@settings(max_examples=150, deadline=None)
@given(graphs(), st.lists(EDITS, max_size=8))
def test_apply_edits_returns_a_normal_graph_and_leaves_its_input_alone(graph, edits):
    before = repr(graph)
    out = apply_edits(graph, edits)
    assert _is_normal(out) and repr(graph) == before
    assert set(out) <= set(graph)


@settings(max_examples=150, deadline=None)
@given(graphs(), IDS, PREDICATES, IDS)
def test_removing_what_is_not_there_is_a_no_op(graph, s, p, o):
    if not has_relation(graph, s, p, o):
        assert apply_edits(graph, [Edit("remove", s, predicate=p, object_id=o)]) == graph


@settings(max_examples=150, deadline=None)
@given(graphs(), IDS, PREDICATES, IDS)
def test_add_then_remove_returns_the_original(graph, s, p, o):
    if has_relation(graph, s, p, o):
        return
    add, remove = (
        Edit("add", s, predicate=p, object_id=o),
        Edit("remove", s, predicate=p, object_id=o),
    )
    assert apply_edits(apply_edits(graph, [add]), [remove]) == graph
    assert apply_edits(graph, [add, remove]) == graph  # one answer: adds before removes


@settings(max_examples=150, deadline=None)
@given(graphs(), st.lists(EDITS, max_size=8))
def test_validation_rejects_only_edits_that_change_nothing(graph, edits):
    outcome = validate_edits(graph, [(e, e.predicate) for e in edits])
    assert outcome.graph == apply_edits(graph, outcome.applied) == apply_edits(graph, edits)
    assert all(e.applied != bool(e.reason) for e in outcome.log) and len(outcome.log) == len(edits)


def test_same_as_merges_the_duplicate_into_the_kept_object():
    regions = [
        {"region_id": i, "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}, "label": n}
        for i, n in enumerate(["man", "dog", "dog"])
    ]
    graph = build_graph(regions, {}, [(0, 2, "walking"), (2, 1, "near"), (1, 0, "near")])
    out = apply_edits(graph, [Edit("same_as", 1, object_id=2)])
    assert set(out) == {0, 1}
    assert out[0]["rel"] == {"walking": [1]} and out[1]["rel"] == {
        "near": [0]
    }  # 2 -near-> 1 became a self-loop: dropped


def test_requested_edits_normalise_predicates_and_read_same_as_as_a_merge():
    graph = build_graph(
        [{"region_id": i, "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1}} for i in range(3)],
        {},
        [(0, 1, "on")],
    )
    answer = EditAnswer.model_validate(
        {
            "edit": [
                {
                    "obj_id": 0,
                    "name": " ",
                    "add": [
                        {"rel": "On top of", "obj_ids": [2]},
                        {"rel": "Same as", "obj_ids": [1]},
                    ],
                    "remove": [{"rel": "on", "obj_ids": [1, 2]}],
                }
            ]
        }
    )
    got = [
        (e.action, e.subject_id, e.predicate, e.object_id)
        for e, _ in requested_edits(answer, graph)
    ]
    assert got == [
        ("add", 0, "on", 2),
        ("same_as", 0, "same as", 1),
        ("remove", 0, "on", 1),
        ("remove", 0, "on", 2),
    ]
    outcome = validate_edits(graph, requested_edits(answer, graph))
    assert [(e.edit.action, e.reason) for e in outcome.log] == [
        ("add", None),
        ("remove", None),
        ("remove", None),
        ("same_as", None),
    ]
    assert outcome.graph == {
        0: {"name": "object", "bbox": [0, 0, 1, 1], "rel": {}},
        2: {"name": "object", "bbox": [0, 0, 1, 1], "rel": {}},
    }


def test_batch_mode_sends_captions_then_edits_through_the_batch_api(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor, batch_polls=1) as server:
        run = run_build(
            edit_config(
                tmp_path / "root",
                server,
                limit=2,
                shard_size=2,
                batch=True,
                batch_poll_seconds=0.01,
            )
        )
        edit = next(s for s in run.stages if s.stage == "edit")
        assert (
            run.status == "completed"
            and edit.metrics["batched"] == 4
            and edit.metrics["captions"] == 2
        )
        assert len(server.batches) == 2  # the captions' batch, then the edits' batch
        assert (
            len(server.chat_requests) <= 1
        )  # answers came from the batches; at most one online repair
    assert connect(str(tmp_path / "root")).sql("SELECT count(*) FROM edits").fetchall()[0][0] > 0


@pytest.mark.slow
def test_prefect_build_with_the_editor(prefect_server, tmp_path, monkeypatch):
    from synthvg.flows import build_dataset

    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor) as server:
        run = build_dataset(edit_config(tmp_path / "root", server))
    edit = next(s for s in run.stages if s.stage == "edit")
    assert (
        edit.status == "done" and edit.metrics["edits_applied"] > 0 and edit.metrics["cost_usd"] > 0
    )
    assert connect(str(tmp_path / "root")).sql("SELECT count(*) FROM svg_full").fetchall()[0][0] > 0
