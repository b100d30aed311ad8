"""The Delta Lake tables under a dataset root (delta-rs through the ``deltalake`` package).

Every table of a dataset is a Delta table at ``tables/<table>/``, partitioned by the stage and
shard that wrote its rows and that shard's fingerprint (``_stage``, ``_shard``,
``_fingerprint``: 16 hex digits), so a shard's commit replaces exactly its own partition.
Beside them, ``completions/`` is an append-only Delta table of commit records: the latest row
of a (stage, shard) holds its fingerprint and its record (files, sizes, checksums, rows,
metrics), or no fingerprint once withdrawn. Its version is the dataset's version.

External engines (Spark, Trino, Polars, DuckDB's delta extension, deltalake) read a table's
rows that the views show by keeping the partitions whose (``_stage``, ``_shard``,
``_fingerprint``) match the latest completions row of that (stage, shard) — see docs/STORAGE.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pyarrow as pa

# The commit log's name and the partition columns live with the light reader (snapshot.py).
from synthvg.storage.snapshot import COMPLETIONS, PARTITION

__all__ = [
    "COMPLETIONS",
    "COMPLETION_SCHEMA",
    "PARTITION",
    "data_schema",
    "retry_conflicts",
]

#: The commit records' table: an append-only log of what each (stage, shard) holds. The latest
#: row of a (stage, shard) is its state: a record (the ShardManifest as JSON) or, with a NULL
#: fingerprint, nothing (taken away before a recommit, or withdrawn).
COMPLETION_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("shard", pa.int64(), nullable=False),
        pa.field("sequence", pa.int64(), nullable=False),  # orders the rows of one (stage, shard)
        pa.field("fingerprint", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("record", pa.string()),
    ]
)

T = TypeVar("T")


def retry_conflicts(action: Callable[[], T], attempts: int = 30) -> T:
    """Run a Delta transaction, retrying when a concurrent writer's commit conflicts with it.

    Shard commits of several workers touch disjoint partitions (and the completions log only
    appends), so a conflict only means the table moved on under the transaction; replaying it
    on the new version is correct.
    """
    from deltalake.exceptions import CommitFailedError

    for attempt in range(attempts):
        try:
            return action()
        except CommitFailedError:
            if attempt == attempts - 1:
                raise
            time.sleep(min(0.02 * 2**attempt, 1.0))
    raise AssertionError("unreachable")


def data_schema(schema: pa.Schema) -> pa.Schema:
    """A table's Delta schema: its record schema plus the partition columns."""
    return (
        schema.append(pa.field("_stage", pa.string()))
        .append(pa.field("_shard", pa.int64()))
        .append(pa.field("_fingerprint", pa.string()))
    )
