"""Parquet shards under a dataset root, and DuckDB views over them."""

from synthvg.storage.dataset import Dataset, StorageRefused, StorageWriteError
from synthvg.storage.lock import BuildLocked, LockLost, build_lock
from synthvg.storage.query import ReadOnlyError, check_read_only, connect, fetch_dicts, query

__all__ = ["BuildLocked", "Dataset", "LockLost", "ReadOnlyError", "StorageRefused", "StorageWriteError", "build_lock", "check_read_only", "connect", "fetch_dicts", "query"]
