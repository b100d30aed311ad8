"""Parquet shards under a dataset root, and DuckDB views over them."""

from synthvg.storage.dataset import Dataset, StorageRefused, StorageWriteError
from synthvg.storage.lock import BuildLocked, LockLost, build_lock, check_unlocked
from synthvg.storage.query import (
    QueryTimeout,
    ReadOnlyError,
    SqlLimits,
    check_read_only,
    connect,
    fetch_dicts,
    query,
)

__all__ = [
    "BuildLocked",
    "Dataset",
    "LockLost",
    "QueryTimeout",
    "ReadOnlyError",
    "SqlLimits",
    "StorageRefused",
    "StorageWriteError",
    "build_lock",
    "check_read_only",
    "check_unlocked",
    "connect",
    "fetch_dicts",
    "query",
]
