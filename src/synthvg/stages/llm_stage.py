"""What every LLM-backed stage does the same way: where the request cache and the spend ledger
live, keeping keys out of logs, sending a shard's requests (Batch API or online), sorting the
failures (see :func:`synthvg.llm.errors.failure_kind`), and the dry-run estimate.

A shard's requests end in one of three ways. Fatal (bad key, unknown model, unreachable URL,
budget): :class:`StageFatal` stops the stage for this run, nothing of the shard is committed,
and no other shard of the stage sends anything. Transient (retries ran out, an answer cut off):
:class:`ShardStopped`, the shard is not committed and the next run asks again only what is
not cached. Permanent for one input: an error row, the shard is committed.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from synthvg.image_files import ImageFileError, read_image
from synthvg.llm import (
    BatchJob,
    LLMClient,
    LLMConfig,
    LLMResult,
    failure_kind,
    install_log_redaction,
)
from synthvg.llm.client import DEFAULT_OUTPUT_ESTIMATE
from synthvg.llm.errors import FATAL_STATUSES, BudgetExceeded, LLMRequestError
from synthvg.schemas.config import (
    BuildConfig,
    OpenAIEditConfig,
    OpenAITeacherConfig,
    OpenAIVerifierConfig,
    RuleFiltersConfig,
    VisionLLMConfig,
)
from synthvg.stages.base import RunContext, StageFatal, StageOutput
from synthvg.storage import Dataset

Request = Mapping[str, Any]


class ShardStopped(RuntimeError):
    """The shard cannot finish now (retries ran out, an answer was cut off, a batch is still
    running). Answers so far are cached, so the next run resumes without paying twice."""


def llm_cache_dir(root: str) -> str:
    """``<dataset root>/cache/llm`` (a folder or an fsspec URL): the request cache and spend
    ledger every worker of a build, and every later build, share."""
    ds = Dataset(root)
    return os.path.join(ds.path, "cache", "llm") if ds.is_local else f"{root.rstrip('/')}/cache/llm"


def llm_sections(config: BuildConfig) -> Iterator[tuple[str, LLMConfig]]:
    """(where in the config, its endpoint config) for every LLM the build would call."""
    from synthvg.stages import STAGES

    def _active(stage: str) -> bool:
        return STAGES[stage].skip_reason(config) is None

    if _active("teacher") and isinstance(config.teacher, OpenAITeacherConfig):
        yield "teacher", config.teacher
    if _active("filters") and isinstance(config.filters, RuleFiltersConfig):
        for i, v in enumerate(config.filters.verifiers):
            if isinstance(v, OpenAIVerifierConfig):
                yield f"filters.verifiers[{i}]", v
    if _active("edit") and isinstance(config.edit, OpenAIEditConfig):
        yield "edit", config.edit


def ledger_urls(config: BuildConfig) -> set[str]:
    """Every spend ledger the build's LLM sections write to."""
    return {
        posixpath.join(cfg.cache_url or llm_cache_dir(config.out), "ledger")
        for _, cfg in llm_sections(config)
    }


def make_client(config: LLMConfig, build: BuildConfig, scope: str) -> LLMClient:
    """The client of one stage (``scope`` names its budget and rate limits) in one worker.

    With the cache on a local or mounted filesystem, budget and rate limits are shared by every
    worker process through files beside the ledger (build-wide). On an object store there is
    no lock to share them with: each of the ``executor.workers`` processes of a Dask or Ray
    build gets its share of the rate limits, and the budget holds per process.
    """
    cache_dir = config.cache_url or llm_cache_dir(build.out)
    shared = isinstance(fsspec.core.url_to_fs(cache_dir)[0], LocalFileSystem)
    share = build.executor.workers if build.executor.kind in ("dask", "ray") and not shared else 1
    if share > 1:
        config = config.model_copy(
            update={
                k: v / share
                for k in ("requests_per_minute", "tokens_per_minute")
                if (v := getattr(config, k)) is not None
            }
        )
    return LLMClient(config, cache_dir=cache_dir, budget_scope=scope)


def redact_logs() -> None:
    """Keys never reach a log, Prefect's API included."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        install_log_redaction(logging.getLogger(name))


def open_image(image: dict, ctx: RunContext, out: StageOutput) -> Image.Image | None:
    """The decoded image of an ``images`` row, or None with its error row (``bad_image``, ...)."""
    try:
        return read_image(image["file_uri"])[1]
    except ImageFileError as e:
        out.errors.append(
            ctx.error(e.kind, str(e), image_id=image["image_id"], source=image["file_uri"])
        )
        return None


def add_metrics(total: dict[str, float], more: Mapping[str, float]) -> dict[str, float]:
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + v
    return total


def price_factor(config: LLMConfig) -> float:
    """What a request costs relative to the online price: the Batch API's discount in batch mode."""
    return config.batch_price_factor if getattr(config, "batch", False) else 1.0


def estimate(client: LLMClient, requests: Sequence[Request]) -> dict[str, float]:
    """What sending ``requests`` would cost: requests, cached, tokens in and out, cost_usd
    (at the batch price in batch mode). Reads the cache, sends nothing, needs no key."""
    prepared = [client.prepare(**req) for req in requests]
    todo = [p for p in prepared if client.cache is None or p.key not in client.cache]
    factor = price_factor(client.config)
    return {
        "requests": float(len(prepared)),
        "cached": float(len(prepared) - len(todo)),
        "prompt_tokens": float(sum(p.est_prompt_tokens for p in todo)),
        "completion_tokens": float(
            sum(p.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE for p in todo)
        ),
        "cost_usd": sum(client.estimate_cost(p, factor) for p in todo),
    }


def _stop_marker(ctx: RunContext) -> str:
    return posixpath.join("cache", "llm", "stopped", f"{ctx.run_id}-{ctx.stage}.txt")


def begin_shard(client: LLMClient, root: str, ctx: RunContext) -> None:
    """Before a shard sends anything: tag the ledger with the run, and refuse at once when a
    fatal error already stopped this stage in this run (in this process or another one)."""
    client.begin_run(ctx.run_id, stage=ctx.stage)
    if client.fatal is not None:
        raise StageFatal(fatal_message(ctx.stage, client, client.fatal))
    ds = Dataset(root)
    marker = ds.abspath(_stop_marker(ctx))
    if ds.fs.exists(marker):
        raise StageFatal(ds.fs.cat_file(marker).decode("utf-8"))


def fatal_message(stage: str, client: LLMClient, exc: BaseException) -> str:
    """One line: what stopped the stage, where (the endpoint, never the key), what to do."""
    text = " ".join(str(exc).split())
    if client.endpoint not in text and not isinstance(exc, BudgetExceeded):
        text = f"{client.endpoint}: {text}"
    hint = ""
    if isinstance(exc, LLMRequestError) and exc.status_code in (401, 403):
        hint = f"; check the key in {client.config.key_source()}"
    elif isinstance(exc, LLMRequestError) and exc.status_code == 404:
        hint = f"; check model {client.config.model!r} and base_url"
    elif isinstance(exc, BudgetExceeded):
        hint = (
            f" (budget of {client.budget_scope} over every run of this dataset); raise budget_usd"
        )
    return f"{stage} stopped: {type(exc).__name__}: {text}{hint}; nothing of the stopped shards was written, run again once fixed"


def stop_on_failures(
    client: LLMClient, root: str, ctx: RunContext, results: Sequence[object]
) -> None:
    """Raise for failed requests that must not become error rows (fatal, then transient)."""
    failures = [r for r in results if isinstance(r, BaseException)]
    fatal = [e for e in failures if failure_kind(e) == "fatal"]
    if fatal:
        message = fatal_message(ctx.stage, client, fatal[0])
        Dataset(root).write_file(_stop_marker(ctx), message.encode())
        raise StageFatal(message)
    transient = [e for e in failures if failure_kind(e) == "transient"]
    if transient:
        first = " ".join(str(transient[0]).split())
        answered = sum(not isinstance(r, BaseException) for r in results)
        raise ShardStopped(
            f"{len(transient)} of {len(results)} requests not answered ({type(transient[0]).__name__}: {first}); "
            f"{answered} answers are cached; run the build again to ask only the others"
        )


def _run_batch(
    client: LLMClient, config: VisionLLMConfig, requests: Sequence[Request], name: str
) -> set[str]:
    """Answer the uncached requests through the Batch API; returns the keys it answered."""
    cache = client.cache
    keys = {client.prepare(**r).key for r in requests}
    todo = {k for k in keys if cache is None or k not in cache}
    if not todo:
        return set()
    report = BatchJob(client, name=name, poll_seconds=config.batch_poll_seconds).run(
        requests, timeout=config.batch_wait_seconds
    )
    if not report.done:
        raise ShardStopped(
            f"batch {', '.join(report.batch_ids)} still has {report.pending} requests pending; "
            "run the build again to pick it up where it is"
        )
    statuses = report.failed_status
    if fatal := [k for k, st in statuses.items() if st in FATAL_STATUSES]:
        raise LLMRequestError(
            f"batch {name} at {client.endpoint}: {report.failed[fatal[0]]}",
            status_code=statuses[fatal[0]],
        )
    if retry := [k for k, st in statuses.items() if st is None or st >= 500 or st == 408]:
        raise ShardStopped(
            f"batch {name}: {len(retry)} requests came back without an answer ({report.failed[retry[0]]}); "
            "run the build again to send them in a new batch"
        )
    return todo - set(report.failed)


def answer(
    client: LLMClient,
    config: VisionLLMConfig,
    requests: Sequence[Request],
    batch_name: str,
    ctx: RunContext,
    root: str,
) -> tuple[list[LLMResult | BaseException], dict[str, float]]:
    """Every request's answer (or its permanent failure), in order, and what they cost.

    With ``config.batch`` the uncached requests go through the Batch API first and are then
    read from the cache. Raises :class:`StageFatal` or :class:`ShardStopped` as the module
    docstring says; what was answered stays cached and in the ledger either way.
    """
    begin_shard(client, root, ctx)
    try:
        try:
            batched = (
                _run_batch(client, config, requests, batch_name)
                if config.batch and requests
                else set()
            )
        except ShardStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted like any request's failure
            stop_on_failures(client, root, ctx, [exc])
            raise
        results = client.map_complete(requests)
        stop_on_failures(client, root, ctx, results)
    finally:
        if client.ledger is not None:
            client.ledger.flush()
    answered = [r for r in results if isinstance(r, LLMResult)]
    paid = [r for r in answered if not r.cached or r.request_key in batched]
    price = config.price(config.model)
    batch_cost = (
        sum(
            price.cost(r.usage.prompt_tokens, r.usage.completion_tokens, config.batch_price_factor)
            for r in answered
            if r.request_key in batched
        )
        if price
        else 0.0
    )
    metrics = {
        "requests": float(len(requests)),
        "cached": float(sum(r.cached and r.request_key not in batched for r in answered)),
        "batched": float(len(batched)),
        "prompt_tokens": float(sum(r.usage.prompt_tokens for r in paid)),
        "completion_tokens": float(sum(r.usage.completion_tokens for r in paid)),
        "cost_usd": sum(r.cost_usd for r in answered) + batch_cost,
    }
    return results, metrics
