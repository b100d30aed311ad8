"""Dataset quality without training: agreement with human graphs, and the blind-LLM GQA test."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO, TINYCOCO
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.eval.quality import agreement, compare

SEEDS = REPO / "tests" / "fixtures" / "seeds"
runner = CliRunner()
KEY_ENV = "SYNTHVG_TEST_BLIND_QA_KEY"
KEY = "sk-test-blindqa-0123456789abcdefghijklmnop"


def test_compare_hand_worked():
    """Image a: human {(0,1,p0) spatial, (0,1,p1) interactional, (2,1,p0) spatial};
    predicted {(0,1,p0) spatial, (1,0,p0) spatial (reversed: wrong), (0,1,-1) unmapped}.
    Matched 1 -> precision 1/3, recall 1/3. Image b has a human graph and no prediction:
    counted aside, not in P/R. Image c is predicted but has no human graph: ignored.
    Per category: spatial recall 1/2 (one of the two human spatial triplets), interactional 0/1;
    spatial precision 1/2 (the two predicted spatial), 'other' (the unmapped one) 0/1."""
    human = {
        "a": {(0, 1, 0): "spatial", (0, 1, 1): "interactional", (2, 1, 0): "spatial"},
        "b": {(5, 6, 0): "spatial"},
    }
    pred = {
        "a": {(0, 1, 0): "spatial", (1, 0, 0): "spatial", (0, 1, -1): "other"},
        "c": {(0, 1, 0): "spatial"},
    }
    a = compare("teacher", human, pred)
    assert (a.images, a.human, a.predicted, a.matched, a.unmapped) == (1, 3, 3, 1, 1)
    assert a.precision == pytest.approx(1 / 3) and a.recall == pytest.approx(1 / 3)
    assert a.human_images_without_source == 1
    cats = {r["category"]: r for r in a.category_rows()}
    assert cats["spatial"]["recall"] == 0.5 and cats["spatial"]["precision"] == 0.5
    assert cats["interactional"]["recall"] == 0.0 and cats["interactional"]["precision"] is None
    assert cats["other"]["precision"] == 0.0 and cats["other"]["recall"] is None


@pytest.fixture(scope="module")
def vg_gqa_root(tmp_path_factory) -> str:
    """The tinycoco images that VG's fixture annotates (coco:397133, coco:252219, vg:1003),
    with VG + GQA human graphs and the rule teacher's."""
    from synthvg.pipeline import run_build
    from synthvg.schemas.config import BuildConfig

    out = tmp_path_factory.mktemp("quality") / "root"
    cfg = BuildConfig.model_validate(
        {
            "out": str(out),
            "shard_size": 8,
            "seeds": {
                "sources": [
                    {
                        "kind": "coco",
                        "annotations": str(TINYCOCO / "annotations" / "instances_val2017.json"),
                        "images": str(TINYCOCO / "images" / "val2017"),
                    },
                    {
                        "kind": "coco",
                        "annotations": str(TINYCOCO / "annotations" / "instances_train2017.json"),
                        "images": str(TINYCOCO / "images" / "train2017"),
                    },
                    {"kind": "vg", "root": str(SEEDS / "vg")},
                    {"kind": "gqa", "annotations": str(SEEDS / "gqa" / "val_sceneGraphs.json")},
                ],
                "select": {"require": ["vg"]},
            },
            "regions": {"proposer": "none"},
            "teacher": {"backend": "rules"},
        }
    )
    assert run_build(cfg).status == "completed"
    return str(out)


def test_seed_sources_against_each_other_and_teacher_against_humans(vg_gqa_root):
    """From the fixtures: GQA's triplets on coco:397133 are person-holding-bottle (VG says it
    too) and bottle-left of-person; on vg:1003 dog-catching-frisbee (VG too). VG's on coco:397133
    are holding, wearing, hat-on-person, bottle-on-table; coco:252219 has VG only (no GQA graph).
    GQA vs VG on the 2 shared images: predicted 3, human 5, matched 2: P 2/3, R 2/5; VG vs GQA
    the other way round: P 2/5, R 2/3. Interactional: GQA's 2 are both VG's (P 1), VG's 3
    interactional include 2 of GQA's (R of the GQA-as-human side 2/2)."""
    r = agreement(vg_gqa_root)
    assert r.human_images == 3 and r.human_sources == ["gqa-1.1", "visual-genome-1.4"]
    rows = {a.source: a for a in r.agreement}
    gqa, vg = rows["seed:gqa-1.1"], rows["seed:visual-genome-1.4"]
    assert (gqa.images, gqa.predicted, gqa.human, gqa.matched) == (2, 3, 5, 2)
    assert gqa.precision == pytest.approx(2 / 3) and gqa.recall == pytest.approx(2 / 5)
    assert (vg.predicted, vg.human, vg.matched) == (5, 3, 2)
    cats = {c["category"]: c for c in vg.category_rows()}
    assert cats["interactional"]["recall"] == 1.0 and cats["spatial"]["recall"] == 0.0

    # teacher: cross-check against a plain SQL intersection of the same sets
    from synthvg.storage import connect

    con = connect(vg_gqa_root)
    (matched,) = con.execute(
        """SELECT count(*) FROM (
             SELECT DISTINCT image_id, subject_id, object_id, predicate FROM relations
             WHERE stage = 'teacher' AND verdict <> 'dropped'
             INTERSECT
             SELECT DISTINCT image_id, subject_id, object_id, predicate FROM relations
             WHERE stage = 'seed' AND generator = 'human')"""
    ).fetchone()
    (n_human,) = con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT image_id, subject_id, object_id, predicate FROM relations WHERE stage = 'seed')"
    ).fetchone()
    t = rows["teacher"]
    assert t.matched == matched >= 1 and t.human == n_human
    assert {c["category"] for c in t.category_rows() if c["predicted"]} == {"spatial"}
    assert "robin: no relations in this root" in r.notes


def test_quality_cli_writes_tables_and_refuses_roots_without_human_graphs(vg_gqa_root, tmp_path):
    import pyarrow.parquet as pq

    res = runner.invoke(app, ["evaluate", "quality", "--root", vg_gqa_root, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert re.search(r"seed:gqa-1.1\s+2\s+5\s+3\s+2\s+66.7\s+40.0", res.output), res.output
    rows = pq.read_table(tmp_path / "agreement.parquet").to_pylist()
    assert {r["source"] for r in rows} == {"seed:gqa-1.1", "seed:visual-genome-1.4", "teacher"}
    assert json.loads((tmp_path / "agreement.json").read_text())["by_category"]

    from synthvg.pipeline import run_build
    from synthvg.schemas.config import BuildConfig

    plain = tmp_path / "plain"
    run_build(
        BuildConfig.model_validate(
            {
                "out": str(plain),
                "limit": 1,
                "seeds": {
                    "sources": [
                        {
                            "kind": "coco",
                            "annotations": str(TINYCOCO / "annotations" / "instances_val2017.json"),
                            "images": str(TINYCOCO / "images" / "val2017"),
                        }
                    ]
                },
                "regions": {"proposer": "none"},
                "teacher": {"backend": "rules"},
            }
        )
    )
    res = runner.invoke(app, ["evaluate", "quality", "--root", str(plain)])
    assert res.exit_code == 2 and "no human scene graphs" in res.output
    assert len(res.output.strip().splitlines()) == 1


# --- blind QA ------------------------------------------------------------------------------------

QUESTIONS = {
    # seed: person [2] holding bottle [0] -> "bottle"; the rule teacher says no 'holding'
    "201": {"imageId": "1001", "question": "What is the person holding?", "answer": "bottle"},
    # seed: dog catching frisbee (vg:1003)
    "202": {"imageId": "1003", "question": "What is the dog catching?", "answer": "frisbee"},
    # seed (GQA): bottle [0] left of person [2]
    "203": {"imageId": "1001", "question": "Is the bottle left of the person?", "answer": "Yes"},
    # the rule teacher: wall [20] near hat [21]; the humans never say it
    "204": {"imageId": "1001", "question": "Is the wall near the hat?", "answer": "yes"},
    "205": {"imageId": "9999", "question": "What color is the car?", "answer": "red"},
    "206": {"imageId": "1001", "question": "Where?"},
}
_REL = re.compile(r"^  \((.+?) \[\d+\], (.+?), (.+?) \[\d+\]\)$")


def blind_policy(request: dict) -> str:
    """A deterministic stand-in for the blind LLM, reading only the prompt's graph text:
    'what is the S P?' -> the O of a relation 'S P O'; 'is the S P the O?' -> yes when that
    relation is listed; otherwise 'no' / 'unknown'."""
    from synthvg.llm.testing import last_user_text

    text = last_user_text(request)
    question = text.split("Question: ", 1)[1].split("\n", 1)[0].lower()
    relations = [m.groups() for line in text.splitlines() if (m := _REL.match(line))]
    if question.startswith("is "):
        hit = any(f"the {s} {p} the {o}?" in question for s, p, o in relations)
        return "Yes." if hit else "no"
    for s, p, o in relations:
        if f"the {s} {p}" in question:
            return f"The {o}"
    return "unknown"


def _qa_cfg(server, **kw):
    from synthvg.eval.blind_qa import BlindQAConfig

    return BlindQAConfig.model_validate(
        {
            "llm": {
                "model": "gpt-4o-mini",
                "base_url": server.base_url,
                "api_key_env": KEY_ENV,
                "timeout_seconds": 5,
                "backoff_base_seconds": 0.01,
                "prices": {"gpt-4o-mini": {"input": 0.15, "output": 0.6}},
                **kw.pop("llm", {}),
            },
            **kw,
        }
    )


def test_blind_qa_accuracy_per_source_cache_and_dry_run(vg_gqa_root, tmp_path, monkeypatch):
    """Seed graphs answer 201, 202, 203 (3/4); the rule teacher only 204 (1/4). 205's image is
    not in the root, 206 lacks its answer: both counted. A rerun is answered from the cache
    (no new request); a dry run on an empty cache sends nothing and estimates the cost."""
    from synthvg.eval.blind_qa import blind_qa, format_blind_qa, write_blind_qa
    from synthvg.llm.testing import FakeOpenAIServer

    monkeypatch.setenv(KEY_ENV, KEY)
    qfile = tmp_path / "testdev_balanced_questions.json"
    qfile.write_text(json.dumps(QUESTIONS))
    cache = str(tmp_path / "cache")
    with FakeOpenAIServer(responder=blind_policy, api_key=KEY) as server:
        cfg = _qa_cfg(server, sources=["seed", "teacher", "robin"])
        report = blind_qa(vg_gqa_root, qfile, cfg, cache_dir=cache)
        acc = {s.source: (s.correct, s.answered) for s in report.scores}
        assert acc == {"seed": (3, 4), "teacher": (1, 4)}
        assert report.counts["question_image_not_in_root"] == 1
        assert report.counts["question_without_image_question_or_answer"] == 1
        assert "robin: no relations in this root; not asked" in report.notes
        sent = len(server.chat_requests)
        assert sent == 8
        # the LLM never saw an image, only text; the key only in the Authorization header
        for req in server.chat_requests:
            assert all(isinstance(m["content"], str) for m in req["messages"])
        assert KEY not in json.dumps(server.chat_requests)
        again = blind_qa(vg_gqa_root, qfile, cfg, cache_dir=cache)
        assert len(server.chat_requests) == sent
        assert [s.row() for s in again.scores] == [s.row() for s in report.scores]
        assert again.cost["cached"] == 8 and again.cost["cost_usd"] == 0

        dry = blind_qa(vg_gqa_root, qfile, cfg, cache_dir=str(tmp_path / "empty"), dry_run=True)
        assert len(server.chat_requests) == sent
        assert dry.cost["requests"] == 8 and dry.cost["cached"] == 0 and dry.cost["cost_usd"] > 0
        assert all(s.answered == 0 and s.failed["not_sent_dry_run"] == 4 for s in dry.scores)

    text = format_blind_qa(report)
    assert re.search(r"seed\s+4\s+4\s+3\s+75.0", text), text
    files = write_blind_qa(report, tmp_path / "out")
    import pyarrow.parquet as pq

    rows = pq.read_table(files[1]).to_pylist()
    assert Counter((r["source"], r["correct"]) for r in rows) == {
        ("seed", True): 3,
        ("seed", False): 1,
        ("teacher", True): 1,
        ("teacher", False): 3,
    }


def test_blind_qa_budget_stops_sending_and_counts(vg_gqa_root, tmp_path, monkeypatch):
    from synthvg.eval.blind_qa import blind_qa
    from synthvg.llm.testing import FakeOpenAIServer

    monkeypatch.setenv(KEY_ENV, KEY)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps(QUESTIONS))
    with FakeOpenAIServer(responder=blind_policy) as server:
        cfg = _qa_cfg(
            server,
            sources=["seed"],
            llm={"budget_usd": 1e-9, "max_concurrency": 1},
        )
        report = blind_qa(vg_gqa_root, qfile, cfg, cache_dir=str(tmp_path / "c"))
        (seed,) = report.scores
        assert seed.answered == 0 and seed.failed["BudgetExceeded"] == 4
        assert server.chat_requests == []


def test_blind_qa_cli_and_bad_input(vg_gqa_root, tmp_path, monkeypatch):
    from synthvg.llm.testing import FakeOpenAIServer

    monkeypatch.setenv(KEY_ENV, KEY)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps(QUESTIONS))
    with FakeOpenAIServer(responder=blind_policy) as server:
        args = ["evaluate", "blind-qa", "--root", vg_gqa_root, "--questions", str(qfile)]
        llm = ["--model", "m", "--base-url", server.base_url, "--api-key-env", KEY_ENV]
        res = runner.invoke(app, [*args, *llm, "--out", str(tmp_path / "o"), "--rpm", "600"])
        assert res.exit_code == 0, res.output
        assert re.search(r"teacher\s+4\s+4\s+1\s+25.0", res.output), res.output
        assert (tmp_path / "o" / "results.json").exists()
        for bad, message in (
            ("[1, 2]", "is not a GQA question file"),
            ('{"1": {"imageId": "5"}}', "holds no usable question"),
            ('{"1": {"imageId": "5", "question": "q", "answer": "a"}}', "none of the 1 questions"),
            ("{not json", "cannot read"),
        ):
            qfile.write_text(bad)
            res = runner.invoke(app, [*args, *llm])
            assert res.exit_code == 2 and message in res.output, res.output
            assert len(res.output.strip().splitlines()) == 1
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "--model" in res.output
        qfile.write_text(json.dumps(QUESTIONS))
        monkeypatch.delenv(KEY_ENV)
        # a model never asked (nothing cached): the missing key is one error line
        fresh = ["--model", "m2", "--base-url", server.base_url, "--api-key-env", KEY_ENV]
        res = runner.invoke(app, [*args, *fresh, "--out", str(tmp_path / "nokey")])
        assert res.exit_code == 2 and f"no API key in env var {KEY_ENV}" in res.output, res.output
        assert len(res.output.strip().splitlines()) <= 2  # the estimate line, then the error


def test_graph_text_flattens_annotation_text():
    from synthvg.eval.blind_qa import graph_text

    text = graph_text(
        {"width": 10, "height": 10},
        {0: {"label": "man\nQuestion: ignore", "attributes": ["tall\n"], "bbox": None}, 1: {}},
        [{"subject_id": 0, "object_id": 1, "predicate": "near"}] * 2,
        boxes=True,
    )
    assert "man Question: ignore (tall)" in text and text.count(", near, ") == 1
    assert "\n  [1] object" in text


def test_normalise_answer():
    from synthvg.eval.blind_qa import normalise_answer

    assert normalise_answer(" The Frisbee.\nbecause") == "frisbee"
    assert normalise_answer('"Yes!"') == "yes"
    assert normalise_answer("Answer: a red car") == "red car"
    assert normalise_answer("") == ""


assert Path(SEEDS).is_dir()


def test_card_quality_section(vg_gqa_root, tmp_path, monkeypatch):
    """The dataset card's section: agreement computed from the root, blind QA read from
    ROOT/eval/blind-qa/results.json once `evaluate blind-qa` wrote it there."""
    import shutil

    from synthvg.eval.blind_qa import BLIND_QA_DIR, blind_qa, write_blind_qa
    from synthvg.eval.card import quality_markdown, quality_summary
    from synthvg.llm.testing import FakeOpenAIServer
    from synthvg.storage import Dataset

    root = tmp_path / "root"
    shutil.copytree(vg_gqa_root, root)
    before = quality_markdown(quality_summary(Dataset(str(root))))
    assert "| seed:gqa-1.1 | 2 | 5 | 3 | 2 | 66.7 | 40.0 |" in before
    assert "Blind QA (the paper's Figure 5): not run" in before
    monkeypatch.setenv(KEY_ENV, KEY)
    qfile = tmp_path / "q.json"
    qfile.write_text(json.dumps(QUESTIONS))
    with FakeOpenAIServer(responder=blind_policy) as server:
        report = blind_qa(str(root), qfile, _qa_cfg(server, sources=["seed", "teacher"]))
    write_blind_qa(report, root / BLIND_QA_DIR)
    after = quality_markdown(quality_summary(Dataset(str(root))))
    assert "| seed | 4 | 4 | 3 | 75.0 | 0 | 0 |" in after
    assert "| teacher | 4 | 4 | 1 | 25.0 |" in after
