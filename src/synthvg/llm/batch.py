"""OpenAI Batch API mode: half price for big jobs, answers delivered through the request cache.

``BatchJob.run(requests)`` writes the uncached requests as JSONL, uploads them, creates the
batch(es), polls until they end, and stores every answer in the client's request cache under the
same key ``complete`` computes, so the normal path afterwards is all cache hits. A small JSON
state file (``<cache>/batches/<job>.json``: batch and file ids, custom_id -> request key,
status) makes the job resumable: a process restarted days later polls the same batch instead of
paying for a new one. One process per job at a time (the dataset build lock ensures that).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from synthvg.llm.client import LLMClient
from synthvg.llm.errors import LLMConfigError
from synthvg.llm.redact import log, redact
from synthvg.llm.results import PreparedRequest, TokenUsage

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MAX_REQUESTS = 50_000  # the API's per-batch limits
MAX_BYTES = 190 * 2**20  # under the 200 MB input file limit


@dataclass
class BatchReport:
    job: str
    batch_ids: list[str] = field(default_factory=list)  # every batch the state file knows
    created: list[str] = field(default_factory=list)  # batches created by this call
    stored: int = 0  # answers written to the cache by this call
    failed: dict[str, str] = field(default_factory=dict)  # request key -> why (not cached)
    #: request key -> the HTTP status the batch gave it (None: the batch ended without one)
    failed_status: dict[str, int | None] = field(default_factory=dict)
    pending: int = 0  # requests still in unfinished batches

    @property
    def done(self) -> bool:
        return self.pending == 0


class BatchJob:
    """One named, resumable Batch API job of a client (its cache must be enabled)."""

    def __init__(
        self,
        client: LLMClient,
        name: str = "default",
        *,
        poll_seconds: float = 60.0,
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if client.cache is None:
            raise LLMConfigError("Batch mode stores answers in the request cache: enable it")
        self.client = client
        self.cache = client.cache
        self.name = name
        self.poll_seconds = poll_seconds
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.state_rel = f"batches/{name}.json"

    def run(
        self, requests: Sequence[Mapping[str, Any]], *, timeout: float | None = None
    ) -> BatchReport:
        """Sync ``arun``."""
        return self.client.run_sync(self._run(requests, timeout))

    async def arun(
        self, requests: Sequence[Mapping[str, Any]], *, timeout: float | None = None
    ) -> BatchReport:
        """Resume unfinished batches, submit uncached requests, poll until done or ``timeout``.

        ``requests`` are ``complete`` keyword mappings (``messages``, ``response_format``,
        parameters). On timeout the report has ``pending > 0`` and the state file keeps the
        batch ids: call again (from any process) to continue.
        """
        return await self.client.on_loop(self._run(requests, timeout))

    # ---- state ---------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            state = self.cache.read_json(self.state_rel)
        except ValueError:
            state = "unreadable"
        if state is None:
            return {"job": self.name, "batches": []}
        if not isinstance(state, dict) or not isinstance(state.get("batches"), list):
            raise LLMConfigError(
                f"unreadable batch state file {self.state_rel} in {self.cache.url}"
            )
        return state

    def _save(self, state: dict[str, Any]) -> None:
        self.cache.write_json(self.state_rel, state)

    # ---- the job -------------------------------------------------------------------------------

    async def _run(
        self, requests: Sequence[Mapping[str, Any]], timeout: float | None
    ) -> BatchReport:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        state = await asyncio.to_thread(self._load)
        report = BatchReport(job=self.name)

        prepared: dict[str, PreparedRequest] = {}
        for request in requests:
            req = self.client.prepare(**request)
            prepared.setdefault(req.key, req)
        waiting = {
            k for b in state["batches"] if not b["collected"] for k in b["requests"].values()
        }
        todo = await asyncio.to_thread(
            lambda: [r for k, r in prepared.items() if k not in waiting and k not in self.cache]
        )
        # Held against the budget until this call has collected what it created, so other
        # workers creating batches at the same time see it (answers collected count as spent).
        held: tuple[str | None, float] | None = None
        if todo:
            factor = self.client.config.batch_price_factor
            estimate = sum(self.client.estimate_cost(r, factor) for r in todo)
            held = (await asyncio.to_thread(self.client.reserve, estimate), estimate)
        try:
            return await self._submit_and_poll(state, todo, report, loop, deadline)
        finally:
            if held is not None:
                await asyncio.to_thread(self.client.release, *held)

    async def _submit_and_poll(
        self,
        state: dict[str, Any],
        todo: Sequence[PreparedRequest],
        report: BatchReport,
        loop: asyncio.AbstractEventLoop,
        deadline: float | None,
    ) -> BatchReport:
        for model, chunk, lines in self._chunks(todo):
            record = await self._submit(model, chunk, lines)
            state["batches"].append(record)
            await asyncio.to_thread(self._save, state)
            report.created.append(record["id"])
            log.info("batch job %s: created %s (%d requests)", self.name, record["id"], len(chunk))

        while True:
            for record in state["batches"]:
                if not record["collected"]:
                    await self._poll(record, report)
                    await asyncio.to_thread(self._save, state)
            report.pending = sum(len(b["requests"]) for b in state["batches"] if not b["collected"])
            now = loop.time()
            if report.done or (deadline is not None and now >= deadline):
                break
            wait = self.poll_seconds if deadline is None else min(self.poll_seconds, deadline - now)
            await asyncio.sleep(wait)
        report.batch_ids = [b["id"] for b in state["batches"]]
        return report

    def _chunks(
        self, todo: Sequence[PreparedRequest]
    ) -> Iterator[tuple[str, dict[str, str], list[str]]]:
        """(model, custom_id -> key, JSONL lines): one model per batch, within the API limits."""
        by_model: dict[str, list[PreparedRequest]] = {}
        for req in todo:
            by_model.setdefault(req.model, []).append(req)
        ids = itertools.count()
        for model, reqs in by_model.items():
            chunk: dict[str, str] = {}
            lines: list[str] = []
            size = 0
            for req in reqs:
                custom_id = f"req-{next(ids)}"
                line = json.dumps(req.batch_line(custom_id), separators=(",", ":"))
                nbytes = len(line.encode()) + 1
                if chunk and (len(chunk) >= self.max_requests or size + nbytes > self.max_bytes):
                    yield model, chunk, lines
                    chunk, lines, size = {}, [], 0
                chunk[custom_id] = req.key
                lines.append(line)
                size += nbytes
            if chunk:
                yield model, chunk, lines

    async def _submit(self, model: str, chunk: dict[str, str], lines: list[str]) -> dict[str, Any]:
        sdk = self.client.sdk
        data = ("\n".join(lines) + "\n").encode()
        upload, _ = await self.client.with_retries(
            f"batch {self.name} upload",
            lambda: sdk.files.create(file=(f"{self.name}.jsonl", data), purpose="batch"),
        )
        batch, _ = await self.client.with_retries(
            f"batch {self.name} create",
            lambda: sdk.batches.create(
                completion_window="24h",
                endpoint="/v1/chat/completions",
                input_file_id=upload.id,
                metadata={"synthvg_job": self.name},
            ),
        )
        return {
            "id": batch.id,
            "model": model,
            "input_file_id": upload.id,
            "output_file_id": None,
            "error_file_id": None,
            "status": batch.status,
            "collected": False,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "requests": chunk,
        }

    async def _poll(self, record: dict[str, Any], report: BatchReport) -> None:
        batch, _ = await self.client.with_retries(
            f"batch {record['id']} poll", lambda: self.client.sdk.batches.retrieve(record["id"])
        )
        if batch.status != record["status"]:
            log.info("batch job %s: %s is %s", self.name, record["id"], batch.status)
        record.update(
            status=batch.status,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
        )
        if batch.status not in TERMINAL:
            return
        answered: set[str] = set()
        for file_key in ("output_file_id", "error_file_id"):
            if record[file_key]:
                for row in await self._download(record[file_key]):
                    await self._store(record, row, answered, report)
        why = f"batch {record['id']} ended {batch.status} without an answer"
        if batch.errors and batch.errors.data:
            why += f": {batch.errors.data[0].message}"
        for custom_id, key in record["requests"].items():
            if custom_id not in answered:
                report.failed[key] = redact(why)
                report.failed_status[key] = None
        record["collected"] = True

    async def _download(self, file_id: str) -> list[dict[str, Any]]:
        content, _ = await self.client.with_retries(
            f"batch file {file_id} download", lambda: self.client.sdk.files.content(file_id)
        )
        return [json.loads(line) for line in content.text.splitlines() if line.strip()]

    async def _store(
        self,
        record: dict[str, Any],
        row: Mapping[str, Any],
        answered: set[str],
        report: BatchReport,
    ) -> None:
        custom_id = row.get("custom_id")
        key = record["requests"].get(custom_id)
        if key is None or custom_id is None:
            return
        answered.add(custom_id)
        response = row.get("response") or {}
        body = response.get("body")
        if response.get("status_code") == 200 and isinstance(body, dict) and body.get("choices"):
            usage = body.get("usage") or {}
            cost = self.client.record_usage(
                record["model"],
                TokenUsage(
                    prompt_tokens=usage.get("prompt_tokens") or 0,
                    completion_tokens=usage.get("completion_tokens") or 0,
                ),
                factor=self.client.config.batch_price_factor,
                source="batch",
            )
            await asyncio.to_thread(self.cache.put, key, body, cost_usd=cost, source="batch")
            report.stored += 1
            return
        error = row.get("error") or (body or {}).get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        report.failed[key] = redact(f"HTTP {response.get('status_code')}: {message}")
        status = response.get("status_code")
        report.failed_status[key] = status if isinstance(status, int) else None
