"""The openai teacher backend end to end against a local OpenAI-protocol server (no paid API)."""

from __future__ import annotations

import json
import re
import secrets
import string

import pytest
from helpers import demo_config

from synthvg.llm.testing import FakeOpenAIServer, Reply, last_user_text
from synthvg.models.teacher_answer import TeacherAnswer, check_answer
from synthvg.pipeline import run_build
from synthvg.storage import connect

KEY_ENV = "SYNTHVG_TEST_TEACHER_KEY"


def scripted_teacher(request: dict) -> str:
    """Answer from the region list in the prompt: valid relations plus one of each fault."""
    ids = [int(m) for m in re.findall(r"^(\d+): ", last_user_text(request), re.M)]
    subjects = []
    for s in ids[:5]:
        o = ids[(ids.index(s) + 1) % len(ids)]
        subjects.append(
            {
                "subject_id": s,
                "description": f"region {s}, clearly visible",
                "spatial": [
                    {"object_id": o, "predicate": "To the LEFT of"},
                    {"object_id": 999, "predicate": "near"},
                ],
                "interactional": [{"object_id": o, "predicate": "looking at"}],
                "functional": [{"object_id": s, "predicate": "supports"}],
                "social": [],
                "emotional": [{"object_id": o, "predicate": "  "}],
                "possessive": [{"object_id": o, "predicate": "owns"}],
            }
        )
    return json.dumps({"subjects": subjects})


@pytest.fixture
def key(monkeypatch):
    value = "sk-test-" + "".join(
        secrets.choice(string.ascii_letters + string.digits) for _ in range(40)
    )
    monkeypatch.setenv(KEY_ENV, value)
    return value


def _config(tmp_path, server, **teacher):
    return demo_config(
        tmp_path / "root",
        limit=4,
        shard_size=2,
        teacher={
            "backend": "openai",
            "model": "gpt-4o-2024-08-06",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "timeout_seconds": 5,
            "backoff_base_seconds": 0.01,
            "prices": {"gpt-4o-2024-08-06": {"input": 2.5, "output": 10.0}},
            **teacher,
        },
    )


def test_openai_teacher_writes_checked_relations_descriptions_and_cost(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher) as server:
        server.enqueue(Reply.rate_limited(0.05), Reply.server_error())  # retried transparently
        cfg = _config(tmp_path, server)
        run = run_build(cfg)
        assert run.status == "completed"
        first_requests = len(server.chat_requests)
        body = server.chat_requests[-1]
        assert body["response_format"]["type"] == "json_schema"
        image = body["messages"][1]["content"][1]["image_url"]["url"]
        assert image.startswith("data:image/jpeg;base64,")
        assert all(a == f"Bearer {key}" for a in server.authorizations)

        con = connect(cfg.out)
        rows = con.sql(
            "SELECT category, predicate, predicate_raw, generator, model, prompt_version FROM relations"
        ).fetchall()
        assert rows and {r[0] for r in rows} == {"spatial", "interactional"}
        assert {r[1] for r in rows} == {"left of", "looking at"}  # normalised; raw kept
        assert "To the LEFT of" in {r[2] for r in rows}
        assert {r[3] for r in rows} == {"model"} and {r[4] for r in rows} == {"gpt-4o-2024-08-06"}
        assert all(r[5].startswith("teacher/v1@") for r in rows)
        kinds = dict(con.sql("SELECT kind, count(*) FROM errors GROUP BY 1").fetchall())
        for kind in (
            "teacher_unknown_object_id",
            "teacher_self_relation",
            "teacher_empty_predicate",
            "teacher_unknown_category",
        ):
            assert kinds.get(kind, 0) > 0, kind
        assert (
            con.sql("SELECT count(*) FROM descriptions WHERE stage = 'teacher'").fetchall()[0][0]
            > 0
        )
        teacher = next(s for s in run.stages if s.stage == "teacher")
        assert teacher.metrics["cost_usd"] > 0 and teacher.metrics["prompt_tokens"] > 0

        # A fresh build over the same root with the teacher redone (new config value that does not
        # change the requests: budget) re-uses every answer from the cache: zero new requests.
        again = _config(tmp_path, server, budget_usd=100.0)
        from synthvg.storage import Dataset

        root = Dataset(str(tmp_path / "root"))
        for m in list(root.manifests("teacher")):
            root.drop_stage_shard("teacher", m.shard, "test")
        run_build(again)
        assert len(server.chat_requests) == first_requests
    # the key is in no file the build wrote: Parquet, manifests, run records, request cache
    written = [p for p in (tmp_path / "root").rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any("cache" in p.parts for p in written)
    assert not [p for p in written if key.encode() in p.read_bytes()]


def test_budget_stops_the_stage_cleanly_and_a_rerun_pays_nothing_twice(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher) as server:
        cfg = _config(tmp_path, server, budget_usd=0.0)
        run = run_build(cfg)
        teacher = next(s for s in run.stages if s.stage == "teacher")
        assert run.status == "failed" and teacher.shards_failed == 2
        assert "BudgetExceeded" in teacher.reason
        assert server.chat_requests == []  # nothing was sent past the budget
        done = run_build(_config(tmp_path, server))
        assert done.status == "completed"
        assert (
            len(server.chat_requests) == 3
        )  # 4 images, one has a single region: nothing to relate
        # seeds and regions were already committed; only the teacher ran
        assert {s.stage: s.shards_written for s in done.stages if s.status == "done"} == {
            "seeds": 0,
            "regions": 0,
            "teacher": 2,
            "filters": 2,
        }


def test_check_answer_rules():
    answer = TeacherAnswer.model_validate(
        {
            "subjects": [
                {
                    "subject_id": 1,
                    "description": "a",
                    "spatial": [
                        {"object_id": 2, "predicate": "on top of"},
                        {"object_id": 2, "predicate": "atop"},
                    ],
                    "interactional": [],
                    "functional": [],
                    "social": [],
                    "emotional": [],
                },
                {
                    "subject_id": 7,
                    "description": "b",
                    "spatial": [],
                    "interactional": [],
                    "functional": [],
                    "social": [],
                    "emotional": [],
                },
            ]
        }
    )
    checked = check_answer(answer, {1, 2, 3}, min_subjects=2)
    assert [(r.subject_id, r.object_id, r.predicate) for r in checked.relations] == [(1, 2, "on")]
    assert [k for k, _ in checked.dropped] == [
        "duplicate_relation",
        "unknown_subject_id",
        "too_few_subjects",
    ]


def test_batch_mode_answers_through_the_batch_api_then_the_cache(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher, batch_polls=2) as server:
        cfg = _config(tmp_path, server, batch=True, batch_poll_seconds=0.01)
        run = run_build(cfg)
        assert run.status == "completed"
        assert server.chat_requests == []  # every answer came through the batch
        assert len(server.batches) == 2  # one per shard
        teacher = next(s for s in run.stages if s.stage == "teacher")
        assert teacher.metrics["batched"] == 3 and teacher.metrics["cost_usd"] > 0
        assert (
            connect(cfg.out)
            .sql("SELECT count(*) FROM relations WHERE stage = 'teacher'")
            .fetchall()[0][0]
            > 0
        )


def test_dry_run_prices_requests_and_sends_nothing(tmp_path, key):
    from synthvg.pipeline import dry_run

    with FakeOpenAIServer(responder=scripted_teacher) as server:
        cfg = _config(tmp_path, server)
        report = dry_run(cfg)
        assert server.requests == []
        assert report["teacher"]["requests"] == 3 and report["teacher"]["cached"] == 0
        assert report["teacher"]["cost_usd"] > 0
        assert report["seeds"]["shards_done"] == 2  # free stages ran for real
        run_build(cfg)
        assert dry_run(cfg)["teacher"]["shards_done"] == 2


def _yaml_config(tmp_path, server) -> str:
    import yaml

    cfg = _config(tmp_path, server).model_dump(mode="json")
    path = tmp_path / "teacher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_cli_dry_run_prints_the_estimate(tmp_path, key):
    from typer.testing import CliRunner

    from synthvg.cli import app

    with FakeOpenAIServer(responder=scripted_teacher) as server:
        result = CliRunner().invoke(
            app, ["build", "--config", _yaml_config(tmp_path, server), "--dry-run"]
        )
        assert result.exit_code == 0, result.output
        assert "would send 3 requests (0 cached)" in result.output
        assert server.requests == []
    assert key not in result.output


@pytest.mark.slow
def test_prefect_build_with_the_openai_teacher(prefect_server, tmp_path, key):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from synthvg.flows import build_dataset

    with FakeOpenAIServer(responder=scripted_teacher) as server:
        run = build_dataset(_config(tmp_path, server).model_copy(update={"name": "openai-teacher"}))
    teacher = next(s for s in run.stages if s.stage == "teacher")
    assert teacher.status == "done" and teacher.metrics["cost_usd"] > 0
    assert (
        connect(str(tmp_path / "root"))
        .sql("SELECT count(*) FROM relations WHERE generator = 'model'")
        .fetchall()[0][0]
        > 0
    )
    with get_client(sync_client=True) as client:
        # filtered by key: the session's test server holds every other test's artifacts too
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["openai-teacher-stage-teacher"])
            )
        )
    assert artifacts and "cost_usd" in str(artifacts[0].data)
    assert key not in str(artifacts[0].data)
