"""Which failures are worth a retry, and how long to wait before it."""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from synthvg.llm.errors import LLMRequestError, ResponseFormatRejected
from synthvg.llm.redact import redact

if TYPE_CHECKING:
    import openai

RETRY_STATUSES = frozenset({408, 429})


class BadBody(Exception):
    """A 2xx answer whose body is not a chat completion (truncated, not JSON, no choices)."""


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None if absent."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def status_error(exc: openai.APIStatusError, what: str) -> LLMRequestError | None:
    """The error to raise now, or None when the status is worth a retry."""
    status = exc.status_code
    message = server_message(exc)
    code = exc.body.get("code") if isinstance(exc.body, Mapping) else None
    if (status in RETRY_STATUSES and code != "insufficient_quota") or status >= 500:
        return None
    text = redact(f"{what}: HTTP {status}: {message}")
    lowered = message.lower()
    if status == 400 and ("response_format" in lowered or "json_schema" in lowered):
        return ResponseFormatRejected(text, status_code=status)
    return LLMRequestError(text, status_code=status)


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: spreads the retries of many clients apart."""
    return random.uniform(0, min(cap, base * 2**attempt))
