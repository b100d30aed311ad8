"""Spatial rules on hand-made geometry, their symmetry properties, VQA verification, the stage."""

from __future__ import annotations

import json
import secrets
import string

import pytest
from helpers import demo_config
from hypothesis import given, settings
from hypothesis import strategies as st

from synthvg.llm.testing import FakeOpenAIServer, Reply, last_user_text
from synthvg.models.spatial_rules import RULES, Context, Geom, check
from synthvg.models.vqa import combine, p_yes_from_logprobs, p_yes_from_text
from synthvg.pipeline import run_build
from synthvg.schemas import Box
from synthvg.schemas.config import SpatialRulesConfig
from synthvg.storage import connect

W, H = 200, 100
CFG = SpatialRulesConfig()


def g(x1, y1, x2, y2, depth=None) -> Geom:
    box = Box(x1=x1, y1=y1, x2=x2, y2=y2)
    return Geom(box, box.area, None, depth)


def decide(pred, s, o, **cover) -> str:
    return check(pred, s, o, Context(W, H, CFG, **cover)).decision


@pytest.mark.parametrize(
    ("pred", "s", "o", "cover", "expected"),
    [
        ("left of", g(10, 40, 30, 60), g(150, 40, 170, 60), {}, "keep"),
        ("left of", g(150, 40, 170, 60), g(10, 40, 30, 60), {}, "drop"),
        ("left of", g(99, 40, 101, 60), g(100, 0, 102, 99), {}, "abstain"),  # centres 1px apart
        ("right of", g(150, 40, 170, 60), g(10, 40, 30, 60), {}, "keep"),
        ("above", g(50, 0, 60, 10), g(50, 80, 60, 95), {}, "keep"),
        ("below", g(50, 0, 60, 10), g(50, 80, 60, 95), {}, "drop"),
        ("on", g(40, 20, 60, 42), g(20, 40, 120, 90), {}, "keep"),  # cup on table
        ("on", g(40, 70, 60, 99), g(20, 10, 120, 50), {}, "drop"),  # subject below
        ("on", g(150, 10, 160, 42), g(20, 40, 120, 90), {}, "drop"),  # beside, no overlap
        ("on", g(40, 0, 60, 8), g(20, 40, 120, 90), {}, "abstain"),  # floating far above
        ("under", g(20, 40, 120, 90), g(40, 20, 60, 42), {}, "keep"),
        ("inside", g(40, 40, 50, 50), g(0, 0, 100, 100), {"s_in_o": 0.95, "o_in_s": 0.01}, "keep"),
        ("inside", g(40, 40, 50, 50), g(0, 0, 100, 100), {"s_in_o": 0.05, "o_in_s": 0.0}, "drop"),
        (
            "inside",
            g(40, 40, 50, 50),
            g(0, 0, 100, 100),
            {"s_in_o": 0.5, "o_in_s": 0.01},
            "abstain",
        ),
        ("inside", g(40, 40, 50, 50), g(0, 0, 100, 100), {}, "keep"),  # no masks: box cover
        (
            "contains",
            g(0, 0, 100, 100),
            g(40, 40, 50, 50),
            {"s_in_o": 0.01, "o_in_s": 0.95},
            "keep",
        ),
        ("in front of", g(0, 0, 10, 10, depth=0.9), g(20, 0, 30, 10, depth=0.2), {}, "keep"),
        ("in front of", g(0, 0, 10, 10, depth=0.2), g(20, 0, 30, 10, depth=0.9), {}, "drop"),
        ("in front of", g(0, 0, 10, 10), g(20, 0, 30, 10), {}, "abstain"),  # no depth
        ("behind", g(0, 0, 10, 10, depth=0.2), g(20, 0, 30, 10, depth=0.9), {}, "keep"),
        ("next to", g(10, 40, 30, 60), g(31, 40, 50, 60), {}, "keep"),
        ("next to", g(0, 0, 10, 10), g(180, 80, 200, 100), {}, "drop"),
        ("near", g(10, 40, 30, 60), g(40, 40, 50, 60), {}, "keep"),
        ("near", g(0, 0, 10, 10), g(180, 80, 200, 100), {}, "drop"),
        ("far from", g(0, 0, 10, 10), g(180, 80, 200, 100), {}, "keep"),
        ("far from", g(10, 40, 30, 60), g(31, 40, 50, 60), {}, "drop"),
        ("left of", g(10, 40, 10, 60), g(150, 40, 170, 60), {}, "abstain"),  # zero-width box
    ],
)
def test_rules_on_hand_made_geometry(pred, s, o, cover, expected):
    assert decide(pred, s, o, **cover) == expected


def test_every_rule_reports_a_reason_and_unknown_predicates_have_none():
    for pred in RULES:
        r = check(
            pred, g(10, 10, 40, 40, 0.5), g(60, 50, 90, 90, 0.1), Context(W, H, CFG, 0.0, 0.0)
        )
        assert r.reason and r.rule
    assert check("orbiting", g(0, 0, 1, 1), g(2, 2, 3, 3), Context(W, H, CFG)) is None


boxes = st.tuples(st.floats(0, 180), st.floats(0, 80), st.floats(2, 20), st.floats(2, 20)).map(
    lambda t: g(t[0], t[1], t[0] + t[2], t[1] + t[3])
)


def mirror(x: Geom) -> Geom:
    return g(W - x.box.x2, x.box.y1, W - x.box.x1, x.box.y2)


@settings(max_examples=200, deadline=None)
@given(boxes, boxes)
def test_left_of_kept_means_reverse_dropped_and_mirroring_swaps_sides(a, b):
    if decide("left of", a, b) == "keep":
        assert decide("left of", b, a) == "drop"
        assert decide("right of", b, a) == "keep"
        assert decide("right of", mirror(a), mirror(b)) == "keep"
        assert decide("left of", mirror(a), mirror(b)) == "drop"
    if decide("above", a, b) == "keep":
        assert decide("above", b, a) == "drop" and decide("below", b, a) == "keep"


@settings(max_examples=100, deadline=None)
@given(boxes, boxes)
def test_near_and_far_from_never_both_kept(a, b):
    assert not (decide("near", a, b) == "keep" and decide("far from", a, b) == "keep")


def test_p_yes_from_logprobs_and_text():
    lp = {
        "content": [
            {
                "token": "Yes",
                "logprob": -0.1,
                "top_logprobs": [
                    {"token": "Yes", "logprob": -0.1},
                    {"token": "No", "logprob": -2.4},
                ],
            }
        ]
    }
    p = p_yes_from_logprobs(lp)
    assert 0.85 < p < 0.95
    assert (
        p_yes_from_logprobs({"content": [{"token": "Maybe", "logprob": -0.1, "top_logprobs": []}]})
        is None
    )
    assert (
        p_yes_from_text("Yes.") == 1.0
        and p_yes_from_text("no") == 0.0
        and p_yes_from_text("perhaps") is None
    )


def test_votes():
    assert combine([("a", 0.9, 0.5), ("b", 0.8, 0.5)], "all")[0] == "kept"
    assert combine([("a", 0.9, 0.5), ("b", 0.2, 0.5)], "all")[0] == "dropped"
    assert combine([("a", 0.9, 0.5), ("b", 0.2, 0.5)], "any")[0] == "kept"
    assert combine([("a", 0.9, 0.5), ("b", 0.2, 0.5), ("c", 0.1, 0.5)], "majority")[0] == "dropped"
    assert combine([("a", 0.9, 0.5), ("b", 0.3, 0.5)], "mean")[0] == "kept"
    assert combine([("a", None, 0.5), ("b", TimeoutError("slow"), 0.5)], "all")[0] == "unverified"
    assert combine([("a", 0.9, 0.5), ("b", None, 0.5)], "all")[0] == "unverified"


def test_demo_build_has_kept_dropped_and_unverified_spatial_relations_with_reasons(tmp_path):
    # all 38 images; the CPU proposer is skipped here only to keep the test fast
    cfg = demo_config(tmp_path / "root", shard_size=19, regions={"proposer": "none"})
    run_build(cfg)
    con = connect(cfg.out)
    rows = dict(con.sql("SELECT verdict, count(*) FROM relations GROUP BY 1").fetchall())
    assert rows.get("kept", 0) > 0 and rows.get("dropped", 0) > 0
    assert con.sql(
        "SELECT count(*) FROM relations WHERE verdict_reason IS NULL OR verified_by IS NULL"
    ).fetchall() == [(0,)]
    kept = con.sql("SELECT count(*) FROM svg_relations").fetchall()[0][0]
    assert kept == rows["kept"]
    from synthvg.stats import compute_stats, format_stats

    stats = compute_stats(cfg.out)
    by_rule = {r["rule"]: r for r in stats["verdicts_by_rule"]}
    assert sum(r["dropped"] for r in by_rule.values()) == rows["dropped"]
    assert all(rule.startswith("rule:") or rule == "filters" for rule in by_rule)
    assert "verdicts by rule or verifier" in format_stats(stats)


KEY_ENV = "SYNTHVG_TEST_VQA_KEY"


def vqa_answer(request):
    """'yes' for interactional questions about 'holding', 'no' otherwise, with logprobs."""
    text = last_user_text(request)
    yes = "holding" in text
    return Reply(
        content="Yes" if yes else "No",
        top_logprobs=[("Yes", -0.05 if yes else -3.0), ("No", -3.0 if yes else -0.05)],
    )


def scripted_teacher(request) -> str:
    import re

    ids = [int(m) for m in re.findall(r"^(\d+): ", last_user_text(request), re.M)]
    s, o = ids[0], ids[1]
    return json.dumps(
        {
            "subjects": [
                {
                    "subject_id": s,
                    "description": "a thing",
                    "spatial": [{"object_id": o, "predicate": "orbiting"}],
                    "interactional": [{"object_id": o, "predicate": "holding"}],
                    "functional": [{"object_id": o, "predicate": "feeding"}],
                    "social": [],
                    "emotional": [],
                }
            ]
        }
    )


def test_vqa_verifier_through_the_openai_client_with_logprobs(tmp_path, monkeypatch):
    monkeypatch.setenv(
        KEY_ENV, "sk-test-" + "".join(secrets.choice(string.ascii_letters) for _ in range(40))
    )
    common = {"api_key_env": KEY_ENV, "timeout_seconds": 5, "backoff_base_seconds": 0.01}
    with (
        FakeOpenAIServer(responder=scripted_teacher) as teacher,
        FakeOpenAIServer(responder=vqa_answer) as vlm,
    ):
        vlm.enqueue(Reply.server_error())  # one transient fault, retried
        cfg = demo_config(
            tmp_path / "root",
            limit=3,
            shard_size=3,
            teacher={
                "backend": "openai",
                "model": "gpt-4o",
                "base_url": teacher.base_url,
                **common,
            },
            filters={
                "backend": "rules",
                "verifiers": [
                    {"kind": "openai", "model": "qwen2-vl", "base_url": vlm.base_url, **common}
                ],
            },
        )
        run = run_build(cfg)
        assert run.status == "completed"
        asked = vlm.chat_requests
        assert asked and all(r["logprobs"] is True and r["max_tokens"] == 1 for r in asked)
    con = connect(cfg.out)
    got = dict(
        con.sql("SELECT predicate, verdict FROM relations WHERE stage = 'teacher'").fetchall()
    )
    assert got == {"holding": "kept", "feeding": "dropped", "orbiting": "unverified"}
    by = dict(con.sql("SELECT predicate, verified_by FROM relations").fetchall())
    assert by["holding"] == "vqa:qwen2-vl" and by["orbiting"] == "filters"
    score = con.sql("SELECT verdict_score FROM relations WHERE predicate = 'holding'").fetchall()[
        0
    ][0]
    assert score > 0.9


def test_verifier_that_answers_neither_leaves_relations_unverified(tmp_path, monkeypatch):
    monkeypatch.setenv(
        KEY_ENV, "sk-test-" + "".join(secrets.choice(string.ascii_letters) for _ in range(40))
    )
    common = {"api_key_env": KEY_ENV, "timeout_seconds": 5, "backoff_base_seconds": 0.01}
    with (
        FakeOpenAIServer(responder=scripted_teacher) as teacher,
        FakeOpenAIServer(responder=lambda r: "Perhaps") as vlm,
    ):
        cfg = demo_config(
            tmp_path / "root",
            limit=3,
            shard_size=3,
            teacher={
                "backend": "openai",
                "model": "gpt-4o",
                "base_url": teacher.base_url,
                **common,
            },
            filters={
                "backend": "rules",
                "verifiers": [
                    {
                        "kind": "openai",
                        "model": "v",
                        "base_url": vlm.base_url,
                        "logprobs": False,
                        **common,
                    }
                ],
            },
        )
        run_build(cfg)
    reasons = (
        connect(cfg.out)
        .sql("SELECT verdict, verdict_reason FROM relations WHERE category <> 'spatial'")
        .fetchall()
    )
    assert reasons and all(v == "unverified" and "neither yes nor no" in r for v, r in reasons)
