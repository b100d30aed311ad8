"""What every LLM-backed stage does the same way: where the request cache lives, keeping keys out
of logs, sending a shard's requests (Batch API or online) and stopping cleanly at the budget,
the shard's cost metrics, and the dry-run estimate.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from synthvg.image_files import ImageFileError, read_image
from synthvg.llm import (
    BatchJob,
    BudgetExceeded,
    LLMClient,
    LLMResult,
    LLMRetryExhausted,
    install_log_redaction,
)
from synthvg.llm.client import DEFAULT_OUTPUT_ESTIMATE
from synthvg.schemas.config import VisionLLMConfig
from synthvg.stages.base import RunContext, StageOutput
from synthvg.storage import Dataset

Request = Mapping[str, Any]


class ShardStopped(RuntimeError):
    """The shard cannot finish now (budget spent, endpoint down). Answers so far are cached,
    so running the build again resumes without paying for them twice."""


def llm_cache_dir(root: str) -> str:
    """Request cache beside a local dataset; under the user's cache for remote roots."""
    ds = Dataset(root)
    if ds.is_local:
        return os.path.join(ds.path, "cache", "llm")
    return os.path.join(os.path.expanduser("~/.cache/synthvg/llm"), ds.url.replace("://", "_").replace("/", "_"))


def redact_logs() -> None:
    """Keys never reach a log, Prefect's API included."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        install_log_redaction(logging.getLogger(name))


def open_image(image: dict, ctx: RunContext, out: StageOutput) -> Image.Image | None:
    """The decoded image of an ``images`` row, or None with its error row (``bad_image``, ...)."""
    try:
        return read_image(image["file_uri"])[1]
    except ImageFileError as e:
        out.errors.append(ctx.error(e.kind, str(e), image_id=image["image_id"], source=image["file_uri"]))
        return None


def add_metrics(total: dict[str, float], more: Mapping[str, float]) -> dict[str, float]:
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + v
    return total


def estimate(client: LLMClient, requests: Sequence[Request]) -> dict[str, float]:
    """What sending ``requests`` would cost: requests, cached, tokens in and out, cost_usd."""
    prepared = [client.prepare(**req) for req in requests]
    todo = [p for p in prepared if client.cache is None or p.key not in client.cache]
    return {
        "requests": float(len(prepared)),
        "cached": float(len(prepared) - len(todo)),
        "prompt_tokens": float(sum(p.est_prompt_tokens for p in todo)),
        "completion_tokens": float(sum(p.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE for p in todo)),
        "cost_usd": sum(client.estimate_cost(p) for p in todo),
    }


def _run_batch(client: LLMClient, config: VisionLLMConfig, requests: Sequence[Request], name: str) -> set[str]:
    """Answer the uncached requests through the Batch API; returns the keys it answered."""
    todo = {k for r in requests if (k := client.prepare(**r).key) not in client.cache}
    if not todo:
        return set()
    report = BatchJob(client, name=name, poll_seconds=config.batch_poll_seconds).run(requests, timeout=config.batch_wait_seconds)
    if not report.done:
        raise ShardStopped(
            f"batch {', '.join(report.batch_ids)} still has {report.pending} requests pending; "
            "run the build again to pick it up where it is"
        )
    return todo


def answer(
    client: LLMClient, config: VisionLLMConfig, requests: Sequence[Request], batch_name: str
) -> tuple[list[LLMResult | BaseException], dict[str, float]]:
    """Every request's answer (or its exception), in order, and what they cost.

    With ``config.batch`` the uncached requests go through the Batch API first and are then
    read from the cache. Raises :class:`ShardStopped` when the budget or the endpoint stopped
    some requests: nothing of the shard is written, and what was answered stays cached.
    """
    batched = _run_batch(client, config, requests, batch_name) if config.batch and requests else set()
    results = client.map_complete(requests)
    answered = [r for r in results if isinstance(r, LLMResult)]
    paid = [r for r in answered if not r.cached or r.request_key in batched]
    price = config.price(config.model)
    batch_cost = sum(
        price.cost(r.usage.prompt_tokens, r.usage.completion_tokens, config.batch_price_factor)
        for r in answered
        if r.request_key in batched
    ) if price else 0.0
    metrics = {
        "requests": float(len(requests)),
        "cached": float(sum(r.cached and r.request_key not in batched for r in answered)),
        "batched": float(len(batched)),
        "prompt_tokens": float(sum(r.usage.prompt_tokens for r in paid)),
        "completion_tokens": float(sum(r.usage.completion_tokens for r in paid)),
        "cost_usd": sum(r.cost_usd for r in answered) + batch_cost,
    }
    stop = [r for r in results if isinstance(r, BudgetExceeded | LLMRetryExhausted)]
    if stop:
        raise ShardStopped(
            f"{len(stop)} of {len(requests)} requests not answered ({type(stop[0]).__name__}: {stop[0]}); "
            f"{len(answered)} answers are cached and will not be paid for again"
        )
    return results, metrics
