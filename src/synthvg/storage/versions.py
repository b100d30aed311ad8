"""Dataset versions: list them, bring one back, compact, vacuum, and convert old-layout roots.

Every shard commit appends to the ``completions`` Delta table, whose version is the dataset's
version; a build's run record names the version it produced. Old versions stay readable
(``Dataset(root, as_of=V)``, ``synthvg sql --as-of V``) until ``vacuum`` removes the files only
they name. Each function here writes, so callers hold the build lock.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from synthvg.schemas import TABLES, ShardManifest
from synthvg.storage.dataset import COMPLETIONS, Dataset, UnknownVersion, writing

if TYPE_CHECKING:
    from deltalake import DeltaTable


class VersionInfo(BaseModel):
    """One run's stretch of dataset versions."""

    first: int
    last: int
    run_id: str
    committed: int = Field(0, description="shard records written")
    withdrawn: int = Field(0, description="shard records withdrawn")
    stages: list[str] = Field(default_factory=list)
    started: dt.datetime
    finished: dt.datetime


def list_versions(dataset: Dataset) -> list[VersionInfo]:
    """The dataset's versions, grouped by the run that made them, oldest first."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    dataset.check_layout()
    try:
        history = DeltaTable(dataset.delta_uri(COMPLETIONS)).history()
    except TableNotFoundError:
        return []
    out: list[VersionInfo] = []
    for h in sorted(history, key=lambda h: h["version"]):
        run_id = h.get("run_id") or "(maintenance)"
        when = dt.datetime.fromtimestamp(h["timestamp"] / 1000, dt.UTC)
        if not out or out[-1].run_id != run_id:
            out.append(
                VersionInfo(
                    first=h["version"],
                    last=h["version"],
                    run_id=run_id,
                    started=when,
                    finished=when,
                )
            )
        info = out[-1]
        info.last, info.finished = h["version"], when
        if h.get("action") == "commit":
            info.committed += 1
        elif h.get("action") == "withdraw":
            info.withdrawn += 1
        if (stage := h.get("stage")) and stage not in info.stages:
            info.stages.append(stage)
    return out


def check_readable(dataset: Dataset) -> dict[tuple[str, int], ShardManifest]:
    """The records of ``dataset.as_of``, refusing a version whose files vacuum removed."""
    records = dataset.records()
    for m in records.values():
        for f in m.files:
            if not dataset.fs.exists(dataset.abspath(f.path)):
                raise UnknownVersion(
                    f"{dataset.url} version {dataset.as_of}: its file {f.path} was removed "
                    "(by `synthvg vacuum`); that version can no longer be read"
                )
    return records


def restore(dataset: Dataset, version: int, run_id: str) -> tuple[int, int]:
    """Make ``version`` the latest state again, as new versions (nothing later is lost: the
    versions in between stay readable until vacuum). Returns (shards restored, withdrawn)."""
    old = check_readable(Dataset(dataset.url, as_of=version))
    current = Dataset(dataset.url).records()
    restored = withdrawn = 0
    for key in sorted(set(current) - set(old)):
        dataset.drop_stage_shard(*key, run_id=run_id)
        withdrawn += 1
    for key, record in sorted(old.items()):
        if current.get(key) == record:
            continue
        stage, shard = key
        tables = {}
        for f in record.files:
            with dataset.fs.open(dataset.abspath(f.path), "rb") as fh:
                tables[f.table] = pq.read_table(fh)
        dataset.commit_shard(
            stage,
            shard,
            record.fingerprint,
            tables,
            run_id=run_id,
            image_count=record.image_count,
            started_at=record.started_at,
            metrics=record.metrics,
        )
        restored += 1
    return restored, withdrawn


def commit_log_files(dataset: Dataset) -> int:
    """How many files the commit log's current version reads."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return len(DeltaTable(dataset.delta_uri(COMPLETIONS)).file_uris())
    except TableNotFoundError:
        return 0


def _delta_tables(dataset: Dataset) -> Iterator[tuple[str, DeltaTable]]:
    """(path under the root, table) of every Delta table the root holds: the commit log first."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    for rel in [COMPLETIONS] + [posixpath.join("tables", t) for t in TABLES]:
        try:
            yield rel, DeltaTable(dataset.delta_uri(rel))
        except TableNotFoundError:
            continue


def compact(dataset: Dataset) -> dict[str, int]:
    """Merge the commit log's small files and checkpoint every table's Delta log, so opening
    the dataset reads a few files instead of one per commit. Returns files merged per table."""
    out = {}
    for rel, table in _delta_tables(dataset):
        with writing(dataset.abspath(rel)):
            metrics = table.optimize.compact() if rel == COMPLETIONS else {"numFilesRemoved": 0}
            table.update_incremental()
            table.create_checkpoint()
        out[rel] = int(metrics.get("numFilesRemoved", 0))
    return out


def vacuum(dataset: Dataset, keep_days: float) -> list[str]:
    """Delete files no version newer than ``keep_days`` days needs (Delta vacuum, table by
    table). Versions older than that may become unreadable. Returns the files deleted."""
    deleted = []
    for rel, table in _delta_tables(dataset):
        with writing(dataset.abspath(rel)):
            gone = table.vacuum(
                retention_hours=int(keep_days * 24), enforce_retention_duration=False, dry_run=False
            )
        deleted += [posixpath.join(rel, g) for g in gone]
    return deleted


class MigrateReport(BaseModel):
    shards: int = 0
    skipped: int = 0
    files_removed: int = 0


def migrate(dataset: Dataset, run_id: str) -> MigrateReport:
    """Convert a root of the JSON-manifest layout: every manifest's files are committed as Delta
    tables with their fingerprints (shards already converted by a killed earlier try are
    skipped), then the old manifests and files are removed and the marker says version 2."""
    from synthvg.storage.dataset import FORMAT

    marker = dataset.abspath("synthvg.json")
    raw = dataset.read_json(marker)
    if raw is None or raw.get("format") != FORMAT["format"]:
        raise FileNotFoundError(f"{dataset.url} is not a synthvg dataset (no synthvg.json)")
    if raw.get("version", 1) >= FORMAT["version"] and not dataset.fs.exists(
        dataset.abspath("manifests")
    ):
        return MigrateReport()
    report = MigrateReport()
    paths = sorted(p for p in dataset.fs.glob(dataset.abspath("manifests/*/shard-*.json")))
    converted = _converted(dataset)
    old_files = []
    for path in paths:
        try:
            manifest = ShardManifest.model_validate(json.loads(dataset.fs.cat_file(path)))
        except ValueError as e:
            raise ValueError(
                f"{path}: not a valid manifest ({str(e).splitlines()[0]}); fix or remove it, then migrate again"
            ) from None
        old_files += [dataset.abspath(f.path) for f in manifest.files]
        if converted.get((manifest.stage, manifest.shard)) == manifest.fingerprint:
            report.skipped += 1
            continue
        tables: dict[str, pa.Table] = {}
        for f in manifest.files:
            try:
                with dataset.fs.open(dataset.abspath(f.path), "rb") as fh:
                    tables[f.table] = pq.read_table(fh)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{dataset.url}: {f.path}, named by {dataset.relpath(path)}, is missing; "
                    "remove that manifest (its shard is redone by the next build), then migrate again"
                ) from None
        dataset.commit_shard(
            manifest.stage,
            manifest.shard,
            manifest.fingerprint,
            tables,
            run_id=manifest.run_id,
            image_count=manifest.image_count,
            started_at=manifest.started_at,
            metrics=manifest.metrics,
        )
        report.shards += 1
    dataset.write_json(marker, FORMAT)
    for path in old_files + paths:
        if dataset.fs.exists(path):
            with writing(path):
                dataset.fs.rm(path)
            report.files_removed += 1
    if dataset.fs.exists(dataset.abspath("manifests")):
        dataset.fs.rm(dataset.abspath("manifests"), recursive=True)
    return report


def _converted(dataset: Dataset) -> dict[tuple[str, int], str]:
    """(stage, shard) -> fingerprint of what a killed earlier migrate already committed (read
    past the layout check: the marker says version 1 until the migrate finishes)."""
    from synthvg.storage.dataset import _record_log

    return {k: m.fingerprint for k, m in _record_log(dataset).snapshot(None).items()}


__all__ = [
    "MigrateReport",
    "VersionInfo",
    "check_readable",
    "commit_log_files",
    "compact",
    "list_versions",
    "migrate",
    "restore",
    "vacuum",
]
