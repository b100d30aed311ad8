"""Check every committed file of a dataset against its commit record (``synthvg verify``).

A build only checks that committed files exist with their recorded size: a stat per file, cheap
enough for every run. This reads every byte: the SHA-256 the commit recorded, and that the file
parses as Parquet with the recorded number of rows. It only reads (no lock, no temporaries), so
it works on read-only storage.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from synthvg.schemas import ShardFile
from synthvg.storage.dataset import Dataset, file_digest


class VerifyReport(BaseModel):
    root: str
    shards: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[str] = Field(
        default_factory=list, description="one line per damaged file or record"
    )
    damaged: list[tuple[str, int]] = Field(
        default_factory=list, description="(stage, shard) of every damaged shard"
    )
    unchecksummed: list[str] = Field(
        default_factory=list, description="files committed before checksums were recorded"
    )

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_file(dataset: Dataset, f: ShardFile) -> tuple[list[str], int]:
    """What is wrong with one committed file (empty: intact), and its size."""
    try:
        with dataset.fs.open(dataset.abspath(f.path), "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return ["missing"], 0
    except OSError as e:
        return [f"cannot be read: {e}"], 0
    problems = []
    if f.bytes is not None and len(data) != f.bytes:
        problems.append(f"has {len(data)} bytes, its commit recorded {f.bytes}")
    if f.sha256 is not None and file_digest(data) != f.sha256:
        problems.append("sha256 differs from its commit record (the file was changed or replaced)")
    try:
        rows = pq.read_table(pa.BufferReader(data)).num_rows
    except (pa.ArrowException, OSError, ValueError) as e:
        problems.append(
            f"does not parse as Parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        )
    else:
        if rows != f.rows:
            problems.append(f"holds {rows} rows, its commit recorded {f.rows}")
    return problems, len(data)


def verify_dataset(root: str | Dataset, stage: str | None = None) -> VerifyReport:
    """Every commit record of the root (or of one stage) and the files it names."""
    dataset = root if isinstance(root, Dataset) else Dataset(root)
    report = VerifyReport(root=dataset.url)
    for manifest in dataset.manifests(stage):
        found: list[str] = []
        for f in manifest.files:
            problems, size = _check_file(dataset, f)
            report.files += 1
            report.bytes += size
            found.extend(f"{f.path}: {p}" for p in problems)
            if f.sha256 is None:
                report.unchecksummed.append(f.path)
        if found and dataset.read_manifest(manifest.stage, manifest.shard) != manifest:
            continue  # a build rewrote this shard while we read it: not damage
        report.shards += 1
        label = f"{manifest.stage} shard {manifest.shard:05d}"
        report.problems.extend(f"{label}: {p}" for p in found)
        if found:
            report.damaged.append((manifest.stage, manifest.shard))
    return report
