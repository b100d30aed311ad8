"""``LLMClient``: cached, rate-limited, budgeted chat completions against any OpenAI-compatible API.

The SDK's own retries are off (``max_retries=0``): retrying here lets us count attempts,
honour Retry-After for the whole client (not just one request), log each retry, and stop at a
hard budget. All requests of a client run on one private event loop in a daemon thread, so the
concurrency cap, the rate limiter and the HTTP connection pool are shared by every caller:
async code awaiting ``complete`` from any loop, and sync pipeline stages calling ``map_complete``
from several worker threads at once.

Failures are sorted by :func:`synthvg.llm.errors.failure_kind`. After a fatal one (bad key,
unknown model, unreachable endpoint, budget) the client sends nothing more until
``begin_run`` starts another run: requests already queued fail at once with the same error.
Only usable answers are cached; every paid answer, usable or not, goes to the spend ledger.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import posixpath
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from synthvg.llm.cache import RequestCache, request_key
from synthvg.llm.config import LLMConfig
from synthvg.llm.errors import (
    BudgetExceeded,
    LLMConfigError,
    LLMError,
    LLMRetryExhausted,
    LLMUnreachable,
    ResponseFormatRejected,
    SendingDisabled,
    StructuredOutputError,
    failure_kind,
)
from synthvg.llm.ledger import BudgetAccount, SpendLedger
from synthvg.llm.limits import RateLimiter, SharedRateLimit, estimate_tokens
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

if TYPE_CHECKING:  # the SDK (~0.5 s of imports) loads only when a client connects
    import openai

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

Messages = Sequence[Mapping[str, Any]]
ResponseFormat = type[BaseModel] | Mapping[str, Any]

# Output tokens assumed for the budget check when the request sets no max_tokens.
DEFAULT_OUTPUT_ESTIMATE = 1024
#: Where the SDK sends requests when ``base_url`` is not set.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Retries of a connection error before the endpoint has ever answered: a wrong ``base_url`` or
#: a server that is not running does not fix itself in a minute of backoff.
UNREACHED_RETRIES = 2

_disabled_lock = threading.Lock()
_disabled = 0


@contextlib.contextmanager
def requests_disabled() -> Iterator[None]:
    """No client of this process sends anything inside (a dry run): a send raises
    :class:`SendingDisabled` before it reaches the network; cache hits still answer."""
    global _disabled
    with _disabled_lock:
        _disabled += 1
    try:
        yield
    finally:
        with _disabled_lock:
            _disabled -= 1


class LLMClient:
    """Chat completions with caching, retries, rate limits, structured output and a budget.

    ``cache_dir`` is typically ``<dataset root>/cache/llm``; None (or ``config.cache=False``)
    disables the cache. ``ledger_dir`` (default ``<cache_dir>/ledger``) records every paid
    answer; with a local ledger and ``budget_usd``, the budget is the one of ``budget_scope``
    (default: the model) over every run and process sharing that ledger. A missing key is
    not an error until a request would be sent, so a dry run needs none. Use as a context
    manager, or call ``close()``.
    """

    def __init__(
        self,
        config: LLMConfig,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        ledger_dir: str | os.PathLike[str] | None = None,
        budget_scope: str | None = None,
    ):
        self.config = config
        self.endpoint = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        if config.budget_usd is not None and config.price(config.model) is None:
            raise LLMConfigError(f"budget_usd is set but prices has no entry for {config.model!r}")
        self._sdk: openai.AsyncOpenAI | None = None
        self._old_sdks: list[openai.AsyncOpenAI] = []
        self._key_error: LLMConfigError | None = None
        self._connect()
        self.cache = RequestCache(cache_dir) if cache_dir is not None and config.cache else None
        if ledger_dir is None and cache_dir is not None:
            ledger_dir = posixpath.join(os.fspath(cache_dir), "ledger")
        self.ledger = SpendLedger(ledger_dir) if ledger_dir is not None else None
        self.budget_scope = budget_scope or config.model
        self.account = (
            BudgetAccount(self.ledger, self.budget_scope)
            if config.budget_usd is not None and self.ledger is not None and self.ledger.is_local
            else None
        )
        #: Added to every ledger line (``run_id``, ``stage``): set by ``begin_run``.
        self.tags: dict[str, str] = {}
        self.usage = UsageTotals()
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        #: The same limits over every process sharing the (local) ledger: build-wide on a cluster.
        self.shared_limit = (
            SharedRateLimit(
                posixpath.join(self.ledger.path, "limits"),
                self.budget_scope,
                config.requests_per_minute,
                config.tokens_per_minute,
            )
            if self.ledger is not None
            and self.ledger.is_local
            and (config.requests_per_minute or config.tokens_per_minute)
            else None
        )
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._structured_mode = config.structured_output
        self._spent = 0.0
        if config.budget_usd is not None and self.ledger is not None and self.account is None:
            # No shared account on an object store: at least count every earlier run.
            self._spent = sum(
                float(e.get("cost_usd") or 0.0)
                for e in self.ledger.entries()
                if e.get("scope") == self.budget_scope
            )
        self._reserved = 0.0
        self._unpriced_warned: set[str] = set()
        self._fatal: LLMError | None = None
        self._reached = False
        self._run_id: str | None = None
        self._loop = LoopThread()
        self._finalizer = weakref.finalize(self, self._loop.stop)

    def _connect(self) -> None:
        """(Re)read the key and build the SDK client; a missing key is kept for the first send."""
        try:
            key = self.config.resolve_api_key()
        except LLMConfigError as exc:
            self._key_error = LLMConfigError(f"{self.endpoint}: {exc}")
            return
        register_secret(key)
        self._key_error = None
        if self._sdk is not None:
            self._old_sdks.append(self._sdk)
        import openai

        self._sdk = openai.AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=key,
            max_retries=0,
            timeout=self.config.timeout_seconds,
        )

    def begin_run(self, run_id: str, **tags: str) -> None:
        """Tag ledger lines with this run; a new run forgets the last run's fatal error and
        reads the key again (the user may have fixed it)."""
        self.tags = {"run_id": run_id, **tags}
        if run_id != self._run_id:
            self._run_id = run_id
            if self._fatal is not None or self._key_error is not None:
                self._fatal = None
                self._connect()

    @property
    def fatal(self) -> LLMError | None:
        """The fatal error that stopped this client in the current run, if any."""
        return self._fatal

    def _check_may_send(self) -> None:
        if _disabled:
            raise SendingDisabled(f"{self.endpoint}: sending is disabled (dry run)")
        if self._fatal is not None:
            raise self._fatal
        if self._key_error is not None:
            self._fatal = self._key_error
            raise self._key_error

    def __repr__(self) -> str:
        cache = str(self.cache.root) if self.cache else None
        return (
            f"LLMClient(model={self.config.model!r}, base_url={self.config.base_url!r}, "
            f"cache={cache!r})"
        )

    @property
    def sdk(self) -> openai.AsyncOpenAI:
        """The underlying SDK client; use it only from coroutines run by this client."""
        self._check_may_send()
        assert self._sdk is not None
        return self._sdk

    # ---- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        if self.ledger is not None:
            with contextlib.suppress(Exception):
                self.ledger.flush()
        if self._loop.started and not self._loop.in_loop():
            for sdk in [*self._old_sdks, *([self._sdk] if self._sdk else [])]:
                with contextlib.suppress(Exception):  # closing must not fail a finished run
                    self._loop.submit(sdk.close()).result(timeout=10)
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
            result, response = await self._execute(req)
        except ResponseFormatRejected:
            if response_format is None or mode == "prompt":
                raise
            if self._structured_mode != "prompt":
                self._structured_mode = "prompt"
                log.warning(
                    "%s rejected response_format; the JSON schema goes in the prompt from now on",
                    self.endpoint,
                )
            mode = "prompt"
            req = self._prepare(messages, response_format, params, mode)
            result, response = await self._execute(req)
        if response_format is None:
            await self._store(req, result, response)
            return result
        schema = response_format if isinstance(response_format, type) else None
        parsed, error = parse_content(result.content, schema)
        if error is None:
            await self._store(req, result, response)
            return result.model_copy(update={"parsed": parsed})
        log.info("request %s: answer %s; sending one repair request", req.key[:12], error)
        repair = self._prepare(
            [*messages, *repair_turns(result.content, error)], response_format, params, mode
        )
        second, repaired = await self._execute(repair)
        both = combine(result, second)
        parsed, error = parse_content(both.content, schema)
        if error is None:
            # The request's answer is the repaired one: a rerun gets it from the cache, free.
            await self._store(req, both, repaired, source="repaired")
            return both.model_copy(update={"parsed": parsed})
        if result.cached and self.cache is not None:  # an unusable answer is no answer
            await asyncio.to_thread(self.cache.discard, req.key)
        name = schema.__name__ if schema else "JSON answer"
        hint = (
            " (finish_reason=length: the answer was cut off; raise max_tokens)"
            if both.finish_reason == "length"
            else ""
        )
        raise StructuredOutputError(
            redact(
                f"{name}: answer still unusable after one repair request: {error}{hint}; "
                f"answer starts {both.content[:120]!r}"
            ),
            content=both.content,
            finish_reason=both.finish_reason,
        )

    async def _execute(self, req: PreparedRequest) -> tuple[LLMResult, dict[str, Any]]:
        """One request body, answered from the cache or the server (with retries).

        Returns the result and the raw response; caching it is the caller's decision, taken
        once the answer proved usable.
        """
        if self.cache is not None:
            entry = await asyncio.to_thread(self.cache.get, req.key)
            if entry is not None:
                self.usage.cached_hits += 1
                response = entry["response"]
                return result_from_response(
                    response, req, cost=0.0, cached=True, attempts=0
                ), response
        response, attempts, cost = await self._send(req)
        result = result_from_response(response, req, cost=cost, cached=False, attempts=attempts)
        return result, response

    async def _store(
        self,
        req: PreparedRequest,
        result: LLMResult,
        response: Mapping[str, Any],
        *,
        source: str = "online",
    ) -> None:
        """Cache a usable answer that came from the server (cache hits are already there)."""
        if self.cache is None or (result.cached and source == "online"):
            return
        await asyncio.to_thread(
            self.cache.put, req.key, response, cost_usd=result.cost_usd, source=source
        )

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

    def committed_usd(self) -> float:
        """Spent plus reserved: over the budget scope's ledger when shared, else this client's."""
        if self.account is not None:
            return self.account.committed()
        return self._spent + self._reserved

    def check_budget(self, estimate: float) -> None:
        budget = self.config.budget_usd
        if budget is None:
            return
        committed = self.committed_usd()
        if committed + estimate > budget:
            raise BudgetExceeded(spent_usd=committed, budget_usd=budget, estimate_usd=estimate)

    def reserve(self, estimate: float) -> str | None:
        """Hold ``estimate`` against the budget while a request (or a batch) is in flight;
        raises ``BudgetExceeded`` when it does not fit. Give it back with ``release``."""
        budget = self.config.budget_usd
        if self.account is not None and budget is not None:
            return self.account.reserve(estimate, budget)
        self.check_budget(estimate)
        self._reserved += estimate
        return None

    def release(self, rid: str | None, estimate: float) -> None:
        if self.account is not None and rid is not None:
            self.account.settle(rid, 0.0)
        elif self.account is None:
            self._reserved -= estimate

    def record_usage(
        self,
        model: str,
        usage: TokenUsage,
        factor: float = 1.0,
        *,
        source: str = "online",
        reservation: str | None = None,
    ) -> float:
        """Add one paid answer's tokens and cost to the totals and the ledger; returns the cost."""
        price = self.config.price(model)
        if price is None and model not in self._unpriced_warned:
            self._unpriced_warned.add(model)
            log.warning("no price for model %r: its cost is counted as 0", model)
        cost = price.cost(usage.prompt_tokens, usage.completion_tokens, factor) if price else 0.0
        self._spent += cost
        self.usage.prompt_tokens += usage.prompt_tokens
        self.usage.completion_tokens += usage.completion_tokens
        self.usage.cost_usd += cost
        self.usage.paid_requests += 1
        if self.account is not None:
            self.account.settle(reservation, cost)
        if self.ledger is not None:
            self.ledger.record(
                **self.tags,
                scope=self.budget_scope,
                model=model,
                source=source,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
            )
        return cost

    # ---- HTTP with retries ---------------------------------------------------------------------

    async def _send(self, req: PreparedRequest) -> tuple[dict[str, Any], int, float]:
        """(response, attempts, cost): one paid answer, recorded in the totals and the ledger."""
        extra = {k: v for k, v in req.body.items() if k not in ("model", "messages")}
        paid: list[float] = []

        async def attempt() -> dict[str, Any]:
            self._check_may_send()
            create = self.sdk.chat.completions.with_raw_response.create
            async with self._slots:
                self._check_may_send()  # a fatal error may have come while this one waited
                # Reserved only while this attempt is in flight: the budget check sees at most
                # max_concurrency estimates per process, and the real cost replaces it.
                estimate = self.estimate_cost(req)
                rid = self.reserve(estimate)
                settled = False
                try:
                    await self.limiter.acquire(req.rate_tokens)
                    if self.shared_limit is not None:
                        await self.shared_limit.acquire(req.rate_tokens)
                    self._check_may_send()
                    self.usage.requests += 1
                    raw = await create(
                        model=req.body["model"], messages=req.body["messages"], extra_body=extra
                    )
                    self.limiter.observe(raw.headers)
                    try:
                        body = json.loads(raw.text)
                    except ValueError:
                        raise BadBody("answer body is not valid JSON (truncated?)") from None
                    if not isinstance(body, dict) or not body.get("choices"):
                        raise BadBody("answer has no choices")
                    usage = body.get("usage") or {}
                    paid.append(
                        self.record_usage(
                            req.model,
                            TokenUsage(
                                prompt_tokens=usage.get("prompt_tokens") or 0,
                                completion_tokens=usage.get("completion_tokens") or 0,
                            ),
                            reservation=rid,
                        )
                    )
                    settled = True
                    return body
                finally:
                    if not settled:
                        self.release(rid, estimate)
                    elif self.account is None:
                        self._reserved -= estimate

        body, attempts = await self.with_retries(f"request {req.key[:12]}", attempt, chat=True)
        total = (body.get("usage") or {}).get("total_tokens")
        if isinstance(total, int):
            self.limiter.settle(req.rate_tokens, total)
            if self.shared_limit is not None:
                await asyncio.to_thread(self.shared_limit.settle, req.rate_tokens, total)
        return body, attempts, paid[-1] if paid else 0.0

    async def with_retries(
        self, what: str, call: Callable[[], Awaitable[T]], *, chat: bool = False
    ) -> tuple[T, int]:
        """``call()`` until it succeeds, retrying 408/429/5xx, timeouts, connection errors and
        bad bodies; other 4xx raise ``LLMRequestError`` at once. Returns (result, attempts).

        Connection errors before the endpoint ever answered get ``UNREACHED_RETRIES`` retries,
        then :class:`LLMUnreachable` naming the URL. A fatal error (see ``failure_kind``)
        stops the client for the rest of the run. ``chat``: feed rate-limit headers and 429
        pauses into this client's limiter.
        """
        try:
            return await self._with_retries(f"{what} to {self.endpoint}", call, chat)
        except LLMError as exc:
            if failure_kind(exc) == "fatal" and not isinstance(exc, SendingDisabled):
                if self._fatal is None:
                    self._fatal = exc
            raise

    async def _with_retries(
        self, what: str, call: Callable[[], Awaitable[T]], chat: bool
    ) -> tuple[T, int]:
        import openai

        cfg = self.config
        attempt, reason = 0, ""
        unreachable = False
        while attempt <= cfg.max_retries:
            attempt += 1
            delay: float | None = None
            unreachable = False
            try:
                result = await call()
                self._reached = True
                return result, attempt
            except openai.APIStatusError as exc:
                self._reached = True
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
                unreachable = True
                if not self._reached and attempt > min(cfg.max_retries, UNREACHED_RETRIES):
                    break
            except BadBody as exc:
                self._reached = True
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
        if unreachable:
            raise LLMUnreachable(
                redact(
                    f"cannot reach {self.endpoint} ({reason}, {attempt} attempts): check base_url "
                    "and that the server is running"
                )
            )
        raise LLMRetryExhausted(
            redact(f"{what}: gave up after {attempt} attempts; last error: {reason}"),
            attempts=attempt,
        )
