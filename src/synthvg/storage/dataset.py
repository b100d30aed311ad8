"""A dataset root: Parquet shards per table and stage, committed atomically, resumable.

Layout under the root (a local folder or any fsspec URL)::

    synthvg.json                                  format marker
    tables/<table>/<stage>/part-<shard>-<fp>.parquet
    manifests/<stage>/shard-<shard>.json          completion record, written last
    runs/<run_id>.json                            one manifest per build run

The commit protocol makes a kill at any instant harmless: a shard's old manifest is removed
first, its files are written to temporary names and renamed, and the new manifest goes last.
Readers (the DuckDB views) only see files named by a manifest, so a half-written shard is
invisible and a rerun simply redoes it.

The manifest records each file's size and SHA-256: a build redoes a shard whose file is
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
import uuid
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from synthvg import __version__
from synthvg.schemas import TABLES, RunManifest, ShardFile, ShardManifest, schema_of

FORMAT = {"format": "synthvg-dataset", "version": 1}

#: What :meth:`Dataset._write_atomic` names its temporaries: ``<final name>.<uuid4 hex>.tmp``.
TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.tmp$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StorageWriteError(OSError):
    """A write to the dataset root failed; says which path and why in one line.

    Built like ``OSError(errno, strerror, filename)`` so it pickles across Dask and Ray workers.
    """

    def __str__(self) -> str:
        why = f"[Errno {self.errno}] {self.strerror}" if self.errno is not None else str(self.strerror)
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


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Dataset:
    """A handle on a dataset root; cheap to create, safe to share between threads."""

    def __init__(self, root: str | os.PathLike):
        root = os.fspath(root)
        self.url = root
        self.fs, self.path = fsspec.core.url_to_fs(root)
        self.is_local = isinstance(self.fs, LocalFileSystem)

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

    def manifest_path(self, stage: str, shard: int) -> str:
        return self._p("manifests", stage, f"shard-{shard:05d}.json")

    def _part_prefix(self, table: str, stage: str, shard: int) -> str:
        return self._p("tables", table, stage, f"part-{shard:05d}-")

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

    # ----------------------------------------------------------------- shards
    def read_manifest(self, stage: str, shard: int) -> ShardManifest | None:
        raw = self.read_json(self.manifest_path(stage, shard))
        return ShardManifest.model_validate(raw) if raw is not None else None

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

    def _clear_shard(self, stage: str, shard: int, tables: list[str]) -> None:
        """Remove the manifest first, then every file (any fingerprint, temporaries too)."""
        mpath = self.manifest_path(stage, shard)
        with writing(mpath):
            if self.fs.exists(mpath):
                self.fs.rm(mpath)
        for table in tables:
            prefix = self._part_prefix(table, stage, shard)
            for path in self.fs.glob(prefix + "*"):
                with writing(path):
                    self.fs.rm(path)

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
        """Write a shard's tables and then its manifest. Safe to kill at any point.

        ``fence`` is the token of the build lock the writing build took. The commit checks that
        the lock still holds it before touching anything and again before the manifest, so a
        worker that outlived its build cannot commit once the build ended or another one took
        the root (:class:`~synthvg.storage.lock.LockLost`). Writers outside a build (tests,
        import under its own lock) may leave it ``None``.
        """
        what = f"{stage} shard {shard:05d}"
        self._check_fence(fence, what)
        self._clear_shard(stage, shard, list(TABLES))
        files = []
        for table, data in sorted(tables.items()):
            expected = schema_of(TABLES[table])
            if not data.schema.equals(expected, check_metadata=False):
                data = data.cast(expected)
            path = self._part_prefix(table, stage, shard) + f"{fingerprint[:16]}.parquet"
            buf = io.BytesIO()
            pq.write_table(data.replace_schema_metadata(expected.metadata), buf, compression="zstd")
            blob = buf.getvalue()
            self._write_atomic(path, blob)
            files.append(
                ShardFile(table=table, path=self.relpath(path), rows=data.num_rows, bytes=len(blob), sha256=file_digest(blob))
            )
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
        self.write_json(self.manifest_path(stage, shard), manifest.model_dump(mode="json"))
        return manifest

    def _check_fence(self, fence: str | None, what: str) -> None:
        if fence is not None:
            from synthvg.storage.lock import check_fence

            check_fence(self, fence, what)

    def drop_stage_shard(self, stage: str, shard: int) -> None:
        """Forget a stage's output for one shard (a stage now skipped, or a shard out of plan)."""
        self._clear_shard(stage, shard, list(TABLES))

    def manifest_paths(self, stage: str | None = None) -> list[str]:
        pattern = self._p("manifests", stage or "*", "shard-*.json")
        return [p for p in sorted(self.fs.glob(pattern)) if p.endswith(".json")]

    def manifests(self, stage: str | None = None) -> Iterator[ShardManifest]:
        for path in self.manifest_paths(stage):
            raw = self.read_json(path)
            if raw is not None:
                yield ShardManifest.model_validate(raw)

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

    def committed_files(self) -> dict[str, list[str]]:
        """Every committed file as an openable URI, by table, from one read of the manifests."""
        out: dict[str, list[str]] = {}
        for m in self.manifests():
            for f in m.files:
                out.setdefault(f.table, []).append(self.uri(f.path))
        return out

    def table_files(self, table: str) -> list[str]:
        """Every committed file of a table, across stages, as openable URIs."""
        return self.committed_files().get(table, [])

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
