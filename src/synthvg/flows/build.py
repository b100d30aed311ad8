"""The ``build-dataset`` flow: plan, the shard tasks of every stage (subflow ``shards``), publish.

Shard tasks are chained per shard through the stage graph (:mod:`synthvg.stages.dag`); the
logic they call lives in :mod:`synthvg.pipeline`, so the flow only orchestrates, reports and
watches progress.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.exceptions import UnfinishedRun
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import allow_failure

from synthvg.flows.runners import placement, task_runners
from synthvg.pipeline import (
    ShardResult,
    WithdrawalRefused,
    active_stages,
    failed_shard,
    finish_run,
    load_shards,
    shard_done,
    start_run,
    summarize_stage,
    task_groups,
    up_to_date,
    up_to_date_shard,
    with_spend,
    withdraw_stage,
)
from synthvg.runs import new_run_id
from synthvg.schemas import RunManifest, StageSummary
from synthvg.schemas.config import BuildConfig
from synthvg.stages import ShardSpec, graph
from synthvg.stats import HEADLINE_COUNTS, compute_stats
from synthvg.storage import Dataset, LockLost, StorageRefused, StorageWriteError, build_lock
from synthvg.tasks import plan_task, shard_task
from synthvg.tasks.shard import ShardsFailed


class BuildIncomplete(RuntimeError):
    """Some shards failed; the rest is committed and a rerun picks up only what is missing."""

    def __init__(self, run: RunManifest):
        failed = [
            f"{s.stage}: {s.shards_failed} shard(s) ({s.reason})"
            for s in run.stages
            if s.shards_failed
        ]
        super().__init__("build incomplete; " + "; ".join(failed))
        self.run = run


class _ReportedFaults(logging.Filter):
    """Drop the traceback Prefect logs for faults the build reports in one line itself (storage
    refused a write, the lock was lost, shards failed): it would only bury that line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(
            record.exc_info[1], (StorageWriteError, LockLost, BuildIncomplete)
        ):
            record.exc_info = record.exc_text = None
        return True


_REPORTED_FAULTS = _ReportedFaults()
for _name in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_name).addFilter(_REPORTED_FAULTS)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def output_link(dataset: Dataset, rel: str = "") -> str:
    """A URL for a file of the dataset: ``file://`` for local roots, the fsspec URL otherwise."""
    uri = dataset.uri(rel).rstrip("/")
    return Path(uri).resolve().as_uri() if dataset.is_local else uri


#: Progress artifacts are updated at most this often (and once at the end): one API request
#: per finished shard task was ~2 of every 3 requests a build made, each also work for the server.
PROGRESS_EVERY_S = 2.0
_LAST_UPDATE: dict[object, float] = {}


def _progress_artifact(**fields: Any) -> UUID:
    """A progress artifact's id (called from sync code, where Prefect returns it directly)."""
    return cast(UUID, create_progress_artifact(**fields))


def _due(artifact_id: object, final: bool) -> bool:
    """Whether a progress artifact is due an update now (always when ``final``)."""
    now = time.monotonic()
    if final or now - _LAST_UPDATE.get(artifact_id, float("-inf")) >= PROGRESS_EVERY_S:
        _LAST_UPDATE[artifact_id] = now
        return True
    return False


class _Progress:
    """The build's progress artifact plus a terminal bar (only when stderr is a terminal)."""

    def __init__(self, config: BuildConfig, total: int):
        from tqdm import tqdm

        self.total = max(total, 1)
        self.done = 0
        self.artifact_id = _progress_artifact(
            progress=0.0,
            key=artifact_key(config.name, "build-progress"),
            description=f"build {config.name}: shards done over all stages",
        )
        self.bar = tqdm(total=total, unit="shard", disable=None, leave=False)

    def advance(self, label: str) -> None:
        self.done += 1
        self.bar.set_description(label)
        self.bar.update(1)
        if _due(self.artifact_id, final=self.done >= self.total):
            update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)

    def close(self) -> None:
        self.bar.close()


def _counts(counts: dict[str, int | float]) -> str:
    # Empty, not "-": the UI renders table cells as markdown, where "-" is a list bullet.
    return ", ".join(f"{k}={v:g}" for k, v in sorted(counts.items()))


def _stage_table(
    summary: StageSummary, results: list[ShardResult], images: dict[int, int]
) -> list[dict]:
    """One row per shard and a total: in, out, dropped by reason, time, throughput, cost."""

    def row(
        shard: str,
        status: str,
        n_in: int,
        out: dict,
        dropped: dict,
        seconds: float,
        metrics: dict,
        msg: str,
    ) -> dict:
        return {
            "shard": shard,
            "status": status,
            "images_in": n_in,
            "rows_out": _counts(out),
            "dropped_by_reason": _counts(dropped),
            "seconds": round(seconds, 2),
            "images_per_s": round(n_in / seconds, 2) if seconds > 0 else None,
            "cost_usd": round(metrics.get("cost_usd", 0.0), 6),
            "metrics": _counts({k: round(v, 6) for k, v in metrics.items() if k != "cost_usd"}),
            "message": msg,
        }

    ordered = sorted(results, key=lambda r: r.shard)
    rows = [
        row(
            f"{r.shard:05d}",
            r.status,
            images.get(r.shard, 0),
            r.rows,
            r.errors_by_kind,
            r.seconds,
            r.metrics,
            r.message or (f"redone: {r.redone}" if r.redone else ""),
        )
        for r in ordered
    ]
    if not rows:
        return [{"status": summary.status, "reason": summary.reason or ""}]
    worked = [r for r in ordered if r.status == "written"]
    dropped: dict[str, int] = {}
    for r in worked:
        for k, n in r.errors_by_kind.items():
            dropped[k] = dropped.get(k, 0) + n
    # Throughput over the stage's wall time: what the cluster achieved, not a sum of shard times.
    n_in = sum(images.get(r.shard, 0) for r in worked)
    rows.append(
        row(
            "total",
            summary.status,
            n_in,
            summary.rows_out,
            dropped,
            summary.seconds,
            summary.metrics,
            summary.reason or "",
        )
    )
    return rows


def _task_outcome(
    future: PrefectFuture, stage: str, shards: list[ShardSpec]
) -> tuple[list[ShardResult], StorageRefused | LockLost | None]:
    """Each shard's result, and the storage fault or lost lock that ends the build, if any."""
    try:
        results = future.result()  # first: the future's state is final only after it
    except ShardsFailed as failed:
        return failed.results, failed.fatal
    except UnfinishedRun:  # cancelled or crashed before it ran
        return [
            ShardResult(
                stage=stage,
                shard=shard.index,
                status="failed",
                message=f"the task of shard {shard.index} did not run",
            )
            for shard in shards
        ], None
    except (StorageRefused, LockLost) as e:
        return [failed_shard(stage, shard, e) for shard in shards], e
    except Exception as e:  # the task already retried; record it and go on with other shards
        get_run_logger().error("%s shards %s failed: %s", stage, [s.index for s in shards], e)
        return [failed_shard(stage, shard, e) for shard in shards], None
    if future.state.name == "Cached":
        return [up_to_date_shard(stage, shard) for shard in shards], None
    return results, None


@flow(name="shards", flow_run_name="shards", log_prints=False)
def shards_flow(config: BuildConfig, run_id: str, fence: str | None = None) -> list[StageSummary]:
    """Every stage over every shard of the plan saved by ``plan-shards``.

    A task runs one stage over one shard, or over a few consecutive shards when the stages are
    light (:func:`~synthvg.pipeline.task_groups`; every stage groups them alike). Each task
    waits only for the tasks of the same shards that write what its stage reads, so stage B
    works on shard 1 while stage A works on shard 2, and stages that do not read each other run
    side by side (``executor.overlap``; without it each stage waits for every shard of the
    stages it reads). Tasks are submitted shard by shard, so a thread pool's workers pick them
    up in an order that never waits on a task not yet started.

    A storage fault (read-only, full disk) or a lost lock ends the build once the shards
    already submitted are done: every later shard would fail the same way.
    """
    logger = get_run_logger()
    dataset = Dataset(config.out)
    shards = load_shards(dataset)
    ex = config.executor
    nodes = graph(config)
    active = [name for name, node in nodes.items() if node.skipped is None]
    task = shard_task.with_options(
        retries=ex.retries,
        retry_delay_seconds=exponential_backoff(ex.retry_delay_seconds)(ex.retries)
        if ex.retries
        else 0,
        retry_jitter_factor=0.2,
    )
    groups = task_groups(config, shards)
    if len(groups) < len(shards):
        logger.info(
            "up to %d shards per task: %d tasks per stage (executor.task_images)",
            len(groups[0]),
            len(groups),
        )
    t0 = time.perf_counter()
    futures: dict[PrefectFuture, tuple[str, list[ShardSpec]]] = {}
    submitted: dict[tuple[str, int], PrefectFuture] = {}

    def submit(stage: str, group: list[ShardSpec]) -> None:
        upstream = sorted({w for ws in nodes[stage].reads.values() for w in ws})
        with placement(ex, stage):
            future = task.with_options(
                refresh_cache=not all(shard_done(dataset, config, stage, s) for s in group)
            ).submit(  # type: ignore[call-overload]  # Prefect's overloads miss wait_for with positionals
                config,
                stage,
                group,
                run_id,
                fence,
                # Run even when an upstream task failed: its other shards may be done, and
                # run_shard asks the storage whether each shard's upstream is.
                wait_for=[allow_failure(submitted[(u, group[0].index)]) for u in upstream],
            )
        submitted[(stage, group[0].index)] = future
        futures[future] = (stage, group)

    if ex.overlapped:
        for group in groups:
            for stage in active:
                submit(stage, group)
    else:
        for stage in active:
            wait(
                [
                    submitted[(u, g[0].index)]
                    for u in {w for ws in nodes[stage].reads.values() for w in ws}
                    for g in groups
                ]
            )
            for group in groups:
                submit(stage, group)

    results: dict[str, list[ShardResult]] = {stage: [] for stage in active}
    finished: dict[str, float] = {}
    stage_progress = {
        stage: _progress_artifact(
            progress=0.0,
            key=artifact_key(config.name, "stage", stage, "progress"),
            description=f"{stage}: shards done",
        )
        for stage in active
    }
    progress = _PROGRESS.get(run_id)
    fatal: BaseException | None = None  # a storage fault or a lost lock: the build stops
    for future in as_completed(list(futures)):
        stage, group = futures[future]
        done, ended = _task_outcome(future, stage, group)
        fatal = fatal or ended
        results[stage] += done
        if _due(stage_progress[stage], final=len(results[stage]) == len(shards)):
            update_progress_artifact(
                stage_progress[stage], progress=100.0 * len(results[stage]) / len(shards)
            )
        if progress:
            for shard in group:
                progress.advance(f"{stage} {shard.index:05d}")
        if len(results[stage]) == len(shards):
            finished[stage] = time.perf_counter() - t0

    images = {sh.index: len(sh.image_ids) for sh in shards}
    summaries = []
    for stage, node in nodes.items():
        if node.skipped:
            withdrawn = withdraw_stage(dataset, stage, run_id)
            logger.info(
                "%s skipped: %s%s",
                stage,
                node.skipped,
                f" (withdrew {withdrawn} stale shards)" if withdrawn else "",
            )
            summary = summarize_stage(stage, [], 0.0, skipped=node.skipped)
        else:
            summary = with_spend(
                summarize_stage(
                    stage, results[stage], finished.get(stage, time.perf_counter() - t0)
                ),
                config,
                run_id,
            )
            logger.info(
                "%s: %d images in; shards written %d, up to date %d, failed %d; rows out %s; %d input errors; done after %.1fs",
                stage,
                sum(images.values()),
                summary.shards_written,
                summary.shards_up_to_date,
                summary.shards_failed,
                summary.rows_out or "{}",
                summary.errors,
                summary.seconds,
            )
        create_table_artifact(
            key=artifact_key(config.name, "stage", stage),
            table=_stage_table(summary, results.get(stage, []), images if not node.skipped else {}),
            description=f"{stage}: {summary.status}"
            + (f" ({summary.reason})" if summary.reason else ""),
        )
        summaries.append(summary)
    if fatal is not None:
        raise fatal
    return summaries


@contextmanager
def _subflow() -> Iterator[None]:
    """Run a subflow without a heartbeat of its own: it runs in its parent's process, whose
    heartbeat already tells the server the build is alive, and Prefect joins a flow run's
    heartbeat thread at its end, which sleeps in 1 s steps (up to 1 s per subflow). The
    settings are copied, not re-validated (``temporary_settings`` takes ~0.2 s per call)."""
    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    current = context.settings
    settings = current.model_copy(
        update={"flows": current.flows.model_copy(update={"heartbeat_frequency": None})}
    )
    with SettingsContext(profile=context.profile, settings=settings):
        yield


# Progress objects live in the flow's process; subflows find theirs by id.
_PROGRESS: dict[str, _Progress] = {}


#: Where publish writes the statistics, beside the dataset (what ``synthvg stats --json`` prints).
STATS_FILE = "stats.json"


def published_stats(dataset: Dataset) -> dict:
    """The statistics publish wrote: a build's last step, so after a build they are current, and
    reading them spares computing them again (~1 s on a paper-scale root)."""
    stats = dataset.read_json(dataset.abspath(STATS_FILE))
    return stats if stats is not None else compute_stats(dataset)


@flow(name="publish", flow_run_name="publish")
def publish_flow(config: BuildConfig) -> dict:
    """Statistics over the whole dataset, as a file beside it and as Prefect artifacts."""
    import json

    dataset = Dataset(config.out)
    stats = compute_stats(dataset)
    dataset.write_file(STATS_FILE, json.dumps(stats, indent=2, default=str).encode())
    create_link_artifact(
        key=artifact_key(config.name, "dataset"),
        link=output_link(dataset),
        link_text=dataset.url,
        description=f"{config.name}: the dataset root (query it with `synthvg sql --root`)",
    )
    t = stats["table1"]
    create_table_artifact(
        key=artifact_key(config.name, "stats"),
        table=[{"metric": k, "value": stats[k]} for k in HEADLINE_COUNTS]
        + [{"metric": k, "value": v} for k, v in t.items()],
        description=f"dataset statistics of {config.name}",
    )
    create_table_artifact(
        key=artifact_key(config.name, "verdicts"),
        table=stats["verdicts_by_rule"] or [{"rule": "(no relations)"}],
        description=f"filter verdicts per rule or verifier in {config.name}",
    )
    get_run_logger().info(
        "published %s: %d images, %d regions, %d relations; objects/image %.1f, triplets/image %.1f, predicates/region %.1f",
        dataset.url,
        stats["images"],
        stats["regions"],
        stats["relations"],
        t["objects_per_image"],
        t["triplets_per_image"],
        t["predicates_per_region"],
    )
    return stats


@flow(name="build-dataset", flow_run_name="build-{config.name}")
def build_dataset(
    config: BuildConfig, run_id: str | None = None, replace: bool = False
) -> RunManifest:
    """Build (or resume) the dataset described by ``config``; returns the run manifest.

    ``replace`` allows the build to withdraw committed work (shards that leave the plan, stages
    set to ``none``); without it such a build is refused before it writes anything.
    """
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    dataset = Dataset(config.out)
    dataset.init()
    with build_lock(dataset, run_id) as fence:
        plan = plan_task(config, run_id, replace)
        if isinstance(plan, WithdrawalRefused):
            # A flow may return a state: the caller gets the refusal raised (or, with
            # return_state=True, this Failed state).
            return Failed(message=str(plan), data=plan)  # type: ignore[return-value]
        logger.info(
            "run %s: %d images in %d shards of <= %d -> %s",
            run_id,
            plan.image_count,
            len(plan.shards),
            config.shard_size,
            dataset.url,
        )
        if plan.errors:
            logger.warning(
                "planning found %d input problems (see the errors table)", len(plan.errors)
            )
        run = start_run(dataset, config, run_id, plan)
        active = active_stages(config)
        progress = _Progress(config, len(active) * len(plan.shards))
        _PROGRESS[run_id] = progress
        try:
            # A build whose stages are all skipped submits nothing: it needs no cluster.
            runners: AbstractContextManager[Callable[[], Any]] = (
                task_runners(config.executor)
                if active
                else nullcontext(lambda: ThreadPoolTaskRunner(max_workers=1))
            )
            with runners as runner, _subflow():
                summaries = shards_flow.with_options(task_runner=runner())(config, run_id, fence)
        finally:
            progress.close()
            _PROGRESS.pop(run_id, None)
        run = finish_run(dataset, run, summaries)
        with _subflow():
            publish_flow(config)
    if up_to_date(run):
        logger.info("every shard is up to date: nothing was written")
    if run.status != "completed":
        raise BuildIncomplete(run)
    return run
