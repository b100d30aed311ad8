"""Delta tables under a dataset root, and DuckDB views over them.

Reading (``connect``, ``query``, ``Snapshot``) is bound now and light: it imports neither
pyarrow, fsspec, deltalake nor the record models for a local root. Writing (``Dataset``) and
the build lock resolve on first use (PEP 562), so ``synthvg sql``, ``stats`` and ``show`` do not
pay for them.
"""

from typing import TYPE_CHECKING

from synthvg.lazy import lazy_getattr

# ``query`` shares its name with its module: bound now, so importing ``synthvg.storage.query``
# later cannot leave the module where the function is expected (the module is light).
from synthvg.storage.query import (
    QueryTimeout,
    ReadOnlyError,
    SqlLimits,
    check_read_only,
    connect,
    fetch_dicts,
    query,
    query_rows,
)
from synthvg.storage.snapshot import Snapshot

_EXPORTS = {
    "Dataset": "synthvg.storage.dataset",
    "StorageRefused": "synthvg.storage.dataset",
    "StorageWriteError": "synthvg.storage.dataset",
    "BuildLocked": "synthvg.storage.lock",
    "LockLost": "synthvg.storage.lock",
    "build_lock": "synthvg.storage.lock",
    "check_unlocked": "synthvg.storage.lock",
}

if TYPE_CHECKING:  # the same names, eagerly, for type checkers (tests/test_lazy_exports.py)
    from synthvg.storage.dataset import Dataset, StorageRefused, StorageWriteError
    from synthvg.storage.lock import BuildLocked, LockLost, build_lock, check_unlocked

__getattr__ = lazy_getattr(__name__, _EXPORTS)

__all__ = [
    "BuildLocked",
    "Dataset",
    "LockLost",
    "QueryTimeout",
    "ReadOnlyError",
    "Snapshot",
    "SqlLimits",
    "StorageRefused",
    "StorageWriteError",
    "build_lock",
    "check_read_only",
    "check_unlocked",
    "connect",
    "fetch_dicts",
    "query",
    "query_rows",
]
