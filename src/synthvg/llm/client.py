"""``LLMClient``: cached, rate-limited, budgeted chat completions against any OpenAI-compatible API.

The SDK's own retries are off (``max_retries=0``): retrying here lets us count attempts,
honour Retry-After for the whole client (not just one request), log each retry, and stop at a
hard budget. All requests of a client run on one private event loop in a daemon thread, so the
concurrency cap, the rate limiter and the HTTP connection pool are shared by every caller:
async code awaiting ``complete`` from any loop, and sync pipeline stages calling ``map_complete``
from several worker threads at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import openai
from pydantic import BaseModel

from synthvg.llm.cache import RequestCache, request_key
from synthvg.llm.config import LLMConfig
from synthvg.llm.errors import (
    BudgetExceeded,
    LLMConfigError,
    LLMRetryExhausted,
    ResponseFormatRejected,
    StructuredOutputError,
)
from synthvg.llm.limits import RateLimiter, estimate_tokens
from synthvg.llm.loop import LoopThread
from synthvg.llm.redact import log, redact, register_secret
from synthvg.llm.results import (
    LLMResult,
    PreparedRequest,
    TokenUsage,
    UsageTotals,
    combine,
    result_from_response,
)
from synthvg.llm.retry import (
    BadBody,
    full_jitter,
    retry_after_seconds,
    server_message,
    status_error,
)
from synthvg.llm.structured import (
    json_schema_format,
    parse_content,
    repair_turns,
    schema_of,
    with_schema_instruction,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Messages = Sequence[Mapping[str, Any]]
ResponseFormat = type[BaseModel] | Mapping[str, Any]

# Output tokens assumed for the budget check when the request sets no max_tokens.
DEFAULT_OUTPUT_ESTIMATE = 1024


class LLMClient:
    """Chat completions with caching, retries, rate limits, structured output and a budget.

    ``cache_dir`` is typically ``<dataset root>/cache/llm``; None (or ``config.cache=False``)
    disables the cache. Use as a context manager, or call ``close()``.
    """

    def __init__(self, config: LLMConfig, *, cache_dir: str | os.PathLike[str] | None = None):
        self.config = config
        key = config.resolve_api_key()
        register_secret(key)
        if config.budget_usd is not None and config.price(config.model) is None:
            raise LLMConfigError(f"budget_usd is set but prices has no entry for {config.model!r}")
        self._sdk = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=key,
            max_retries=0,
            timeout=config.timeout_seconds,
        )
        self.cache = RequestCache(cache_dir) if cache_dir is not None and config.cache else None
        self.usage = UsageTotals()
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._structured_mode = config.structured_output
        self._spent = 0.0
        self._reserved = 0.0
        self._unpriced_warned: set[str] = set()
        self._loop = LoopThread()
        self._finalizer = weakref.finalize(self, self._loop.stop)

    def __repr__(self) -> str:
        cache = str(self.cache.root) if self.cache else None
        return (
            f"LLMClient(model={self.config.model!r}, base_url={self.config.base_url!r}, "
            f"cache={cache!r})"
        )

    @property
    def sdk(self) -> openai.AsyncOpenAI:
        """The underlying SDK client; use it only from coroutines run by this client."""
        return self._sdk

    # ---- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self._loop.started and not self._loop.in_loop():
            with contextlib.suppress(Exception):  # closing must not fail a finished run
                self._loop.submit(self._sdk.close()).result(timeout=10)
        self._finalizer()

    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    # ---- running coroutines on the client's loop ------------------------------------------------

    async def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the client's loop, from whatever loop the caller is on."""
        if self._loop.in_loop():
            return await coro
        return await asyncio.wrap_future(self._loop.submit(coro))

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine on the client's loop from sync code."""
        self._check_sync_caller()
        return self._loop.submit(coro).result()

    def run_all(self, factories: Sequence[Callable[[], Awaitable[T]]]) -> list[T | BaseException]:
        """Run every factory's coroutine concurrently (under the client's caps) from sync code.

        Results come back in order; an item that failed holds its exception instead, so one
        bad request (or ``BudgetExceeded``) does not lose the others' answers.
        """
        self._check_sync_caller()

        async def call(factory: Callable[[], Awaitable[T]]) -> T:
            return await factory()

        futures = [self._loop.submit(call(f)) for f in factories]
        results: list[T | BaseException] = []
        try:
            for future in futures:
                try:
                    results.append(future.result())
                except (Exception, concurrent.futures.CancelledError) as exc:
                    results.append(exc)
        except BaseException:  # KeyboardInterrupt: stop sending, the cache keeps what finished
            for future in futures:
                future.cancel()
            raise
        return results

    def map_complete(
        self, requests: Sequence[Mapping[str, Any]]
    ) -> list[LLMResult | BaseException]:
        """``run_all`` over ``complete(**request)`` for each request mapping."""
        return self.run_all([functools.partial(self.complete, **r) for r in requests])

    def _check_sync_caller(self) -> None:
        if self._loop.in_loop():
            raise RuntimeError("sync LLMClient methods cannot run on the client's own loop")

    # ---- requests ------------------------------------------------------------------------------

    def prepare(
        self, messages: Messages, *, response_format: ResponseFormat | None = None, **params: Any
    ) -> PreparedRequest:
        """The request ``complete`` would send first (its body and cache key)."""
        return self._prepare(messages, response_format, params, self._structured_mode)

    def _prepare(
        self,
        messages: Messages,
        response_format: ResponseFormat | None,
        params: Mapping[str, Any],
        mode: str,
    ) -> PreparedRequest:
        if params.get("stream"):
            raise LLMConfigError("streaming is not supported by LLMClient")
        defaults: dict[str, Any] = {"temperature": self.config.temperature}
        if "max_completion_tokens" not in params:
            defaults["max_tokens"] = self.config.max_tokens
        merged = {k: v for k, v in {**defaults, **params}.items() if v is not None}
        model = merged.pop("model", self.config.model)
        msgs = [dict(m) for m in messages]
        if response_format is not None:
            if mode == "prompt":
                msgs = with_schema_instruction(msgs, schema_of(response_format))
            elif isinstance(response_format, type):
                merged["response_format"] = json_schema_format(response_format)
            else:
                merged["response_format"] = dict(response_format)
        body = {"model": model, "messages": msgs, **merged}
        return PreparedRequest(
            key=request_key(body),
            body=body,
            est_prompt_tokens=estimate_tokens(
                msgs,
                image_tokens=self.config.image_token_estimate,
                extra=merged.get("response_format"),
            ),
            max_output_tokens=merged.get("max_completion_tokens", merged.get("max_tokens")),
        )

    async def complete(
        self,
        messages: Messages,
        *,
        response_format: ResponseFormat | None = None,
        **params: Any,
    ) -> LLMResult:
        """One chat completion: cache, budget, rate limits, retries, and structured output.

        ``response_format`` is a pydantic model (strict json_schema; ``parsed`` holds the
        validated object) or a raw response_format mapping (``parsed`` holds the JSON object).
        ``params`` are sent as-is (``temperature``, ``max_tokens``, ``logprobs``, ``seed``, ...;
        ``model`` overrides the configured one; None means "do not send").
        """
        return await self.on_loop(self._complete(messages, response_format, params))

    async def complete_structured(self, messages: Messages, schema: type[M], **params: Any) -> M:
        """The validated pydantic object (see ``complete``)."""
        result = await self.complete(messages, response_format=schema, **params)
        return schema.model_validate(result.parsed)

    async def _complete(
        self, messages: Messages, response_format: ResponseFormat | None, params: dict[str, Any]
    ) -> LLMResult:
        mode = self._structured_mode
        req = self._prepare(messages, response_format, params, mode)
        try:
            result = await self._execute(req)
        except ResponseFormatRejected:
            if response_format is None or mode == "prompt":
                raise
            if self._structured_mode != "prompt":
                self._structured_mode = "prompt"
                log.warning(
                    "%s rejected response_format; the JSON schema goes in the prompt from now on",
                    self.config.base_url or "the endpoint",
                )
            mode = "prompt"
            req = self._prepare(messages, response_format, params, mode)
            result = await self._execute(req)
        if response_format is None:
            return result
        schema = response_format if isinstance(response_format, type) else None
        parsed, error = parse_content(result.content, schema)
        if error is not None:
            log.info("request %s: answer %s; sending one repair request", req.key[:12], error)
            repair = self._prepare(
                [*messages, *repair_turns(result.content, error)], response_format, params, mode
            )
            result = combine(result, await self._execute(repair))
            parsed, error = parse_content(result.content, schema)
        if error is not None:
            name = schema.__name__ if schema else "JSON answer"
            hint = (
                " (finish_reason=length: the answer was cut off; raise max_tokens)"
                if result.finish_reason == "length"
                else ""
            )
            raise StructuredOutputError(
                redact(
                    f"{name}: answer still unusable after one repair request: {error}{hint}; "
                    f"answer starts {result.content[:120]!r}"
                ),
                content=result.content,
                finish_reason=result.finish_reason,
            )
        return result.model_copy(update={"parsed": parsed})

    async def _execute(self, req: PreparedRequest) -> LLMResult:
        """One request body, answered from the cache or the server (with retries)."""
        if self.cache is not None:
            entry = await asyncio.to_thread(self.cache.get, req.key)
            if entry is not None:
                self.usage.cached_hits += 1
                return result_from_response(
                    entry["response"], req, cost=0.0, cached=True, attempts=0
                )
        response, attempts = await self._send(req)
        result = result_from_response(response, req, cost=0.0, cached=False, attempts=attempts)
        cost = self.record_usage(req.model, result.usage)
        if self.cache is not None:
            await asyncio.to_thread(
                self.cache.put, req.key, response, cost_usd=cost, source="online"
            )
        return result.model_copy(update={"cost_usd": cost})

    # ---- money ---------------------------------------------------------------------------------

    def estimate_cost(self, req: PreparedRequest, factor: float = 1.0) -> float:
        """Upper-ish cost before sending: estimated prompt + max_tokens (or a default) out."""
        price = self.config.price(req.model)
        if price is None:
            if self.config.budget_usd is None:
                return 0.0
            raise LLMConfigError(f"budget_usd is set but prices has no entry for {req.model!r}")
        out = req.max_output_tokens or DEFAULT_OUTPUT_ESTIMATE
        return price.cost(req.est_prompt_tokens, out, factor)

    def check_budget(self, estimate: float) -> None:
        budget = self.config.budget_usd
        committed = self._spent + self._reserved
        if budget is not None and committed + estimate > budget:
            raise BudgetExceeded(spent_usd=committed, budget_usd=budget, estimate_usd=estimate)

    def record_usage(self, model: str, usage: TokenUsage, factor: float = 1.0) -> float:
        """Add one answer's tokens and cost to the totals; returns the cost."""
        price = self.config.price(model)
        if price is None and model not in self._unpriced_warned:
            self._unpriced_warned.add(model)
            log.warning("no price for model %r: its cost is counted as 0", model)
        cost = price.cost(usage.prompt_tokens, usage.completion_tokens, factor) if price else 0.0
        self._spent += cost
        self.usage.prompt_tokens += usage.prompt_tokens
        self.usage.completion_tokens += usage.completion_tokens
        self.usage.cost_usd += cost
        return cost

    # ---- HTTP with retries ---------------------------------------------------------------------

    async def _send(self, req: PreparedRequest) -> tuple[dict[str, Any], int]:
        extra = {k: v for k, v in req.body.items() if k not in ("model", "messages")}
        create = self._sdk.chat.completions.with_raw_response.create

        async def attempt() -> dict[str, Any]:
            async with self._slots:
                # Reserved only while this attempt is in flight: the budget check sees at most
                # max_concurrency estimates, and the real cost is recorded right after.
                estimate = self.estimate_cost(req)
                self.check_budget(estimate)
                self._reserved += estimate
                try:
                    await self.limiter.acquire(req.rate_tokens)
                    self.usage.requests += 1
                    raw = await create(
                        model=req.body["model"], messages=req.body["messages"], extra_body=extra
                    )
                finally:
                    self._reserved -= estimate
            self.limiter.observe(raw.headers)
            try:
                body = json.loads(raw.text)
            except ValueError:
                raise BadBody("answer body is not valid JSON (truncated?)") from None
            if not isinstance(body, dict) or not body.get("choices"):
                raise BadBody("answer has no choices")
            return body

        body, attempts = await self.with_retries(f"request {req.key[:12]}", attempt, chat=True)
        total = (body.get("usage") or {}).get("total_tokens")
        if isinstance(total, int):
            self.limiter.settle(req.rate_tokens, total)
        return body, attempts

    async def with_retries(
        self, what: str, call: Callable[[], Awaitable[T]], *, chat: bool = False
    ) -> tuple[T, int]:
        """``call()`` until it succeeds, retrying 408/429/5xx, timeouts, connection errors and
        bad bodies; other 4xx raise ``LLMRequestError`` at once. Returns (result, attempts).

        ``chat``: feed rate-limit headers and 429 pauses into this client's limiter.
        """
        cfg = self.config
        attempt, reason = 0, ""
        while attempt <= cfg.max_retries:
            attempt += 1
            delay: float | None = None
            try:
                return await call(), attempt
            except openai.APIStatusError as exc:
                if chat:
                    self.limiter.observe(exc.response.headers)
                fatal = status_error(exc, what)
                if fatal is not None:
                    raise fatal from None
                reason = f"HTTP {exc.status_code}: {server_message(exc)}"
                delay = retry_after_seconds(exc.response.headers)
                if delay is not None:
                    delay = min(delay, cfg.backoff_max_seconds)
                    if chat and exc.status_code == 429:
                        self.limiter.pause(delay)
            except openai.APITimeoutError:
                reason = f"no answer within {cfg.timeout_seconds:g}s"
            except openai.APIConnectionError as exc:
                cause = exc.__cause__
                reason = f"connection error ({type(cause).__name__ if cause else 'unknown'})"
            except BadBody as exc:
                reason = str(exc)
            if attempt > cfg.max_retries:
                break
            if delay is None:
                delay = full_jitter(attempt - 1, cfg.backoff_base_seconds, cfg.backoff_max_seconds)
            self.usage.retries += 1
            log.warning(
                "%s: %s; retry %d/%d in %.2fs",
                what,
                redact(reason),
                attempt,
                cfg.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
        raise LLMRetryExhausted(
            redact(f"{what}: gave up after {attempt} attempts; last error: {reason}"),
            attempts=attempt,
        )
