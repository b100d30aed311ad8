"""The build's logic as plain functions: plan, run a stage on a shard, commit, summarise.

Prefect flows (:mod:`synthvg.flows`) are thin orchestration over these; :func:`run_build`
runs the same steps sequentially without Prefect (benchmarks and tests compare the two).

Resumability rests on fingerprints. A shard's fingerprint for stage *i* hashes its image ids,
stage *i*'s version and config, the code version and the fingerprint of stage *i-1*. A rerun
skips every shard already committed with the same fingerprint; changing one stage's config
changes its fingerprint and those of the stages after it, and nothing before it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from pydantic import BaseModel, Field

from synthvg import __version__
from synthvg.schemas import RunManifest, StageSummary, to_table
from synthvg.schemas.config import BuildConfig
from synthvg.schemas.records import ErrorRecord
from synthvg.stages import (
    STAGE_ORDER,
    STAGES,
    BuildPlan,
    ShardSpec,
    StageInputs,
    load_stage,
    plan_build,
    table_writers,
)
from synthvg.stages.base import RunContext, StageFatal, stable_hash
from synthvg.storage.dataset import Dataset, utcnow

log = logging.getLogger("synthvg")

PLAN_STAGE = "plan"
PLAN_FILE = "plan.json"


class ShardResult(BaseModel):
    stage: str
    shard: int
    status: Literal["written", "up_to_date", "failed"]
    rows: dict[str, int] = Field(default_factory=dict)
    errors: int = 0
    #: Inputs the stage could not use, by error kind (the ``errors`` table's ``kind``).
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def active_stages(config: BuildConfig) -> list[str]:
    return [s for s in STAGE_ORDER if STAGES[s].skip_reason(config) is None]


def fingerprints(config: BuildConfig, shard: ShardSpec) -> dict[str, str]:
    """Every stage's fingerprint for ``shard``, chained in build order."""
    out, previous = {}, shard.digest()
    for name in STAGE_ORDER:
        cls = STAGES[name]
        reason = cls.skip_reason(config)
        payload = {"skipped": True} if reason else cls.fingerprint_payload(config)
        previous = stable_hash([name, cls.version, __version__, payload, previous])
        out[name] = previous
    return out


def prepare(config: BuildConfig, run_id: str) -> tuple[Dataset, BuildPlan]:
    """Plan the shards, record planning faults, withdraw shards the plan no longer has."""
    dataset = Dataset(config.out)
    dataset.init()
    plan = plan_build(config, run_id)
    fp = stable_hash([STAGES["seeds"].fingerprint_payload(config), [e.model_dump(exclude={"run_id", "created_at"}) for e in plan.errors]])
    if not dataset.is_committed(PLAN_STAGE, 0, fp):
        tables = {"errors": to_table(ErrorRecord, plan.errors)} if plan.errors else {}
        dataset.commit_shard(PLAN_STAGE, 0, fp, tables, run_id=run_id, image_count=plan.image_count, started_at=utcnow())
    dataset.write_json(dataset.abspath(PLAN_FILE), {"shards": [sh.model_dump() for sh in plan.shards]})
    n = len(plan.shards)
    for stage in STAGE_ORDER:
        for shard in dataset.committed_shards(stage):
            if shard >= n:
                dataset.drop_stage_shard(stage, shard)
    return dataset, plan


def load_shards(dataset: Dataset) -> list[ShardSpec]:
    """The current build's shards, as :func:`prepare` saved them beside the data.

    Flows pass this file's location rather than the image ids themselves: flow parameters
    travel to the Prefect API, and 146K ids per subflow would swamp it.
    """
    raw = dataset.read_json(dataset.abspath(PLAN_FILE))
    if raw is None:
        raise FileNotFoundError(f"{dataset.url} has no {PLAN_FILE}: plan the build first")
    return [ShardSpec.model_validate(s) for s in raw["shards"]]


def withdraw_stage(dataset: Dataset, stage: str) -> int:
    """Remove a now-skipped stage's earlier output so no stale rows stay visible."""
    shards = dataset.committed_shards(stage)
    for shard in shards:
        dataset.drop_stage_shard(stage, shard)
    return len(shards)


def shard_done(dataset: Dataset, config: BuildConfig, stage_name: str, shard: ShardSpec) -> bool:
    """The storage holds this shard of this stage, committed with its current fingerprint."""
    return dataset.is_committed(stage_name, shard.index, fingerprints(config, shard)[stage_name])


def _shard_state(dataset: Dataset, config: BuildConfig, stage_name: str, shard: ShardSpec) -> tuple[str, str | None, StageInputs | None]:
    """(fingerprint, why it cannot run or 'up_to_date' or None, its inputs when it can run)."""
    fps = fingerprints(config, shard)
    fp = fps[stage_name]
    if dataset.is_committed(stage_name, shard.index, fp):
        return fp, "up_to_date", None
    earlier = STAGE_ORDER[: STAGE_ORDER.index(stage_name)]
    active_earlier = [s for s in earlier if STAGES[s].skip_reason(config) is None]
    for upstream in active_earlier:
        if not dataset.is_committed(upstream, shard.index, fps[upstream]):
            return fp, f"upstream stage '{upstream}' has not completed shard {shard.index}", None
    writers = {t: [s for s in stages if s in active_earlier] for t, stages in table_writers().items()}
    return fp, None, StageInputs(dataset, shard.index, writers)


def run_shard(
    dataset: Dataset,
    config: BuildConfig,
    stage_name: str,
    shard: ShardSpec,
    run_id: str,
    guard: Callable[[], AbstractContextManager[object]] = nullcontext,
) -> ShardResult:
    """Run one stage on one shard and commit it, unless it is already committed as is.

    ``guard`` wraps the work only (Prefect concurrency slots): a shard that is up to date or
    blocked holds no GPU or API slot.
    """
    started = time.perf_counter()
    fp, blocked, inputs = _shard_state(dataset, config, stage_name, shard)
    if blocked == "up_to_date":
        return up_to_date_shard(stage_name, shard)
    if blocked:
        return ShardResult(stage=stage_name, shard=shard.index, status="failed", message=blocked)
    ctx = RunContext(run_id=run_id, stage=stage_name, shard=shard.index)
    started_at = utcnow()
    with guard():
        stage = load_stage(STAGES[stage_name], config)
        output = stage.process(shard, inputs, ctx)
    tables = output.arrow_tables()
    dataset.commit_shard(stage_name, shard.index, fp, tables, run_id=run_id, image_count=len(shard.image_ids), started_at=started_at)
    return ShardResult(
        stage=stage_name,
        shard=shard.index,
        status="written",
        rows={t: v.num_rows for t, v in tables.items() if t != "errors"},
        errors=len(output.errors),
        errors_by_kind=dict(Counter(e.kind for e in output.errors)),
        seconds=time.perf_counter() - started,
        metrics=output.metrics,
    )


def up_to_date_shard(stage: str, shard: ShardSpec) -> ShardResult:
    return ShardResult(stage=stage, shard=shard.index, status="up_to_date")


def failed_shard(stage: str, shard: ShardSpec, error: BaseException) -> ShardResult:
    message = str(error) if isinstance(error, StageFatal) else f"{type(error).__name__}: {error}"
    return ShardResult(stage=stage, shard=shard.index, status="failed", message=message)


def with_spend(summary: StageSummary, config: BuildConfig, run_id: str) -> StageSummary:
    """The stage's paid requests, tokens and cost in this run, from the spend ledger: what was
    paid, including requests of shards that failed and were not committed."""
    from synthvg.llm import SpendLedger, spend_totals
    from synthvg.stages.llm_stage import ledger_urls

    urls = ledger_urls(config)
    if summary.status == "skipped" or not urls:
        return summary
    mine = [
        e for url in sorted(urls) for e in SpendLedger(url).entries()
        if e.get("run_id") == run_id and e.get("stage") == summary.stage
    ]
    if not mine and STAGES[summary.stage].dry_run_mode(config) != "paid":
        return summary
    paid = spend_totals(mine).get((), {})
    metrics = {**summary.metrics, **{k: paid.get(k, 0.0) for k in ("paid_requests", "prompt_tokens", "completion_tokens", "cost_usd")}}
    return summary.model_copy(update={"metrics": metrics})


def summarize_stage(stage: str, results: Iterable[ShardResult], seconds: float, skipped: str | None = None) -> StageSummary:
    results = list(results)
    if skipped:
        return StageSummary(stage=stage, status="skipped", reason=skipped, seconds=seconds)
    rows: dict[str, int] = {}
    metrics: dict[str, float] = {}
    for r in results:
        for t, n in r.rows.items():
            rows[t] = rows.get(t, 0) + n
        for k, v in r.metrics.items():
            metrics[k] = metrics.get(k, 0.0) + v
    failed = [r for r in results if r.status == "failed"]
    status = "done" if not failed else ("failed" if len(failed) == len(results) else "partial")
    return StageSummary(
        stage=stage,
        status=status,
        reason="; ".join(sorted({r.message or "error" for r in failed}))[:2000] if failed else None,
        shards_total=len(results),
        shards_written=sum(r.status == "written" for r in results),
        shards_up_to_date=sum(r.status == "up_to_date" for r in results),
        shards_failed=len(failed),
        rows_out=rows,
        errors=sum(r.errors for r in results),
        seconds=seconds,
        metrics=metrics,
    )


def start_run(dataset: Dataset, config: BuildConfig, run_id: str, plan: BuildPlan) -> RunManifest:
    run = RunManifest(
        run_id=run_id,
        name=config.name,
        status="running",
        started_at=utcnow(),
        synthvg_version=__version__,
        config=config.model_dump(mode="json"),
        shards=len(plan.shards),
        images=plan.image_count,
    )
    dataset.write_run(run)
    return run


def finish_run(dataset: Dataset, run: RunManifest, summaries: list[StageSummary]) -> RunManifest:
    failed = any(s.status in ("failed", "partial") for s in summaries)
    run = run.model_copy(update={"status": "failed" if failed else "completed", "finished_at": utcnow(), "stages": summaries})
    dataset.write_run(run)
    return run


def up_to_date(run: RunManifest) -> bool:
    """True when the run wrote no shard: everything was already committed as configured."""
    return all(s.shards_written == 0 and s.shards_failed == 0 for s in run.stages)


def dry_run(config: BuildConfig, run_id: str | None = None) -> dict[str, dict[str, float]]:
    """Estimate what a build would spend, spending nothing.

    Stages that cost nothing (seeds, the CPU proposer, ...) run for real, since a paid stage's
    requests depend on their output; each paid stage prices the requests it would send for
    every shard not yet committed, counting those its cache already answers. A paid stage
    after another paid stage can only be priced once that one has run (``blocked`` shards).
    """
    from synthvg.llm.client import requests_disabled
    from synthvg.storage.lock import build_lock

    run_id = run_id or new_run_id()
    dataset = Dataset(config.out)
    dataset.init()
    report: dict[str, dict[str, float]] = {}
    with build_lock(dataset, run_id), requests_disabled():
        dataset, plan = prepare(config, run_id)
        for stage_name in active_stages(config):
            mode = STAGES[stage_name].dry_run_mode(config)
            # A model stage is counted, not loaded: later stages wait for it (blocked).
            stage = load_stage(STAGES[stage_name], config) if mode != "model" else None
            totals: dict[str, float] = {"shards_done": 0.0, "shards_blocked": 0.0}
            for shard in plan.shards:
                _, blocked, inputs = _shard_state(dataset, config, stage_name, shard)
                if blocked:
                    totals["shards_done" if blocked == "up_to_date" else "shards_blocked"] += 1
                    continue
                if stage is None:
                    totals["model_shards"] = totals.get("model_shards", 0.0) + 1
                    totals["model_images"] = totals.get("model_images", 0.0) + len(shard.image_ids)
                    continue
                estimate = stage.estimate(shard, inputs, RunContext(run_id=run_id, stage=stage_name, shard=shard.index))
                if estimate is None:
                    run_shard(dataset, config, stage_name, shard, run_id)
                    totals["shards_done"] += 1
                    continue
                for k, v in estimate.items():
                    totals[k] = totals.get(k, 0.0) + v
            report[stage_name] = totals
    return report


def run_build(
    config: BuildConfig,
    run_id: str | None = None,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> RunManifest:
    """The whole build, sequentially, without Prefect (same steps as the flow)."""
    from synthvg.storage.lock import build_lock

    run_id = run_id or new_run_id()
    dataset = Dataset(config.out)
    dataset.init()
    with build_lock(dataset, run_id):
        dataset, plan = prepare(config, run_id)
        run = start_run(dataset, config, run_id, plan)
        summaries = []
        for stage in STAGE_ORDER:
            t0 = time.perf_counter()
            reason = STAGES[stage].skip_reason(config)
            if reason:
                withdraw_stage(dataset, stage)
                summaries.append(summarize_stage(stage, [], time.perf_counter() - t0, skipped=reason))
                continue
            results = []
            stopped: StageFatal | None = None
            for shard in plan.shards:
                if stopped is not None:  # nothing more is sent once the stage cannot succeed
                    done = shard_done(dataset, config, stage, shard)
                    results.append(up_to_date_shard(stage, shard) if done else failed_shard(stage, shard, stopped))
                    continue
                try:
                    r = run_shard(dataset, config, stage, shard, run_id)
                except StageFatal as e:
                    log.error("%s", e)
                    stopped, r = e, failed_shard(stage, shard, e)
                except Exception as e:  # as the flow does after retries: record, go on
                    log.error("%s shard %05d failed: %s", stage, shard.index, e)
                    r = failed_shard(stage, shard, e)
                results.append(r)
                if on_shard:
                    on_shard(r)
            summaries.append(with_spend(summarize_stage(stage, results, time.perf_counter() - t0), config, run_id))
        return finish_run(dataset, run, summaries)


