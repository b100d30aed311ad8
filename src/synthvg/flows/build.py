"""The ``build-dataset`` flow: seeds -> regions -> depth -> teacher -> filters -> robin -> edit -> publish.

Each stage is a subflow that maps one task over the shards; the logic they call lives in
:mod:`synthvg.pipeline`, so the flow only orchestrates, reports and watches progress.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from synthvg.flows.runners import placement, task_runners
from synthvg.pipeline import (
    ShardResult,
    failed_shard,
    finish_run,
    load_shards,
    new_run_id,
    shard_done,
    start_run,
    summarize_stage,
    up_to_date,
    up_to_date_shard,
    with_spend,
    withdraw_stage,
)
from synthvg.schemas import RunManifest, StageSummary
from synthvg.schemas.config import BuildConfig
from synthvg.stages import STAGE_ORDER, STAGES
from synthvg.stats import compute_stats
from synthvg.storage import Dataset, build_lock
from synthvg.tasks import plan_task, shard_task


class BuildIncomplete(RuntimeError):
    """Some shards failed; the rest is committed and a rerun picks up only what is missing."""

    def __init__(self, run: RunManifest):
        failed = [f"{s.stage}: {s.shards_failed} shard(s) ({s.reason})" for s in run.stages if s.shards_failed]
        super().__init__("build incomplete; " + "; ".join(failed))
        self.run = run


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def output_link(dataset: Dataset, rel: str = "") -> str:
    """A URL for a file of the dataset: ``file://`` for local roots, the fsspec URL otherwise."""
    uri = dataset.uri(rel).rstrip("/")
    return Path(uri).resolve().as_uri() if dataset.is_local else uri


class _Progress:
    """The build's progress artifact plus a terminal bar (only when stderr is a terminal)."""

    def __init__(self, config: BuildConfig, total: int):
        from tqdm import tqdm

        self.total = max(total, 1)
        self.done = 0
        self.artifact_id = create_progress_artifact(
            progress=0.0, key=artifact_key(config.name, "build-progress"), description=f"build {config.name}: shards done over all stages"
        )
        self.bar = tqdm(total=total, unit="shard", disable=None, leave=False)

    def advance(self, label: str) -> None:
        self.done += 1
        self.bar.set_description(label)
        self.bar.update(1)
        update_progress_artifact(self.artifact_id, progress=100.0 * self.done / self.total)

    def close(self) -> None:
        self.bar.close()


def _counts(counts: dict[str, int | float]) -> str:
    # Empty, not "-": the UI renders table cells as markdown, where "-" is a list bullet.
    return ", ".join(f"{k}={v:g}" for k, v in sorted(counts.items()))


def _stage_table(summary: StageSummary, results: list[ShardResult], images: dict[int, int]) -> list[dict]:
    """One row per shard and a total: in, out, dropped by reason, time, throughput, cost."""

    def row(shard: str, status: str, n_in: int, out: dict, dropped: dict, seconds: float, metrics: dict, msg: str) -> dict:
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
        row(f"{r.shard:05d}", r.status, images.get(r.shard, 0), r.rows, r.errors_by_kind, r.seconds, r.metrics, r.message or "")
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
    rows.append(row("total", summary.status, n_in, summary.rows_out, dropped, summary.seconds, summary.metrics, summary.reason or ""))
    return rows


def _worth_a_retry(task, task_run, state) -> bool:
    """Prefect retries a failed shard, except when the whole stage cannot succeed in this run."""
    from synthvg.stages.base import StageFatal

    return not isinstance(state.result(raise_on_failure=False), StageFatal)


@flow(name="stage", flow_run_name="{stage}", log_prints=False)
def stage_flow(config: BuildConfig, stage: str, run_id: str) -> StageSummary:
    """One stage over every shard of the plan saved by ``plan-shards``."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    reason = STAGES[stage].skip_reason(config)
    images: dict[int, int] = {}  # shard -> images in it
    if reason:
        withdrawn = withdraw_stage(Dataset(config.out), stage)
        logger.info("%s skipped: %s%s", stage, reason, f" (withdrew {withdrawn} stale shards)" if withdrawn else "")
        summary = summarize_stage(stage, [], time.perf_counter() - t0, skipped=reason)
        results: list[ShardResult] = []
    else:
        shards = load_shards(Dataset(config.out))
        ex = config.executor
        task = shard_task.with_options(
            retries=ex.retries,
            retry_delay_seconds=exponential_backoff(ex.retry_delay_seconds)(ex.retries) if ex.retries else 0,
            retry_jitter_factor=0.2,
            retry_condition_fn=_worth_a_retry,
        )
        stage_progress = create_progress_artifact(
            progress=0.0, key=artifact_key(config.name, "stage", stage, "progress"), description=f"{stage}: shards done"
        )
        dataset = Dataset(config.out)
        with placement(ex, stage):
            futures = {
                task.with_options(refresh_cache=not shard_done(dataset, config, stage, shard)).submit(config, stage, shard, run_id): shard
                for shard in shards
            }
        results = []
        progress = _PROGRESS.get(run_id)
        for future in as_completed(list(futures)):
            shard = futures[future]
            try:
                result = future.result()  # first: the future's state is final only after it
                if future.state.name == "Cached":  # Prefect's copy of a shard the storage holds as is
                    result = up_to_date_shard(stage, shard)
            except Exception as e:  # the task already retried; record it and go on with other shards
                logger.error("%s shard %05d failed: %s", stage, shard.index, e)
                result = failed_shard(stage, shard, e)
            results.append(result)
            update_progress_artifact(stage_progress, progress=100.0 * len(results) / len(shards))
            if progress:
                progress.advance(f"{stage} {shard.index:05d}")
        summary = with_spend(summarize_stage(stage, results, time.perf_counter() - t0), config, run_id)
        images = {sh.index: len(sh.image_ids) for sh in shards}
        rows_in = sum(images.values())
        logger.info(
            "%s: %d images in; shards written %d, up to date %d, failed %d; rows out %s; %d input errors; %.1fs",
            stage, rows_in, summary.shards_written, summary.shards_up_to_date, summary.shards_failed,
            summary.rows_out or "{}", summary.errors, summary.seconds,
        )
    create_table_artifact(
        key=artifact_key(config.name, "stage", stage),
        table=_stage_table(summary, results, images),
        description=f"{stage}: {summary.status}" + (f" ({summary.reason})" if summary.reason else ""),
    )
    return summary


# Progress objects live in the flow's process; subflows find theirs by id.
_PROGRESS: dict[str, _Progress] = {}


@flow(name="publish", flow_run_name="publish")
def publish_flow(config: BuildConfig) -> dict:
    """Statistics over the whole dataset, as a file beside it and as Prefect artifacts."""
    import json

    dataset = Dataset(config.out)
    stats = compute_stats(dataset)
    dataset.write_file("stats.json", json.dumps(stats, indent=2, default=str).encode())
    create_link_artifact(
        key=artifact_key(config.name, "dataset"), link=output_link(dataset), link_text=dataset.url,
        description=f"{config.name}: the dataset root (query it with `synthvg sql --root`)",
    )
    t = stats["table1"]
    create_table_artifact(
        key=artifact_key(config.name, "stats"),
        table=[
            {"metric": k, "value": stats[k]}
            for k in ("images", "regions", "regions_kept", "proposals", "relations", "relations_not_dropped", "errors")
        ]
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
        dataset.url, stats["images"], stats["regions"], stats["relations"],
        t["objects_per_image"], t["triplets_per_image"], t["predicates_per_region"],
    )
    return stats


@flow(name="build-dataset", flow_run_name="build-{config.name}")
def build_dataset(config: BuildConfig, run_id: str | None = None) -> RunManifest:
    """Build (or resume) the dataset described by ``config``; returns the run manifest."""
    logger = get_run_logger()
    run_id = run_id or new_run_id()
    dataset = Dataset(config.out)
    dataset.init()
    with build_lock(dataset, run_id):
        plan = plan_task(config, run_id)
        logger.info("run %s: %d images in %d shards of <= %d -> %s", run_id, plan.image_count, len(plan.shards), config.shard_size, dataset.url)
        if plan.errors:
            logger.warning("planning found %d input problems (see the errors table)", len(plan.errors))
        run = start_run(dataset, config, run_id, plan)
        active = [s for s in STAGE_ORDER if STAGES[s].skip_reason(config) is None]
        progress = _Progress(config, len(active) * len(plan.shards))
        _PROGRESS[run_id] = progress
        summaries = []
        try:
            with task_runners(config.executor) as runner:
                for stage in STAGE_ORDER:
                    # Skipped stages submit nothing: they need no cluster.
                    sub = runner() if stage in active else ThreadPoolTaskRunner(max_workers=1)
                    summaries.append(stage_flow.with_options(task_runner=sub)(config, stage, run_id))
        finally:
            progress.close()
            _PROGRESS.pop(run_id, None)
        run = finish_run(dataset, run, summaries)
        publish_flow(config)
    if up_to_date(run):
        logger.info("every shard is up to date: nothing was written")
    if run.status != "completed":
        raise BuildIncomplete(run)
    return run
