"""The spend ledger: every answer paid for, and the budget account shared by every worker.

The request cache stores answers that were usable; the ledger stores what was *paid*, whether
the answer was usable or not and whether its shard was later committed or failed. It lives
beside the cache (``<dataset root>/cache/llm/ledger/``), one JSON line per paid answer
(time, run, stage, budget scope, model, source, tokens, cost), so totals per stage, per model,
per run and for the whole dataset are sums over it. Each process writes its own file: on a
local (or shared POSIX) filesystem each line is appended as it is paid; on object stores,
which cannot append, lines are buffered and written as a new part file on every ``flush``.

``BudgetAccount`` makes ``budget_usd`` hold for the whole dataset: one small JSON file per
budget scope holds what was spent (over all runs) and what requests in flight have reserved,
read and rewritten under an exclusive ``flock`` by every process that sends, so N workers see
each other's spending and reservations before each request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from synthvg.llm.errors import BudgetExceeded, LLMConfigError
from synthvg.llm.redact import log

#: Numbers summed by :func:`spend_totals`.
SPEND_FIELDS = ("paid_requests", "prompt_tokens", "completion_tokens", "cost_usd")


class SpendLedger:
    """Append-only record of paid answers under ``url`` (a folder or an fsspec URL)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = os.fspath(url)
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._buffer: list[str] = []
        self._parts = 0
        self._lock = threading.Lock()

    def record(self, **entry: Any) -> None:
        """One paid answer: ``run_id, stage, scope, model, source, prompt_tokens,
        completion_tokens, cost_usd`` (and anything else worth keeping, never the key)."""
        entry.setdefault("at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self.is_local:
                os.makedirs(self.path, exist_ok=True)
                with open(
                    posixpath.join(self.path, f"{self._name}.jsonl"), "a", encoding="utf-8"
                ) as fh:
                    fh.write(line)
            else:
                self._buffer.append(line)

    def flush(self) -> None:
        """Write buffered lines (object stores only; local lines are written as they come)."""
        with self._lock:
            if not self._buffer:
                return
            self._parts += 1
            data = "".join(self._buffer).encode()
            self.fs.makedirs(self.path, exist_ok=True)
            self.fs.pipe(posixpath.join(self.path, f"{self._name}-{self._parts:05d}.jsonl"), data)
            self._buffer.clear()

    def entries(self) -> list[dict[str, Any]]:
        """Every recorded line, from every process (a line torn by a kill is skipped)."""
        try:
            files = sorted(self.fs.glob(posixpath.join(self.path, "*.jsonl")))
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for path in files:
            try:
                text = self.fs.cat_file(path).decode("utf-8")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    out.append(entry)
        with self._lock:
            pending = [json.loads(line) for line in self._buffer]
        return out + pending


def spend_totals(
    entries: Iterable[Mapping[str, Any]], by: tuple[str, ...] = ()
) -> dict[tuple[Any, ...], dict[str, float]]:
    """Sums of :data:`SPEND_FIELDS` grouped by the entry fields ``by`` (() is one total)."""
    out: dict[tuple[Any, ...], dict[str, float]] = {}
    for e in entries:
        row = out.setdefault(tuple(e.get(k) for k in by), dict.fromkeys(SPEND_FIELDS, 0.0))
        row["paid_requests"] += 1
        for k in SPEND_FIELDS[1:]:
            row[k] += float(e.get(k) or 0.0)
    return out


class BudgetAccount:
    """Spent + reserved USD of one budget scope, shared by every process through one file.

    Local (or shared POSIX) filesystems only: the file is read and rewritten under ``flock``.
    The first use computes ``spent`` from the ledger, so a dataset whose account file is lost
    still counts every earlier run. Reservations of a process that died expire after
    ``reservation_seconds``.
    """

    def __init__(self, ledger: SpendLedger, scope: str, *, reservation_seconds: float = 900.0):
        if not ledger.is_local:
            raise LLMConfigError("a shared budget account needs a local or mounted filesystem")
        self.ledger = ledger
        self.scope = scope
        self.reservation_seconds = reservation_seconds
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in scope)
        self.path = posixpath.join(ledger.path, "budget", f"{safe}.json")

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        os.makedirs(posixpath.dirname(self.path), exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self.path, encoding="utf-8") as fh:
                    state = json.load(fh)
            except (FileNotFoundError, ValueError):
                spent = sum(
                    float(e.get("cost_usd") or 0.0)
                    for e in self.ledger.entries()
                    if e.get("scope") == self.scope
                )
                state = {"scope": self.scope, "spent_usd": spent, "reserved": {}}
            now = time.time()
            state["reserved"] = {k: v for k, v in state["reserved"].items() if v[1] > now}
            yield state
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(state, fh)
            os.replace(tmp, self.path)
        finally:
            os.close(fd)

    def committed(self) -> float:
        with self._state() as state:
            return state["spent_usd"] + sum(v[0] for v in state["reserved"].values())

    def reserve(self, estimate: float, budget: float) -> str:
        """Reserve ``estimate`` or raise :class:`BudgetExceeded` (nothing reserved)."""
        with self._state() as state:
            committed = state["spent_usd"] + sum(v[0] for v in state["reserved"].values())
            if committed + estimate > budget:
                raise BudgetExceeded(spent_usd=committed, budget_usd=budget, estimate_usd=estimate)
            rid = uuid.uuid4().hex
            state["reserved"][rid] = [estimate, time.time() + self.reservation_seconds]
            return rid

    def settle(self, rid: str | None, cost: float) -> None:
        """Drop reservation ``rid`` (if any) and add the real ``cost`` to what was spent."""
        with self._state() as state:
            if rid is not None:
                state["reserved"].pop(rid, None)
            state["spent_usd"] += cost
        if cost:
            log.debug("budget %s: +$%.6f", self.scope, cost)
