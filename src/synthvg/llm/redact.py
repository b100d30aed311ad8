"""Keep API keys out of logs and error messages.

The client registers its key here; ``redact`` scrubs every registered key from a string and
``RedactingFilter`` does the same for log records. The ``synthvg.llm`` logger carries the
filter, and ``install_log_redaction`` adds it to handlers so records from other libraries
(the SDK, httpx) are scrubbed too. Defense in depth: the client never logs a key on purpose.
"""

from __future__ import annotations

import logging
import threading

MASK = "[REDACTED]"
_MIN_SECRET_LEN = 8  # shorter values (dummy keys for local servers) would mask ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    if len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites a record whose formatted message or traceback contains a registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the handler's problem, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()
log = logging.getLogger("synthvg.llm")
log.addFilter(_FILTER)


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (default: root), once.

    Logger filters only see records logged on that exact logger; handler filters see all
    records that reach the handler, whichever library logged them.
    """
    for handler in (logger or logging.getLogger()).handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
