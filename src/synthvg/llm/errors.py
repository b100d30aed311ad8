"""Errors raised by the LLM client.

Every message is built from redacted text and carries no SDK objects (those hold the request
with its Authorization header), so an error can be logged or stored as-is.
"""

from __future__ import annotations

from typing import Literal

#: What a failed request means for the shard that sent it (see :func:`failure_kind`).
FailureKind = Literal["fatal", "transient", "permanent"]


class LLMError(RuntimeError):
    """Base class: anything the LLM client refuses or gives up on."""


class LLMConfigError(LLMError):
    """The client cannot be set up (missing key, missing price for a budget, ...)."""


class LLMRequestError(LLMError):
    """The server rejected the request in a way a retry cannot fix (4xx other than 408/429)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ResponseFormatRejected(LLMRequestError):
    """The endpoint does not support ``response_format`` (structured outputs)."""


class LLMRetryExhausted(LLMError):
    """Every attempt failed with a retryable error (429, 5xx, timeout, connection, bad body)."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class StructuredOutputError(LLMError):
    """The answer is not JSON matching the schema, even after the one repair request."""

    def __init__(self, message: str, *, content: str, finish_reason: str | None) -> None:
        super().__init__(message)
        self.content = content
        self.finish_reason = finish_reason


class BudgetExceeded(LLMError):
    """Sending this request could exceed ``budget_usd``; nothing was sent."""

    def __init__(self, *, spent_usd: float, budget_usd: float, estimate_usd: float) -> None:
        super().__init__(
            f"LLM budget reached: spent ${spent_usd:.4f} (incl. requests in flight) + this "
            f"request's estimate ${estimate_usd:.4f} > budget ${budget_usd:.4f}; nothing sent"
        )
        self.spent_usd = spent_usd
        self.budget_usd = budget_usd
        self.estimate_usd = estimate_usd


class LLMUnreachable(LLMError):
    """The endpoint cannot be reached at all (refused, unknown host): a wrong ``base_url`` or a
    server that is down. Fatal for the run; the message names the URL."""


class SendingDisabled(LLMError):
    """A request was about to be sent while sending is switched off (a dry run)."""


#: HTTP statuses that no other request of the run can get past: the key, the account, the model.
FATAL_STATUSES = frozenset({401, 402, 403, 404, 429})


def failure_kind(exc: BaseException) -> FailureKind:
    """How a stage treats a request that failed with ``exc``.

    - ``fatal``: every other request of the run would fail the same way or spend money the run
      must not spend (bad key, unknown model or wrong URL, quota or budget exhausted, no key):
      stop the stage, commit nothing, say what to fix.
    - ``transient``: worth asking again later (retries ran out on 429/5xx/timeouts/bad bodies,
      an answer cut off at ``max_tokens``, anything unexpected): leave the shard uncommitted so
      the next run asks again, only for what is not cached.
    - ``permanent``: this one input cannot be answered (the server refused just this request,
      or the model's answer stayed unusable after the repair): an error row.
    """
    if isinstance(exc, LLMConfigError | BudgetExceeded | LLMUnreachable | SendingDisabled):
        return "fatal"
    if isinstance(exc, LLMRequestError) and not isinstance(exc, ResponseFormatRejected):
        # 429 only arrives here as insufficient_quota; other 429s are retried
        return "fatal" if exc.status_code in FATAL_STATUSES else "permanent"
    if isinstance(exc, StructuredOutputError):
        return "transient" if exc.finish_reason == "length" else "permanent"
    if isinstance(exc, ResponseFormatRejected):
        return "permanent"
    return "transient"
