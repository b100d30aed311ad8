"""Errors raised by the LLM client.

Every message is built from redacted text and carries no SDK objects (those hold the request
with its Authorization header), so an error can be logged or stored as-is.
"""

from __future__ import annotations


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
