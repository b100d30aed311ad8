"""The LLM stages' promises, end to end against the local OpenAI-protocol server (no paid API):
a dry run spends nothing, a fatal fault stops the stage loudly and leaves nothing committed,
a transient fault never becomes a permanent gap, and every paid request is counted."""

from __future__ import annotations

import json
import random
import secrets
import string

import pytest
import yaml
from helpers import demo_config
from test_teacher_openai import scripted_teacher
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.llm import SpendLedger, spend_totals
from synthvg.llm.testing import FakeOpenAIServer, Reply
from synthvg.pipeline import dry_run, run_build
from synthvg.storage import Dataset, connect

KEY_ENV = "SYNTHVG_TEST_PROMISES_KEY"
MODEL = "gpt-4o-2024-08-06"
PRICES = {MODEL: {"input": 2.5, "output": 10.0}}


@pytest.fixture
def key(monkeypatch):
    value = "sk-test-" + "".join(
        secrets.choice(string.ascii_letters + string.digits) for _ in range(40)
    )
    monkeypatch.setenv(KEY_ENV, value)
    return value


def endpoint(server, **more) -> dict:
    return {
        "model": MODEL,
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "timeout_seconds": 5,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "prices": PRICES,
        **more,
    }


def teacher_config(root, server, *, filters=None, edit=None, **teacher):
    extra = {}
    if filters is not None:
        extra["filters"] = filters
    if edit is not None:
        extra["edit"] = edit
    return demo_config(
        root,
        limit=4,
        shard_size=2,
        teacher={"backend": "openai", **endpoint(server, **teacher)},
        **extra,
    )


def verifier(server, **more) -> dict:
    return {"backend": "rules", "verifiers": [{"kind": "openai", **endpoint(server, **more)}]}


def stage(run, name):
    return next(s for s in run.stages if s.stage == name)


def rows(cfg, sql):
    return connect(cfg.out).sql(sql).fetchall()


def yes_or_teacher(request: dict) -> str:
    """Teacher answers for teacher requests, "yes" for VQA questions, captions for the rest."""
    if request.get("max_tokens") == 1:
        return "yes"
    return scripted_teacher(request)


# ---- 1. a dry run spends nothing ------------------------------------------------------------------


def test_dry_run_with_every_paid_stage_sends_nothing_needs_no_key_and_prices_batch(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(KEY_ENV, raising=False)  # no key at all: a dry run needs none
    with FakeOpenAIServer(responder=yes_or_teacher, models=[MODEL]) as server:
        everything = teacher_config(
            tmp_path / "root",
            server,
            filters=verifier(server),
            edit={"backend": "openai", "source": "teacher", **endpoint(server)},
        )
        report = dry_run(everything)
        assert server.requests == []
        assert report["teacher"]["requests"] == 3 and report["teacher"]["cost_usd"] > 0
        assert report["filters"]["shards_blocked"] == 2 and report["edit"]["shards_blocked"] == 2

        batch = dry_run(
            everything.model_copy(
                update={"teacher": everything.teacher.model_copy(update={"batch": True})}
            )
        )
        assert batch["teacher"]["cost_usd"] == pytest.approx(report["teacher"]["cost_usd"] * 0.5)

        path = tmp_path / "all.yaml"
        path.write_text(yaml.safe_dump(everything.model_dump(mode="json")))
        result = CliRunner().invoke(app, ["build", "--config", str(path), "--dry-run"])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output and "would send 3 requests" in result.output
        assert server.requests == []

        # With the teacher's answers committed, the verifiers' questions and the editor are
        # priced, still without a single request.
        monkeypatch.setenv(KEY_ENV, "sk-test-only-for-the-teacher-run-0123456789")
        run_build(teacher_config(tmp_path / "root", server))
        sent = len(server.requests)
        monkeypatch.delenv(KEY_ENV)
        report = dry_run(everything)
        assert len(server.requests) == sent
        assert report["filters"]["requests"] > 0 and report["filters"]["cost_usd"] > 0
        assert report["edit"]["shards_blocked"] == 2  # waits for the paid filters


def test_dry_run_counts_model_stages_without_loading_them(tmp_path):
    cfg = demo_config(
        tmp_path / "root",
        limit=4,
        shard_size=2,
        depth={"backend": "depth-anything", "path": str(tmp_path / "no-such-weights")},
    )
    report = dry_run(cfg)  # loading the (missing) weights would fail
    assert report["depth"]["model_shards"] == 2 and report["depth"]["model_images"] == 4
    assert report["teacher"]["shards_done"] == 2  # the rule teacher reads no depth: it runs
    assert report["filters"]["shards_blocked"] == 2  # the filters read depth: they wait for it


# ---- 2. failure kinds -----------------------------------------------------------------------------


def test_a_rejected_key_stops_the_stage_commits_nothing_and_the_fixed_rerun_sends(
    tmp_path, monkeypatch, key
):
    with FakeOpenAIServer(
        responder=scripted_teacher, api_key="sk-test-the-right-key-0123456789abcdef"
    ) as server:
        cfg = teacher_config(tmp_path / "root", server)
        run = run_build(cfg)
        teacher = stage(run, "teacher")
        assert run.status == "failed" and teacher.shards_failed == 2 and teacher.shards_written == 0
        assert (
            "\n" not in teacher.reason
            and server.base_url in teacher.reason
            and "HTTP 401" in teacher.reason
        )
        assert KEY_ENV in teacher.reason and key not in teacher.reason
        assert (
            len(server.chat_requests) <= 2
        )  # shard 0's requests in flight at once; shard 1 sent none
        assert not Dataset(cfg.out).committed_shards("teacher")

        monkeypatch.setenv(KEY_ENV, "sk-test-the-right-key-0123456789abcdef")
        before = len(server.chat_requests)
        again = run_build(cfg)
        assert again.status == "completed" and stage(again, "teacher").shards_written == 2
        assert len(server.chat_requests) - before == 3
        assert rows(cfg, "SELECT count(*) FROM relations WHERE stage = 'teacher'")[0][0] > 0
        assert rows(cfg, "SELECT count(*) FROM errors WHERE kind = 'teacher_failed'")[0][0] == 0


@pytest.mark.parametrize("fault", ["unknown_model", "missing_key"])
def test_unknown_model_or_missing_key_stop_the_stage_and_the_fixed_rerun_sends(
    tmp_path, monkeypatch, key, fault
):
    with FakeOpenAIServer(
        responder=scripted_teacher,
        models=["some-other-model"] if fault == "unknown_model" else None,
    ) as server:
        if fault == "missing_key":
            monkeypatch.delenv(KEY_ENV)
        cfg = teacher_config(tmp_path / "root", server)
        run = run_build(cfg)
        reason = stage(run, "teacher").reason
        assert run.status == "failed" and server.base_url in reason
        if fault == "unknown_model":
            assert "HTTP 404" in reason and MODEL in reason and len(server.chat_requests) <= 2
            server.models = [MODEL]
        else:
            assert f"env var {KEY_ENV}" in reason and server.requests == []
            monkeypatch.setenv(KEY_ENV, key)
        again = run_build(cfg)
        assert again.status == "completed" and stage(again, "teacher").shards_written == 2


def test_an_unreachable_base_url_fails_fast_and_names_it(tmp_path, key):
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    cfg = demo_config(
        tmp_path / "root",
        limit=4,
        shard_size=2,
        teacher={
            "backend": "openai",
            "model": MODEL,
            "base_url": url,
            "api_key_env": KEY_ENV,
            "backoff_base_seconds": 0.01,
        },
    )
    run = run_build(cfg)
    teacher = stage(run, "teacher")
    assert (
        run.status == "failed"
        and f"cannot reach {url}" in teacher.reason
        and "base_url" in teacher.reason
    )
    assert teacher.seconds < 10


def test_a_truncated_answer_is_retried_by_the_next_run_and_then_succeeds(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher) as server:
        cut = Reply(content='{"subjects": [{"subject_id": 1, "descr', finish_reason="length")
        server.enqueue(cut, cut)  # the first request and its repair are both cut off
        cfg = teacher_config(tmp_path / "root", server, max_concurrency=1)
        run = run_build(cfg)
        teacher = stage(run, "teacher")
        assert run.status == "failed" and teacher.shards_written == 1 and teacher.shards_failed == 1
        assert "raise max_tokens" in teacher.reason
        assert rows(cfg, "SELECT count(*) FROM errors WHERE kind = 'teacher_failed'")[0][0] == 0
        before = len(server.chat_requests)
        again = run_build(cfg)  # a healthy server now: only the cut-off request is asked again
        assert again.status == "completed" and len(server.chat_requests) - before == 1
        assert (
            rows(cfg, "SELECT count(DISTINCT image_id) FROM relations WHERE stage = 'teacher'")[0][
                0
            ]
            == 3
        )


def test_retries_running_out_leave_the_shard_for_the_next_run(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher) as server:
        server.enqueue(*[Reply.server_error(503)] * 2)
        cfg = teacher_config(tmp_path / "root", server, max_retries=1, max_concurrency=1)
        run = run_build(cfg)
        assert (
            stage(run, "teacher").shards_failed == 1
            and "LLMRetryExhausted" in stage(run, "teacher").reason
        )
        before = len(server.chat_requests)
        assert run_build(cfg).status == "completed"
        assert len(server.chat_requests) - before == 1  # the other answer of that shard was cached


def test_an_answer_breaking_the_rules_is_an_error_row_and_not_cached(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher) as server:
        server.enqueue(Reply(content="I cannot help with that."), Reply(content="Still no."))
        cfg = teacher_config(tmp_path / "root", server, max_concurrency=1)
        run = run_build(cfg)
        assert run.status == "completed"
        failed = rows(cfg, "SELECT reason FROM errors WHERE kind = 'teacher_failed'")
        assert len(failed) == 1 and "unusable after one repair" in failed[0][0]
        cached = [
            json.loads(p.read_text())
            for p in (tmp_path / "root" / "cache" / "llm").glob("??/*.json")
        ]
        assert len(cached) == 2 and all("cannot" not in json.dumps(e["response"]) for e in cached)


def test_verifier_faults_never_become_unverified_verdicts(tmp_path, monkeypatch, key):
    with FakeOpenAIServer(responder=yes_or_teacher) as server:
        base = teacher_config(tmp_path / "root", server)
        assert run_build(base).status == "completed"
        cfg = teacher_config(tmp_path / "root", server, filters=verifier(server, max_retries=0))
        server.enqueue(Reply.server_error())
        run = run_build(cfg)
        assert stage(run, "filters").shards_failed == 1  # the shard with the failed question
        assert not rows(
            cfg, "SELECT * FROM relation_verdicts WHERE verdict_reason LIKE '%HTTP 500%'"
        )
        assert run_build(cfg).status == "completed"
        assert (
            rows(
                cfg,
                "SELECT count(*) FROM relation_verdicts WHERE verified_by LIKE 'vqa:%' AND verdict = 'kept'",
            )[0][0]
            > 0
        )

        server.api_key = "sk-test-another-key-0123456789abcdefgh"  # the key is revoked
        other = teacher_config(
            tmp_path / "root", server, filters=verifier(server, logprobs=False)
        )  # new questions
        run = run_build(other)
        filters = stage(run, "filters")
        assert (
            filters.shards_failed == 2
            and "HTTP 401" in filters.reason
            and server.base_url in filters.reason
        )


def test_editor_cut_off_answer_leaves_the_shard_for_the_next_run(tmp_path, monkeypatch):
    from edit_scripts import KEY, edit_config, scripted_editor
    from edit_scripts import KEY_ENV as EDIT_KEY_ENV

    monkeypatch.setenv(EDIT_KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor) as server:
        cut = Reply(content='{"edit": [{"obj_id": 1, "na', finish_reason="length")
        cfg = edit_config(
            tmp_path / "root", server, limit=2, shard_size=2, caption=False, max_concurrency=1
        )
        server.enqueue(cut, cut, cut, cut)  # both images' requests, then both repairs
        run = run_build(cfg)
        assert stage(run, "edit").shards_failed == 1 and "edit_failed" not in json.dumps(
            stage(run, "edit").model_dump()
        )
        run = run_build(cfg)
        assert run.status == "completed" and rows(cfg, "SELECT count(*) FROM edits")[0][0] > 0


def test_batch_failures_are_sorted_too(tmp_path, key):
    with FakeOpenAIServer(responder=scripted_teacher, batch_polls=1) as server:
        calls = {"n": 0}

        def flaky(request):
            calls["n"] += 1
            return Reply.server_error() if calls["n"] == 1 else scripted_teacher(request)

        server.responder = flaky
        cfg = teacher_config(
            tmp_path / "root", server, batch=True, batch_poll_seconds=0.01, max_concurrency=1
        )
        run = run_build(cfg)
        assert (
            stage(run, "teacher").shards_failed == 1 and "new batch" in stage(run, "teacher").reason
        )
        assert server.chat_requests == []  # a failed batch item is not resent online at full price
        assert run_build(cfg).status == "completed" and server.chat_requests == []
        assert len(server.batches) == 3

    with FakeOpenAIServer(
        responder=scripted_teacher, api_key="sk-test-not-yours-0123456789abcdefghij"
    ) as server:
        run = run_build(
            teacher_config(tmp_path / "other", server, batch=True, batch_poll_seconds=0.01)
        )
        assert (
            "HTTP 401" in stage(run, "teacher").reason and len(server.requests) == 1
        )  # the upload, once


# ---- 3. preflight -----------------------------------------------------------------------------------


def _yaml(tmp_path, cfg) -> str:
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return str(path)


def test_check_runs_only_the_cheap_checks(tmp_path, monkeypatch, key):
    runner = CliRunner()
    right = "sk-test-the-right-key-0123456789abcdef"
    with FakeOpenAIServer(responder=scripted_teacher, api_key=right, models=[MODEL]) as server:
        path = _yaml(tmp_path, teacher_config(tmp_path / "root", server, filters=verifier(server)))
        bad_key = runner.invoke(app, ["build", "--config", path, "--check"])
        assert (
            bad_key.exit_code == 2
            and "rejected the key" in bad_key.output
            and server.base_url in bad_key.output
        )
        assert KEY_ENV in bad_key.output and key not in bad_key.output

        monkeypatch.setenv(KEY_ENV, right)
        ok = runner.invoke(app, ["build", "--config", path, "--check"])
        assert ok.exit_code == 0, ok.output
        assert server.chat_requests == [] and {r.path for r in server.requests} == {"/v1/models"}
        assert not (tmp_path / "root").exists()  # the check wrote nothing

        server.models = ["another-model"]
        unknown = runner.invoke(app, ["build", "--config", path, "--check"])
        assert (
            unknown.exit_code == 2
            and f"model '{MODEL}' is not among the 1 models" in unknown.output
        )

        monkeypatch.delenv(KEY_ENV)
        missing = teacher_config(tmp_path / "root", server).model_dump(mode="json")
        missing["seeds"]["sources"][0]["annotations"] = str(tmp_path / "nope.json")
        (tmp_path / "missing.yaml").write_text(yaml.safe_dump(missing))
        result = runner.invoke(
            app, ["build", "--config", str(tmp_path / "missing.yaml"), "--check"]
        )
        assert result.exit_code == 2
        lines = [line for line in result.output.splitlines() if line.startswith("preflight:")]
        assert (
            len(lines) == 2
            and "no such file or folder: " + str(tmp_path / "nope.json") in result.output
            and f"env var {KEY_ENV}" in result.output
        )

        # the build runs the same preflight before any stage
        build = runner.invoke(app, ["build", "--config", path])
        assert build.exit_code == 2 and not (tmp_path / "root").exists()


@pytest.mark.slow  # a Prefect build through the CLI (~1 min with the server start)
def test_build_exits_non_zero_on_a_fatal_fault_past_the_preflight(tmp_path, monkeypatch, key):
    with FakeOpenAIServer(responder=scripted_teacher, models=[MODEL]) as server:
        server.enqueue(
            Reply.bad_request("Your organization is not allowed to use this model.", status=403)
        )
        cfg = teacher_config(tmp_path / "root", server, max_concurrency=1)
        result = CliRunner().invoke(app, ["build", "--config", _yaml(tmp_path, cfg)])
        assert (
            result.exit_code == 1
            and "teacher stopped" in result.output
            and "HTTP 403" in result.output
        )
        assert len(server.chat_requests) == 1


# ---- 4. every paid request is counted --------------------------------------------------------------


def test_spend_totals_equal_what_the_server_billed_across_failed_and_retried_shards(tmp_path, key):
    rng = random.Random(7)
    faults = [
        Reply.server_error(),
        Reply.truncated_body(),
        Reply(content="not json"),
        Reply(content='{"subjects": [', finish_reason="length"),
    ]

    def faulty(request):
        if rng.random() < 0.5:
            return rng.choice(faults)
        return scripted_teacher(request)

    with FakeOpenAIServer(responder=faulty) as server:
        cfg = teacher_config(tmp_path / "root", server, max_retries=1)
        runs = []
        for _ in range(8):
            runs.append(run_build(cfg))
            if runs[-1].status == "completed":
                break
        assert runs[-1].status == "completed" and len(runs) > 1  # some shards failed on the way
        billed = server.billed
    ledger = SpendLedger(tmp_path / "root" / "cache" / "llm" / "ledger").entries()
    total = spend_totals(ledger)[()]
    assert total["paid_requests"] == len(billed)
    assert total["prompt_tokens"] == sum(p for _, p, _ in billed)
    assert total["completion_tokens"] == sum(c for _, _, c in billed)
    by_run = spend_totals(ledger, ("run_id", "stage"))
    summed = sum(stage(r, "teacher").metrics.get("cost_usd", 0.0) for r in runs)
    assert summed == pytest.approx(total["cost_usd"])
    for r in runs:
        assert stage(r, "teacher").metrics.get("paid_requests", 0) == by_run.get(
            (r.run_id, "teacher"), {}
        ).get("paid_requests", 0)
    assert total["cost_usd"] == pytest.approx(sum(p * 2.5 + c * 10.0 for _, p, c in billed) / 1e6)

    from synthvg.flows.report import api_spend  # the dataset card's spend table

    ds = Dataset(cfg.out)
    card = api_spend(ds, ds.runs())
    assert [(r["stage"], r["model"], r["paid_requests"]) for r in card] == [
        ("teacher", MODEL, len(billed))
    ]


# ---- 5. shared by every worker: cache and ledger under the dataset root, any fsspec URL -------------


def test_remote_roots_keep_cache_and_ledger_under_the_root_not_the_home_folder(
    tmp_path, key, monkeypatch
):
    import uuid

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = (
        f"file://{tmp_path}/root-{uuid.uuid4().hex[:8]}"  # a URL root, as object stores are given
    )
    with FakeOpenAIServer(responder=scripted_teacher) as server:
        cfg = teacher_config(root, server)
        assert run_build(cfg).status == "completed"
        sent = len(server.chat_requests)
        dataset = Dataset(root)
        for m in list(dataset.manifests("teacher")):
            dataset.drop_stage_shard("teacher", m.shard, "test")  # redo the stage
        assert run_build(cfg).status == "completed"
        assert len(server.chat_requests) == sent == 3  # every answer came from the shared cache
    entries = SpendLedger(f"{root}/cache/llm/ledger").entries()
    assert spend_totals(entries)[()]["paid_requests"] == 3
    assert not (tmp_path / "home").exists()


@pytest.mark.slow  # a Prefect server, a local Dask cluster of 2 worker processes, two builds
def test_rpm_and_budget_hold_for_a_dask_build_with_two_workers(prefect_server, tmp_path, key):
    from synthvg.flows import BuildIncomplete, build_dataset

    rpm = 60.0
    # Stage by stage, so the teacher's requests are all ready at once: overlapped, they would
    # trickle in at the pace of the regions stage and measure that, not the rate limit.
    dask = {"kind": "dask", "workers": 2, "retries": 0, "overlap": False}
    with FakeOpenAIServer(responder=scripted_teacher, latency=0.05) as server:
        cfg = demo_config(
            tmp_path / "rpm",
            name="dask-rpm",
            limit=16,
            shard_size=4,
            executor=dask,
            teacher={"backend": "openai", **endpoint(server, requests_per_minute=rpm)},
        )
        run = build_dataset(cfg)
        assert stage(run, "teacher").shards_written == 4
        arrivals = sorted(
            r.received_at for r in server.requests if r.path == "/v1/chat/completions"
        )
        achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) * 60
        print(f"dask, 2 workers: {len(arrivals)} requests, achieved {achieved:.1f} RPM of {rpm:g}")
        assert rpm * 0.95 <= achieved <= rpm * 1.02
        for t in arrivals:
            assert sum(t <= u < t + 5.0 for u in arrivals) <= rpm / 60 * 5 + 2

        # The budget: both workers draw on one account, so together they stay under it.
        biggest = max(p for _, p, _ in server.billed)
        per_request = (
            sum(p * 2.5 + c * 10.0 for _, p, c in server.billed) / 1e6 / len(server.billed)
        )
        budget = 5 * per_request
        billed_before = len(server.billed)
        cfg = demo_config(
            tmp_path / "budget",
            name="dask-budget",
            limit=16,
            shard_size=2,
            executor=dask,
            teacher={
                "backend": "openai",
                **endpoint(
                    server, budget_usd=budget, max_tokens=2000, image_token_estimate=biggest
                ),
            },
        )
        with pytest.raises(BuildIncomplete) as info:
            build_dataset(cfg)
        teacher = stage(info.value.run, "teacher")
        assert "BudgetExceeded" in teacher.reason and teacher.shards_failed > 0
        spent = sum(p * 2.5 + c * 10.0 for _, p, c in server.billed[billed_before:]) / 1e6
        assert 0 < spent <= budget
        ledger = spend_totals(
            SpendLedger(tmp_path / "budget" / "cache" / "llm" / "ledger").entries()
        )[()]
        assert ledger["cost_usd"] == pytest.approx(spent) and teacher.metrics[
            "cost_usd"
        ] == pytest.approx(spent)


def test_prefect_does_not_retry_a_shard_whose_stage_cannot_succeed():
    from prefect.states import Failed

    from synthvg.llm import LLMRetryExhausted
    from synthvg.stages.base import StageFatal
    from synthvg.tasks.shard import retry_unless_storage_fault as _worth_a_retry

    assert not _worth_a_retry(None, None, Failed(data=StageFatal("teacher stopped: ...")))
    assert _worth_a_retry(None, None, Failed(data=LLMRetryExhausted("gave up", attempts=3)))
