"""The build's logic as plain functions: plan, run a stage on a shard, commit, summarise.

Prefect flows (:mod:`synthvg.flows`) are thin orchestration over these; :func:`run_build`
runs the same steps sequentially without Prefect (benchmarks and tests compare the two).

Resumability rests on fingerprints. A shard's fingerprint for a stage hashes the stage's version
and config, the code version and the fingerprints of the stages it reads (the shard's image ids
for a stage that reads none): see :mod:`synthvg.stages.dag`. A rerun skips every shard already
committed with the same fingerprint; changing one stage's config redoes that stage and the
stages that read it, directly or not, and nothing else.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

from pydantic import BaseModel, Field

from synthvg import __version__
from synthvg.runs import PLAN_FILE, new_run_id, stable_hash
from synthvg.schemas import RunManifest, StageSummary, to_table
from synthvg.schemas.config import BuildConfig
from synthvg.schemas.records import ErrorRecord
from synthvg.stages import (
    STAGE_ORDER,
    STAGES,
    BuildPlan,
    ShardSpec,
    StageInputs,
    build_order,
    graph,
    load_stage,
    plan_build,
)
from synthvg.stages.base import RunContext, StageFatal
from synthvg.stages.dag import shard_fingerprints
from synthvg.storage.dataset import Dataset, StorageRefused, utcnow
from synthvg.storage.lock import LockLost

log = logging.getLogger("synthvg")

PLAN_STAGE = "plan"


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
    #: Why a shard committed as is was redone anyway (a committed file missing or changed).
    redone: str | None = None


def active_stages(config: BuildConfig) -> list[str]:
    """The stages that run under ``config``, in build order."""
    return [name for name, node in graph(config).items() if node.skipped is None]


#: Images per shard task when every stage that runs is light
#: (:meth:`~synthvg.stages.base.Stage.light`): such a shard of 500 takes ~0.3-1 s, Prefect
#: ~0.1-0.2 s per task (benchmarks/RESULTS.md, "Prefect per task, stop 17").
LIGHT_TASK_IMAGES = 2000


def task_groups(config: BuildConfig, shards: list[ShardSpec]) -> list[list[ShardSpec]]:
    """The shards each orchestrator task of a stage runs, in order: consecutive shards up to
    ``executor.task_images`` images (see its description), never fewer groups than workers.

    Commits stay per shard, so a killed build resumes shard by shard whatever the grouping.
    """
    ex = config.executor
    images = ex.task_images
    if images is None:
        light = all(STAGES[s].light(config) for s in active_stages(config))
        images = LIGHT_TASK_IMAGES if light else 1
    per_task = max(1, min(images // config.shard_size, len(shards) // ex.workers))
    return [shards[i : i + per_task] for i in range(0, len(shards), per_task)]


def fingerprints(config: BuildConfig, shard: ShardSpec) -> dict[str, str]:
    """Every stage's fingerprint for ``shard`` (see :func:`synthvg.stages.dag.shard_fingerprints`)."""
    return shard_fingerprints(STAGES, config, shard)


class WithdrawnShards(BaseModel):
    """Committed shards of one stage that a build would take out of the dataset, and why."""

    stage: str
    #: why -> the shards withdrawn for that reason
    reasons: dict[str, list[int]] = Field(default_factory=dict)
    rows: dict[str, int] = Field(default_factory=dict)
    #: What producing these rows cost (summed from the shards' records; 0 when nothing was paid
    #: or the shards predate cost records).
    cost_usd: float = 0.0

    def describe(self) -> str:
        why = "; ".join(f"{_ranges(shards)}: {reason}" for reason, shards in self.reasons.items())
        rows = ", ".join(f"{n} {t}" for t, n in sorted(self.rows.items()) if n) or "no rows"
        cost = f"; ${self.cost_usd:.4f} was spent on them" if self.cost_usd else ""
        n = sum(len(v) for v in self.reasons.values())
        return f"{self.stage}: {n} shard(s) ({why}) holding {rows}{cost}"


class WithdrawalRefused(RuntimeError):
    """A build would withdraw committed work; nothing was written. ``--replace`` allows it."""

    def __init__(self, root: str, withdrawn: list[WithdrawnShards], limit: int | None):
        self.root = root
        self.withdrawn = withdrawn
        lines = [
            f"refused: this build would withdraw committed work from {root} (nothing was written):"
        ]
        lines += [f"  {w.describe()}" for w in withdrawn]
        hint = (
            f"--limit {limit} builds a subset of a root that holds more: build it into another --out"
            if limit is not None
            else "keep the shard_size the root was built with (the default was 16 before it "
            "became 500), build into another --out"
        )
        lines.append(f"{hint}, or pass --replace to withdraw them")
        super().__init__("\n".join(lines))


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


def planned_withdrawal(
    dataset: Dataset, config: BuildConfig, plan: BuildPlan
) -> list[WithdrawnShards]:
    """What committed work ``plan`` under ``config`` would take out of ``dataset``.

    A shard's rows are withdrawn when the shard leaves the plan (fewer images, ``--limit``), when
    it would hold other images than it was built from (another config's sources or selection), or
    when its stage no longer runs (``backend: none``). Redoing a shard over the same images with
    changed stage settings is an update, not a withdrawal.
    """
    previous = dataset.read_json(dataset.abspath(PLAN_FILE)) or {"shards": []}
    before = {s["index"]: set(s["image_ids"]) for s in previous["shards"]}
    after = {sh.index: set(sh.image_ids) for sh in plan.shards}
    out = []
    for stage in STAGE_ORDER:
        skipped = STAGES[stage].skip_reason(config)
        w = WithdrawnShards(stage=stage)
        for m in dataset.manifests(stage):
            if skipped:
                reason = f"the stage no longer runs ({skipped})"
            elif m.shard not in after:
                reason = "not in the new plan"
            elif before.get(m.shard, after[m.shard]) - after[m.shard]:
                reason = "the new plan puts other images in them"
            else:
                continue
            w.reasons.setdefault(reason, []).append(m.shard)
            for f in m.files:
                w.rows[f.table] = w.rows.get(f.table, 0) + f.rows
            w.cost_usd += m.metrics.get("cost_usd", 0.0)
        if w.reasons:
            out.append(w)
    return out


def prepare(
    config: BuildConfig, run_id: str, *, replace: bool = False
) -> tuple[Dataset, BuildPlan]:
    """Plan the shards and record planning faults; withdraw shards the plan no longer has.

    Refuses (:class:`WithdrawalRefused`, before writing anything) a plan that would withdraw
    committed work, unless ``replace`` says the user asked for it.
    """
    dataset = Dataset(config.out)
    dataset.init()
    plan = plan_build(config, run_id)
    withdrawn = planned_withdrawal(dataset, config, plan)
    if withdrawn and not replace:
        raise WithdrawalRefused(dataset.url, withdrawn, config.limit)
    for w in withdrawn:
        log.warning("withdrawing, as --replace allows: %s", w.describe())
    fp = stable_hash(
        [
            STAGES["seeds"].fingerprint_payload(config),
            [e.model_dump(exclude={"run_id", "created_at"}) for e in plan.errors],
        ]
    )
    if not dataset.is_committed(PLAN_STAGE, 0, fp):
        tables = {"errors": to_table(ErrorRecord, plan.errors)} if plan.errors else {}
        dataset.commit_shard(
            PLAN_STAGE,
            0,
            fp,
            tables,
            run_id=run_id,
            image_count=plan.image_count,
            started_at=utcnow(),
        )
    n = len(plan.shards)
    for stage in STAGE_ORDER:
        for shard in dataset.committed_shards(stage):
            if shard >= n:
                dataset.drop_stage_shard(stage, shard, run_id)
    dataset.write_json(
        dataset.abspath(PLAN_FILE), {"shards": [sh.model_dump() for sh in plan.shards]}
    )
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


def withdraw_stage(dataset: Dataset, stage: str, run_id: str) -> int:
    """Remove a now-skipped stage's earlier output so no stale rows stay visible."""
    shards = dataset.committed_shards(stage)
    for shard in shards:
        dataset.drop_stage_shard(stage, shard, run_id)
    return len(shards)


def shard_done(dataset: Dataset, config: BuildConfig, stage_name: str, shard: ShardSpec) -> bool:
    """The storage holds this shard of this stage, committed with its current fingerprint."""
    return dataset.is_committed(stage_name, shard.index, fingerprints(config, shard)[stage_name])


def _shard_state(
    dataset: Dataset, config: BuildConfig, stage_name: str, shard: ShardSpec
) -> tuple[str, str | None, StageInputs | None]:
    """(fingerprint, why it cannot run or 'up_to_date' or None, its inputs when it can run)."""
    fps = fingerprints(config, shard)
    fp = fps[stage_name]
    if dataset.is_committed(stage_name, shard.index, fp):
        return fp, "up_to_date", None
    node = graph(config)[stage_name]
    for upstream in sorted({w for writers in node.reads.values() for w in writers}):
        if not dataset.is_committed(upstream, shard.index, fps[upstream]):
            return fp, f"upstream stage '{upstream}' has not completed shard {shard.index}", None
    return fp, None, StageInputs(dataset, shard.index, node.reads)


def run_shard(
    dataset: Dataset,
    config: BuildConfig,
    stage_name: str,
    shard: ShardSpec,
    run_id: str,
    guard: Callable[[], AbstractContextManager[object]] = nullcontext,
    fence: str | None = None,
) -> ShardResult:
    """Run one stage on one shard and commit it, unless it is already committed as is.

    ``guard`` wraps the work only (Prefect concurrency slots): a shard that is up to date or
    blocked holds no GPU or API slot. ``fence`` is the build lock's token: the commit is
    refused once the build holding it has ended (a worker outliving its build).
    """
    started = time.perf_counter()
    fp, blocked, inputs = _shard_state(dataset, config, stage_name, shard)
    if blocked == "up_to_date":
        return up_to_date_shard(stage_name, shard)
    if blocked:
        return ShardResult(stage=stage_name, shard=shard.index, status="failed", message=blocked)
    damage = dataset.damage(stage_name, shard.index, fp)
    redone = "; ".join(damage) or None
    if redone:
        log.warning(
            "%s shard %05d: redoing it, its committed files changed: %s",
            stage_name,
            shard.index,
            redone,
        )
    ctx = RunContext(run_id=run_id, stage=stage_name, shard=shard.index)
    started_at = utcnow()
    with fewer_collections():
        with guard():
            stage = load_stage(STAGES[stage_name], config)
            output = stage.process(shard, inputs, ctx)
        tables = output.arrow_tables()
    dataset.commit_shard(
        stage_name,
        shard.index,
        fp,
        tables,
        run_id=run_id,
        image_count=len(shard.image_ids),
        started_at=started_at,
        metrics=output.metrics,
        fence=fence,
    )
    return ShardResult(
        stage=stage_name,
        shard=shard.index,
        status="written",
        rows={t: v.num_rows for t, v in tables.items() if t != "errors"},
        errors=len(output.errors),
        errors_by_kind=dict(Counter(e.kind for e in output.errors)),
        seconds=time.perf_counter() - started,
        metrics=output.metrics,
        redone=redone,
    )


#: Allocations between young-generation collections while a shard runs (Python's default is
#: 700). A stage makes millions of short-lived objects, few in cycles; at 700 the collector's
#: passes over the whole heap (imports, the plan, Prefect's modules) took 3-13% of a cheap
#: build's CPU (benchmarks/RESULTS.md, "Prefect per task, stop 17").
SHARD_GC_THRESHOLD = 10_000
_gc_lock = threading.Lock()
_gc_holders = 0
_gc_saved = gc.get_threshold()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage less often while any shard of this process runs (threads nest)."""
    global _gc_holders, _gc_saved
    with _gc_lock:
        if _gc_holders == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(max(_gc_saved[0], SHARD_GC_THRESHOLD), *_gc_saved[1:])
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0:
                gc.set_threshold(*_gc_saved)


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
        e
        for url in sorted(urls)
        for e in SpendLedger(url).entries()
        if e.get("run_id") == run_id and e.get("stage") == summary.stage
    ]
    if not mine and STAGES[summary.stage].dry_run_mode(config) != "paid":
        return summary
    paid = spend_totals(mine).get((), {})
    metrics = {
        **summary.metrics,
        **{
            k: paid.get(k, 0.0)
            for k in ("paid_requests", "prompt_tokens", "completion_tokens", "cost_usd")
        },
    }
    return summary.model_copy(update={"metrics": metrics})


def summarize_stage(
    stage: str, results: Iterable[ShardResult], seconds: float, skipped: str | None = None
) -> StageSummary:
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
        redone=[
            f"shard {r.shard:05d}: {r.redone}"
            for r in sorted(results, key=lambda r: r.shard)
            if r.redone
        ],
        rows_out=rows,
        errors=sum(r.errors for r in results),
        seconds=seconds,
        metrics=metrics,
    )


def recover(dataset: Dataset, run_id: str) -> None:
    """Tidy what killed builds left behind: temporaries of interrupted writes, and run records
    still saying ``running``. Only under the build lock, where no other writer is alive."""
    removed = dataset.remove_stale_temporaries()
    if removed:
        log.info(
            "removed %d temporary file(s) left by interrupted writes: %s",
            len(removed),
            ", ".join(removed[:5]),
        )
    for run in dataset.mark_interrupted_runs(run_id):
        log.warning(
            "run %s (started %s) ended without finishing: marked it interrupted",
            run.run_id,
            run.started_at,
        )


def start_run(dataset: Dataset, config: BuildConfig, run_id: str, plan: BuildPlan) -> RunManifest:
    recover(dataset, run_id)
    run = RunManifest(
        run_id=run_id,
        name=config.name,
        status="running",
        started_at=utcnow(),
        synthvg_version=__version__,
        config=config.model_dump(mode="json"),
        shards=len(plan.shards),
        images=plan.image_count,
        prefect_flow_run_id=_flow_run_id(),
    )
    dataset.write_run(run)
    return run


def _flow_run_id() -> str | None:
    """The Prefect flow run this build runs in, if any (Prefect is not imported for it)."""
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import flow_run

    return flow_run.id or None


#: A build compacts the commit log when it holds more files than this (one per commit).
COMPACT_AFTER_FILES = 256


def finish_run(dataset: Dataset, run: RunManifest, summaries: list[StageSummary]) -> RunManifest:
    """Record how the run ended and the dataset version it left; keep opening the dataset cheap
    by compacting the commit log once it has many small files."""
    from synthvg.storage.versions import commit_log_files, compact

    if commit_log_files(dataset) > COMPACT_AFTER_FILES:
        compact(dataset)
    failed = any(s.status in ("failed", "partial") for s in summaries)
    run = run.model_copy(
        update={
            "status": "failed" if failed else "completed",
            "finished_at": utcnow(),
            "stages": summaries,
            "version": dataset.version(),
        }
    )
    dataset.write_run(run)
    return run


def up_to_date(run: RunManifest) -> bool:
    """True when the run wrote no shard: everything was already committed as configured."""
    return all(s.shards_written == 0 and s.shards_failed == 0 for s in run.stages)


class StagePlan(BaseModel):
    """What a build of a config would do for one stage, against what its root holds."""

    stage: str
    skipped: str | None = None
    reads: dict[str, list[str]] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    shards: int = 0
    up_to_date: int = 0
    #: why -> how many shards would be redone for that reason
    redo: dict[str, int] = Field(default_factory=dict)


def plan_changes(
    config: BuildConfig, run_id: str | None = None
) -> tuple[list[StagePlan], list[WithdrawnShards]]:
    """The stage graph, and per stage how many shards a build would redo and why; writes nothing.

    A shard is redone when its fingerprint differs from the committed one: because a stage it
    reads is redone, else because its own settings, version or images changed.
    """
    dataset = Dataset(config.out)
    plan = plan_build(config, run_id or new_run_id())
    committed = {
        stage: {m.shard: m.fingerprint for m in dataset.manifests(stage)} for stage in STAGES
    }
    previous = {
        s["index"]: s["image_ids"]
        for s in (dataset.read_json(dataset.abspath(PLAN_FILE)) or {"shards": []})["shards"]
    }
    nodes = graph(config)
    out = []
    for name, node in nodes.items():
        out.append(
            StagePlan(
                stage=name,
                skipped=node.skipped,
                reads=node.reads,
                depends_on=node.depends_on,
                shards=len(plan.shards),
            )
        )
    by_name = {p.stage: p for p in out}
    for shard in plan.shards:
        fps = fingerprints(config, shard)
        redone: set[str] = set()
        for name, node in nodes.items():
            if node.skipped:
                continue
            if committed[name].get(shard.index) == fps[name]:
                by_name[name].up_to_date += 1
                continue
            redone.add(name)
            upstream = sorted({w for ws in node.reads.values() for w in ws} & redone)
            if upstream:
                why = f"{', '.join(upstream)} {'is' if len(upstream) == 1 else 'are'} redone"
            elif shard.index not in committed[name]:
                why = "not built yet"
            elif previous.get(shard.index, shard.image_ids) != shard.image_ids:
                why = "its images changed"
            else:
                why = "its settings or code changed"
            by_name[name].redo[why] = by_name[name].redo.get(why, 0) + 1
    return out, planned_withdrawal(dataset, config, plan)


def dry_run(
    config: BuildConfig, run_id: str | None = None, *, replace: bool = False
) -> dict[str, dict[str, float]]:
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
    with build_lock(dataset, run_id) as fence, requests_disabled():
        dataset, plan = prepare(config, run_id, replace=replace)
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
                estimate = stage.estimate(
                    shard, inputs, RunContext(run_id=run_id, stage=stage_name, shard=shard.index)
                )
                if estimate is None:
                    run_shard(dataset, config, stage_name, shard, run_id, fence=fence)
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
    *,
    replace: bool = False,
) -> RunManifest:
    """The whole build, sequentially, without Prefect (same steps as the flow).

    ``replace``: allow withdrawing committed work (see :func:`prepare`).
    """
    from synthvg.storage.lock import build_lock

    run_id = run_id or new_run_id()
    dataset = Dataset(config.out)
    dataset.init()
    with build_lock(dataset, run_id) as fence:
        dataset, plan = prepare(config, run_id, replace=replace)
        run = start_run(dataset, config, run_id, plan)
        summaries = []
        for stage in build_order(config):
            t0 = time.perf_counter()
            reason = STAGES[stage].skip_reason(config)
            if reason:
                withdraw_stage(dataset, stage, run_id)
                summaries.append(
                    summarize_stage(stage, [], time.perf_counter() - t0, skipped=reason)
                )
                continue
            results = []
            stopped: StageFatal | None = None
            for shard in plan.shards:
                if stopped is not None:  # nothing more is sent once the stage cannot succeed
                    done = shard_done(dataset, config, stage, shard)
                    results.append(
                        up_to_date_shard(stage, shard)
                        if done
                        else failed_shard(stage, shard, stopped)
                    )
                    continue
                try:
                    r = run_shard(dataset, config, stage, shard, run_id, fence=fence)
                except (StorageRefused, LockLost):  # every later write would fail too: stop
                    raise
                except StageFatal as e:
                    log.error("%s", e)
                    stopped, r = e, failed_shard(stage, shard, e)
                except Exception as e:  # as the flow does after retries: record, go on
                    log.error("%s shard %05d failed: %s", stage, shard.index, e)
                    r = failed_shard(stage, shard, e)
                results.append(r)
                if on_shard:
                    on_shard(r)
            summaries.append(
                with_spend(
                    summarize_stage(stage, results, time.perf_counter() - t0), config, run_id
                )
            )
        return finish_run(dataset, run, summaries)
