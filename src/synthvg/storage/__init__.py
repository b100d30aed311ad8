"""Parquet shards under a dataset root, and DuckDB views over them."""

from synthvg.storage.dataset import Dataset
from synthvg.storage.lock import BuildLocked, build_lock, check_unlocked
from synthvg.storage.query import ReadOnlyError, check_read_only, connect, fetch_dicts, query

__all__ = ["BuildLocked", "Dataset", "ReadOnlyError", "build_lock", "check_read_only", "check_unlocked", "connect", "fetch_dicts", "query"]
