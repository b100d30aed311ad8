"""Client-side rate limiting: stay under the provider's RPM/TPM instead of bouncing off 429s.

Both limits are token buckets refilling at limit/60 per second. The burst is one second's
worth, not a full minute's: providers enforce per-minute limits over shorter windows, so a
smooth pace is what actually sustains the limit. A request's token cost is estimated before
sending (text chars / 4 + a fixed amount per image + max_tokens) and corrected with the real
usage afterwards. The server's ``x-ratelimit-*`` headers tighten both buckets as answers arrive.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float | None:
    """``"6m0s"`` -> 360.0, ``"1s"`` -> 1.0, ``"250ms"`` -> 0.25, ``"0.5"`` -> 0.5; else None."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


@dataclass(frozen=True)
class LimitState:
    """One limit as the server reported it; any field may be missing."""

    limit: float | None
    remaining: float | None
    reset_seconds: float | None


def parse_rate_limit_headers(headers: Mapping[str, str], kind: str) -> LimitState | None:
    """``kind`` is ``"requests"`` or ``"tokens"``; None when the server sent none of the three."""

    def number(name: str) -> float | None:
        try:
            return float(headers[f"x-ratelimit-{name}-{kind}"])
        except (KeyError, ValueError):
            return None

    reset = headers.get(f"x-ratelimit-reset-{kind}")
    state = LimitState(
        number("limit"), number("remaining"), parse_duration(reset) if reset else None
    )
    return None if state == LimitState(None, None, None) else state


def estimate_tokens(
    messages: Iterable[Mapping[str, Any]],
    *,
    image_tokens: int,
    extra: Any = None,
) -> int:
    """Rough prompt size: text chars / 4 plus ``image_tokens`` per image part."""
    messages = list(messages)
    chars, images = 0, 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, Mapping):
                    continue
                if part.get("type") in ("image_url", "input_image", "image"):
                    images += 1
                elif isinstance(part.get("text"), str):
                    chars += len(part["text"])
    if extra is not None:
        chars += len(json.dumps(extra, default=str))
    return math.ceil(chars / 4) + images * image_tokens + 4 * len(messages)


class TokenBucket:
    """Continuous refill; the level may go negative (debt) so big requests still pass in time."""

    def __init__(
        self,
        per_minute: float | None,
        *,
        burst_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._clock = clock
        self._burst_seconds = burst_seconds
        self._stamp = clock()
        self.per_minute: float | None = None
        self.capacity = math.inf
        self.level = math.inf
        self.set_rate(per_minute)

    def set_rate(self, per_minute: float | None) -> None:
        self._refill()
        self.per_minute = per_minute
        if per_minute is None:
            self.capacity = self.level = math.inf
            return
        self.capacity = max(1.0, per_minute / 60.0 * self._burst_seconds)
        self.level = min(self.level, self.capacity)

    def _refill(self) -> None:
        now = self._clock()
        if self.per_minute is not None:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.per_minute / 60)
        self._stamp = now

    def wait_seconds(self, amount: float) -> float:
        """How long until ``amount`` (capped at the capacity) is available."""
        self._refill()
        if self.per_minute is None:
            return 0.0
        need = min(amount, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) * 60 / self.per_minute

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount

    def cap(self, remaining: float) -> None:
        if self.per_minute is not None:
            self._refill()
            self.level = min(self.level, remaining)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute gate, shared by all requests of one client.

    Waiters are served in arrival order (one lock), so a burst of coroutines queues up instead
    of stampeding whenever capacity frees. Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        burst_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._configured = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.buckets = {
            kind: TokenBucket(rate, burst_seconds=burst_seconds, clock=clock)
            for kind, rate in self._configured.items()
        }
        self._paused_until = 0.0
        self._lock: asyncio.Lock | None = None

    def wait_seconds(self, tokens: int) -> float:
        return max(
            self._paused_until - self._clock(),
            self.buckets["requests"].wait_seconds(1),
            self.buckets["tokens"].wait_seconds(tokens),
        )

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` estimated tokens may be sent, then charge it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while (wait := self.wait_seconds(tokens)) > 0:
                await asyncio.sleep(wait)
            self.buckets["requests"].take(1)
            self.buckets["tokens"].take(tokens)

    def settle(self, estimated: int, actual: int) -> None:
        """Replace a request's estimate with its real token count."""
        self.buckets["tokens"].take(actual - estimated)

    def pause(self, seconds: float) -> None:
        """Hold every request (a 429's Retry-After applies to the key, not just one request)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Adopt the server's view: its limit if lower than ours, its remaining count, its reset."""
        for kind, bucket in self.buckets.items():
            state = parse_rate_limit_headers(headers, kind)
            if state is None:
                continue
            configured = self._configured[kind]
            if state.limit is not None and state.limit > 0:
                rate = state.limit if configured is None else min(configured, state.limit)
                if rate != bucket.per_minute:
                    bucket.set_rate(rate)
            if state.remaining is None:
                continue
            if state.remaining < 1 and state.reset_seconds:
                self.pause(state.reset_seconds)
            else:
                bucket.cap(state.remaining)


class SharedRateLimit:
    """Requests- and tokens-per-minute for every process that sends through one folder.

    One token bucket per limit lives in a small JSON file read and rewritten under an exclusive
    ``flock`` (local or shared POSIX filesystems), so the workers of a Dask or Ray build draw
    from one budget of requests per minute instead of each from its own. The request bucket
    holds one request (no burst): over any span of T seconds at most ``1 + rpm * T / 60``
    requests leave, which is what "never above the limit" means. Waiting happens outside the
    lock. Waiters in different processes are not served in arrival order.
    """

    def __init__(
        self,
        folder: str,
        name: str,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        *,
        burst_seconds: float = 1.0,
    ) -> None:
        import os

        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self.path = os.path.join(folder, f"{safe}.json")
        self.rates = {"requests": requests_per_minute, "tokens": tokens_per_minute}
        self.capacity = {
            "requests": 1.0,
            "tokens": max(1.0, (tokens_per_minute or 0) / 60 * burst_seconds),
        }

    def _update(self, amounts: dict[str, float], *, force: bool = False) -> float:
        """Take ``amounts`` when all are available (or ``force``); else the seconds to wait."""
        import fcntl
        import os

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = time.time()
            try:
                with open(self.path, encoding="utf-8") as fh:
                    state = json.load(fh)
            except (FileNotFoundError, ValueError):
                state = {}
            wait = 0.0
            for kind, rate in self.rates.items():
                if rate is None:
                    continue
                level, stamp = state.get(kind, (0.0, now))
                level = min(self.capacity[kind], level + max(0.0, now - stamp) * rate / 60)
                state[kind] = (level, now)
                need = min(amounts.get(kind, 0.0), self.capacity[kind])
                if level < need:
                    wait = max(wait, (need - level) * 60 / rate)
            if wait == 0.0 or force:
                for kind, rate in self.rates.items():
                    if rate is not None:
                        level, stamp = state[kind]
                        state[kind] = (level - amounts.get(kind, 0.0), stamp)
                wait = 0.0
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(tmp, self.path)
            return wait
        finally:
            os.close(fd)

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` estimated tokens may leave, then charge it."""
        while (
            wait := await asyncio.to_thread(self._update, {"requests": 1.0, "tokens": tokens})
        ) > 0:
            await asyncio.sleep(wait)

    def settle(self, estimated: int, actual: int) -> None:
        """Replace a request's token estimate with its real count."""
        if self.rates["tokens"] is not None and actual != estimated:
            self._update({"tokens": float(actual - estimated)}, force=True)
