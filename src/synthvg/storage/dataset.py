"""A dataset root: Delta Lake tables, committed shard by shard, versioned, resumable.

Layout under the root (a local folder or an object-store URL delta-rs can write)::

    synthvg.json                                   format marker (layout version 2)
    tables/<table>/                                a Delta table per table, partitioned by
        _delta_log/                                _stage and _shard (and _fingerprint)
        _stage=<stage>/_shard=<n>/_fingerprint=<fp>/part-<uuid>.parquet
    completions/                                   Delta table of commit records (its version
                                                   is the dataset version)
    runs/<run_id>.json                             one manifest per build run

A shard's commit writes its files (to temporary names, renamed), registers them in each table
with one Delta transaction per table that replaces the shard's partition, and appends its commit
record to ``completions`` last. The views read only files named by the latest record of each
(stage, shard), so a shard a kill left half-written is invisible and a rerun redoes it; an older
version of the dataset is the records as they were at an older version of ``completions``.

The record names each file with its rows, size and SHA-256: a build redoes a shard whose file is
missing or has another size (a cheap stat), ``synthvg verify`` checks the checksums.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from synthvg import __version__
from synthvg.schemas import TABLES, RunManifest, ShardFile, ShardManifest, schema_of
from synthvg.storage.delta import (
    COMPLETION_SCHEMA,
    COMPLETIONS,
    PARTITION,
    data_schema,
    retry_conflicts,
)
from synthvg.storage.snapshot import FORMAT, CorruptLog, LegacyLayout, UnknownVersion

#: URL schemes of the object stores delta-rs reads and writes (their credentials come from the
#: environment, as delta-rs reads them).
DELTA_PROTOCOLS = frozenset(
    {"file", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "azure"}
)


#: What :meth:`Dataset._write_atomic` names its temporaries: ``<final name>.<uuid4 hex>.tmp``.
TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.tmp$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StorageWriteError(OSError):
    """A write to the dataset root failed; says which path and why in one line.

    Built like ``OSError(errno, strerror, filename)`` so it pickles across Dask and Ray workers.
    """

    def __str__(self) -> str:
        why = (
            f"[Errno {self.errno}] {self.strerror}"
            if self.errno is not None
            else str(self.strerror)
        )
        return f"cannot write {self.filename}: {why}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class StorageRefused(StorageWriteError):
    """The storage refuses writes: full, read-only, no permission. Not a fault of one shard:
    every later write fails the same way, so a build stops instead of retrying (other write
    errors, e.g. a flaky network mount, fail that shard and are retried)."""


#: The errnos of :class:`StorageRefused`.
REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into a :class:`StorageWriteError` naming it."""
    try:
        yield
    except StorageWriteError:
        raise
    except OSError as e:
        kind = StorageRefused if e.errno in REFUSED else StorageWriteError
        raise kind(e.errno, e.strerror or str(e), path) from e


def schema_id(schema: pa.Schema) -> str:
    """A short hash of a schema's columns and types (metadata left out): files with equal ids
    have the same columns."""
    return hashlib.sha256(schema.remove_metadata().to_string().encode()).hexdigest()[:16]


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Dataset:
    """A handle on a dataset root; cheap to create, safe to share between threads."""

    def __init__(self, root: str | os.PathLike, as_of: int | None = None):
        root = os.fspath(root)
        self.url = root
        self.fs, self.path = fsspec.core.url_to_fs(root)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        #: read the dataset as it was at this version of ``completions`` (None: the latest)
        self.as_of = as_of

    # ----------------------------------------------------------------- paths
    def _p(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def relpath(self, path: str) -> str:
        return posixpath.relpath(path, self.path)

    def abspath(self, rel: str) -> str:
        return self._p(rel)

    def uri(self, rel: str) -> str:
        """A path DuckDB and pyarrow can open (a local path, or protocol://path)."""
        full = self._p(rel)
        if self.is_local:
            return full
        proto = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{proto}://{full.lstrip('/')}" if proto == "memory" else f"{proto}://{full}"

    def delta_uri(self, *parts: str) -> str:
        """Where delta-rs finds a Delta table of this root (a local path or an object-store URL)."""
        uri = self.uri(posixpath.join(*parts))
        if not self.is_local and uri.split("://", 1)[0] not in DELTA_PROTOCOLS:
            raise ValueError(
                f"{self.url}: dataset tables are Delta tables, which delta-rs writes to local folders and "
                f"object stores ({', '.join(sorted(DELTA_PROTOCOLS))}://), not {uri.split('://', 1)[0]}://"
            )
        return uri

    # ----------------------------------------------------------------- io helpers
    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with writing(path):
            try:
                self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
                if self.is_local:
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, path)
                else:
                    with self.fs.open(tmp, "wb") as f:
                        f.write(data)
                    self.fs.mv(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):  # a full disk should not keep the partial copy
                    self.fs.rm(tmp)
                raise

    def read_json(self, path: str) -> dict | None:
        try:
            with self.fs.open(path, "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def write_json(self, path: str, obj: dict) -> None:
        self._write_atomic(path, json.dumps(obj, indent=2, default=str).encode())

    def init(self) -> None:
        """Create the root (idempotent) and refuse one that is not a synthvg dataset."""
        with writing(self.path):
            self.fs.makedirs(self.path, exist_ok=True)
        marker = self._p("synthvg.json")
        existing = self.read_json(marker)
        if existing is None:
            if self.fs.ls(self.path, detail=False) and not self.fs.exists(self._p("manifests")):
                names = [posixpath.basename(p) for p in self.fs.ls(self.path, detail=False)]
                if set(names) - {".synthvg.lock"}:
                    raise FileExistsError(
                        f"{self.url} exists and is not a synthvg dataset (holds {sorted(names)[:5]}); "
                        "choose an empty folder or an existing dataset root"
                    )
            self.write_json(marker, FORMAT)
        elif existing.get("format") != FORMAT["format"]:
            raise FileExistsError(f"{self.url}: synthvg.json is not a synthvg dataset marker")
        self.check_layout()

    def check_layout(self) -> None:
        """Refuse a root in the old layout (with the command that converts it)."""
        marker = self.read_json(self._p("synthvg.json")) or {}
        if marker.get("version", FORMAT["version"]) < FORMAT["version"] or (
            not marker and self.fs.exists(self._p("manifests"))
        ):
            raise LegacyLayout(self.url)

    def exists(self, rel: str) -> bool:
        """Whether a path under the root exists."""
        return bool(self.fs.exists(self._p(rel)))

    # ----------------------------------------------------------------- records
    def check_readable(self) -> None:
        """Read the commit log (a corrupt one says so here) and, for an older version, refuse
        one whose files vacuum removed."""
        if self.as_of is None:
            self.records()
        else:
            from synthvg.storage.versions import check_readable

            check_readable(self)

    def records(self) -> dict[tuple[str, int], ShardManifest]:
        """The commit record of every complete (stage, shard), at ``as_of`` or the latest."""
        self.check_layout()
        return _record_log(self).snapshot(self.as_of)

    def version(self) -> int | None:
        """The dataset's version: that of its ``completions`` table (None before any commit)."""
        return _record_log(self).version()

    def read_manifest(self, stage: str, shard: int) -> ShardManifest | None:
        if self.as_of is not None:
            return self.records().get((stage, shard))
        self.check_layout()
        return _record_log(self).lookup((stage, shard))

    def is_committed(self, stage: str, shard: int, fingerprint: str) -> bool:
        """True when the shard is complete with this fingerprint and its files are as committed
        (present, with the recorded size; checksums are :mod:`synthvg.storage.verify`'s job)."""
        m = self.read_manifest(stage, shard)
        if m is None or m.fingerprint != fingerprint:
            return False
        return not self.file_problems(m)

    def damage(self, stage: str, shard: int, fingerprint: str) -> list[str]:
        """Why a shard committed with this fingerprint no longer counts as committed (its files'
        problems); empty when it is intact or was never committed with this fingerprint."""
        m = self.read_manifest(stage, shard)
        return self.file_problems(m) if m is not None and m.fingerprint == fingerprint else []

    def file_problems(self, manifest: ShardManifest) -> list[str]:
        """Files of a commit that are missing or whose size differs from the recorded one."""
        problems = []
        for f in manifest.files:
            try:
                size = self.fs.size(self._p(f.path))
            except FileNotFoundError:
                problems.append(f"{f.path} is missing")
                continue
            if f.bytes is not None and size != f.bytes:
                problems.append(f"{f.path} has {size} bytes, its commit recorded {f.bytes}")
        return problems

    # ----------------------------------------------------------------- commits
    def commit_shard(
        self,
        stage: str,
        shard: int,
        fingerprint: str,
        tables: dict[str, pa.Table],
        *,
        run_id: str,
        image_count: int,
        started_at: dt.datetime,
        metrics: dict[str, float] | None = None,
        fence: str | None = None,
    ) -> ShardManifest:
        """Write a shard's tables and then its commit record. Safe to kill at any point.

        Each table's partition of the shard is replaced in one Delta transaction; the record is
        appended last, so until it lands the shard's previous record (and the files it names,
        which stay on disk until ``vacuum``) is what readers see.

        ``fence`` is the token of the build lock the writing build took. The commit checks that
        the lock still holds it before touching anything and again before the record, so a
        worker that outlived its build cannot commit once the build ended or another one took
        the root (:class:`~synthvg.storage.lock.LockLost`). Writers outside a build (tests,
        import under its own lock) may leave it ``None``.
        """
        what = f"{stage} shard {shard:05d}"
        self._check_fence(fence, what)
        previous = _record_log(self).lookup((stage, shard))  # writers passed init's layout check
        files = []
        for table, data in sorted(tables.items()):
            expected = schema_of(TABLES[table])
            if not data.schema.equals(expected, check_metadata=False):
                data = data.cast(expected)
            buf = io.BytesIO()
            pq.write_table(data.replace_schema_metadata(expected.metadata), buf, compression="zstd")
            files.append(
                self._replace_partition(
                    table, stage, shard, fingerprint, buf.getvalue(), data.num_rows, expected
                )
            )
        for table in sorted({f.table for f in previous.files} - set(tables) if previous else ()):
            self._replace_partition(
                table, stage, shard, fingerprint, None, 0
            )  # it wrote this table before, not now
        finished = utcnow()
        manifest = ShardManifest(
            stage=stage,
            shard=shard,
            fingerprint=fingerprint,
            image_count=image_count,
            files=files,
            run_id=run_id,
            synthvg_version=__version__,
            started_at=started_at,
            finished_at=finished,
            seconds=(finished - started_at).total_seconds(),
            metrics=metrics or {},
        )
        self._check_fence(fence, what)
        self._append_record(stage, shard, run_id, manifest)
        return manifest

    def _replace_partition(
        self,
        table: str,
        stage: str,
        shard: int,
        fingerprint: str,
        blob: bytes | None,
        rows: int,
        file_schema: pa.Schema | None = None,
    ) -> ShardFile | None:
        """Replace a table's (stage, shard) partition by one file (``blob``), or by nothing."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError
        from deltalake.transaction import AddAction, RemoveAction

        uri = self.delta_uri("tables", table)
        schema = data_schema(schema_of(TABLES[table]))
        actions: list[AddAction | RemoveAction] = []
        shard_file = None
        if blob is not None:
            rel = f"_stage={stage}/_shard={shard}/_fingerprint={fingerprint[:16]}/part-{uuid.uuid4().hex}.parquet"
            path = self._p("tables", table, rel)
            self._write_atomic(path, blob)
            shard_file = ShardFile(
                table=table,
                path=self.relpath(path),
                rows=rows,
                bytes=len(blob),
                sha256=file_digest(blob),
                schema_id=schema_id(file_schema) if file_schema is not None else None,
            )
            actions.append(
                AddAction(
                    path=rel,
                    size=len(blob),
                    partition_values={
                        "_stage": stage,
                        "_shard": str(shard),
                        "_fingerprint": fingerprint[:16],
                    },
                    modification_time=int(time.time() * 1000),
                    data_change=True,
                    stats=json.dumps({"numRecords": rows}),
                )
            )

        def transaction() -> None:
            with writing(uri):
                try:  # the log loaded once: ``create`` loads it twice even when it exists
                    delta = DeltaTable(uri)
                except TableNotFoundError:
                    delta = DeltaTable.create(
                        uri, schema, partition_by=list(PARTITION), mode="ignore"
                    )
                delta.create_write_transaction(
                    actions,
                    mode="overwrite",
                    schema=schema,
                    partition_by=list(PARTITION),
                    partition_filters=[("_stage", "=", stage), ("_shard", "=", str(shard))],
                )

        retry_conflicts(transaction)
        return shard_file

    def _append_record(
        self, stage: str, shard: int, run_id: str, manifest: ShardManifest | None
    ) -> None:
        """Append the (stage, shard)'s new state to ``completions``: its record, or none."""
        from deltalake import CommitProperties, write_deltalake

        row = {
            "stage": [stage],
            "shard": [shard],
            "sequence": [time.time_ns()],
            "fingerprint": [manifest.fingerprint if manifest else None],
            "run_id": [run_id],
            "committed_at": [utcnow()],
            "record": [manifest.model_dump_json() if manifest else None],
        }
        meta = {
            "run_id": run_id,
            "stage": stage,
            "shard": str(shard),
            "action": "commit" if manifest else "withdraw",
        }
        uri = self.delta_uri(COMPLETIONS)

        def append() -> None:
            with writing(uri):
                write_deltalake(
                    uri,
                    pa.table(row, schema=COMPLETION_SCHEMA),
                    mode="append",
                    commit_properties=CommitProperties(custom_metadata=meta),
                )

        retry_conflicts(append)

    def _check_fence(self, fence: str | None, what: str) -> None:
        if fence is not None:
            from synthvg.storage.lock import check_fence

            check_fence(self, fence, what)

    def drop_stage_shard(self, stage: str, shard: int, run_id: str) -> None:
        """Withdraw a stage's output for one shard (a stage now skipped, or a shard out of plan):
        its record first, then its partitions. Older versions keep it until ``vacuum``."""
        previous = _record_log(self).lookup((stage, shard))
        if previous is None:
            return
        self._append_record(stage, shard, run_id, None)
        for table in sorted({f.table for f in previous.files}):
            self._replace_partition(table, stage, shard, previous.fingerprint, None, 0)

    def manifests(self, stage: str | None = None) -> Iterator[ShardManifest]:
        for (s, _), m in sorted(self.records().items()):
            if stage is None or s == stage:
                yield m

    def committed_shards(self, stage: str) -> list[int]:
        return [m.shard for m in self.manifests(stage)]

    def read_shard_table(self, table: str, stage: str, shard: int) -> pa.Table | None:
        """One stage's committed table for one shard (None when that stage has not written it)."""
        m = self.read_manifest(stage, shard)
        if m is None:
            return None
        for f in m.files:
            if f.table == table:
                with self.fs.open(self._p(f.path), "rb") as fh:
                    return pq.read_table(fh)
        return None

    def committed_file_schemas(self) -> dict[str, list[tuple[str, str | None]]]:
        """Every committed file as (openable URI, schema id or None when not recorded), by table."""
        out: dict[str, list[tuple[str, str | None]]] = {}
        for m in self.manifests():
            for f in m.files:
                out.setdefault(f.table, []).append((self.uri(f.path), f.schema_id))
        return out

    def committed_files(self) -> dict[str, list[str]]:
        """Every committed file as an openable URI, by table, from one read of the commit records."""
        out: dict[str, list[str]] = {}
        for m in self.manifests():
            for f in m.files:
                out.setdefault(f.table, []).append(self.uri(f.path))
        return out

    # ----------------------------------------------------------------- runs
    def write_run(self, run: RunManifest) -> None:
        self.write_json(self._p("runs", f"{run.run_id}.json"), run.model_dump(mode="json"))

    def mark_interrupted_runs(self, current_run_id: str) -> list[RunManifest]:
        """Mark runs still recorded as ``running`` as ``interrupted``: called under the build lock,
        so no other build is alive to finish them (their build was killed)."""
        marked = []
        for run in self.runs():
            if run.status == "running" and run.run_id != current_run_id:
                run = run.model_copy(update={"status": "interrupted"})
                self.write_run(run)
                marked.append(run)
        return marked

    def remove_stale_temporaries(self) -> list[str]:
        """Remove the temporaries a killed write left (``<name>.<uuid>.tmp``); returns their
        paths relative to the root. Call it only while holding the build lock: a live writer's
        temporaries look the same."""
        removed = []
        for path in self.fs.find(self.path):
            if TEMPORARY.search(path):
                with writing(path), contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path)
                removed.append(self.relpath(path))
        return sorted(removed)

    def runs(self) -> list[RunManifest]:
        out = []
        for path in sorted(self.fs.glob(self._p("runs", "*.json"))):
            raw = self.read_json(path)
            if raw is not None:
                out.append(RunManifest.model_validate(raw))
        return sorted(out, key=lambda r: r.started_at)

    def write_file(self, rel: str, data: bytes) -> str:
        """Write a side file (stats, reports) atomically; returns its full path."""
        path = self._p(rel)
        self._write_atomic(path, data)
        return path


#: The commit-log columns a reader folds into the latest record per (stage, shard).
_FOLDED = ["stage", "shard", "sequence", "record"]


class _RecordLog:
    """A root's ``completions`` table, read incrementally: each call reads only the files that
    commits since the last call added (the log only grows; compaction rewrites files with the
    same rows), so a build's many lookups stay cheap."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.uri = dataset.delta_uri(COMPLETIONS)
        self._table = None
        self._read: set[str] = set()
        self._version: int | None = None
        self._latest: dict[tuple[str, int], tuple[int, str | None]] = {}
        self._live: dict[tuple[str, int], ShardManifest] = {}  # the records not withdrawn
        self._lock = threading.Lock()

    def _open(self, version: int | None = None):
        from deltalake import DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            return DeltaTable(self.uri, version=version)
        except TableNotFoundError:
            return None
        except DeltaError as e:
            if version is not None:
                raise
            raise CorruptLog(
                f"cannot read the commit log of {self.dataset.url} ({str(e).splitlines()[0]}); "
                "restore its completions/_delta_log from a backup, or rebuild into a new root"
            ) from None

    def version(self) -> int | None:
        with self._lock:
            table = self._refresh()
            return table.version() if table is not None else None

    def _refresh(self):
        from deltalake.exceptions import DeltaError

        if self._table is None:
            self._table = self._open()
        else:
            try:
                self._table.update_incremental()
            except DeltaError as e:
                raise CorruptLog(
                    f"cannot read the commit log of {self.dataset.url} ({str(e).splitlines()[0]})"
                ) from None
        return self._table

    def _rows(self, table, paths: list[str]) -> list[dict]:
        # File by file through ParquetFile: pq.read_table of a list goes through pyarrow.dataset,
        # whose import alone costs more CPU than opening a compacted root (every `synthvg sql`).
        rows: list[dict] = []
        for p in paths:
            with self.dataset.fs.open(self.dataset._p(COMPLETIONS, p), "rb") as fh:
                rows += pq.ParquetFile(fh).read(columns=_FOLDED).to_pylist()
        return rows

    @staticmethod
    def _fold(rows: list[dict], latest: dict) -> None:
        for r in rows:
            key = (r["stage"], r["shard"])
            if key not in latest or latest[key][0] < r["sequence"]:
                latest[key] = (r["sequence"], r["record"])

    def snapshot(self, version: int | None) -> dict[tuple[str, int], ShardManifest]:
        """Every live record, at ``version`` or the latest."""
        if version is not None:
            return self._at(version)
        with self._lock:
            self._update()
            return dict(self._live)

    def lookup(self, key: tuple[str, int]) -> ShardManifest | None:
        """One (stage, shard)'s latest record: what a build asks for every shard it considers."""
        with self._lock:
            self._update()
            return self._live.get(key)

    def _update(self) -> None:
        """Fold in the rows of the commit-log files added since the last look (none when the
        log's version has not moved)."""
        table = self._refresh()
        if table is None or table.version() == self._version:
            return
        paths = [
            p
            for p in table.get_add_actions(flatten=True).column("path").to_pylist()
            if p not in self._read
        ]
        changed: dict = {}
        self._fold(self._rows(table, paths), changed)
        self._read.update(paths)
        self._version = table.version()
        for key, (seq, record) in changed.items():
            if key in self._latest and self._latest[key][0] >= seq:
                continue
            self._latest[key] = (seq, record)
            if record is None:
                self._live.pop(key, None)
            else:
                self._live[key] = ShardManifest.model_validate_json(record)

    def _at(self, version: int) -> dict[tuple[str, int], ShardManifest]:
        from deltalake.exceptions import DeltaError

        try:
            table = self._open(version)
        except (DeltaError, OSError, ValueError) as e:
            raise UnknownVersion(
                f"{self.dataset.url} has no version {version} ({str(e).splitlines()[0]}); "
                "`synthvg versions` lists them"
            ) from None
        if table is None:
            raise UnknownVersion(
                f"{self.dataset.url} has no version {version}: nothing was ever committed"
            )
        latest: dict = {}
        try:
            rows = self._rows(table, table.get_add_actions(flatten=True).column("path").to_pylist())
        except (FileNotFoundError, OSError):
            raise UnknownVersion(
                f"{self.dataset.url} version {version}: its records were removed (by `synthvg vacuum`); "
                "that version can no longer be read"
            ) from None
        self._fold(rows, latest)
        return {
            k: ShardManifest.model_validate_json(r) for k, (_, r) in latest.items() if r is not None
        }


_RECORD_LOGS: dict[str, _RecordLog] = {}
_RECORD_LOGS_LOCK = threading.Lock()


def _record_log(dataset: Dataset) -> _RecordLog:
    """One record log per root and process, shared by every handle on the root."""
    key = dataset.delta_uri(COMPLETIONS)
    with _RECORD_LOGS_LOCK:
        log = _RECORD_LOGS.get(key)
        if log is None:
            log = _RECORD_LOGS[key] = _RecordLog(dataset)
        return log
