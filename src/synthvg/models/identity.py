"""A cheap identity of a local model directory or checkpoint file, for stage fingerprints.

Hashing gigabytes of weights on every build would be slow; the names, sizes and modification
times of the files change whenever the weights are replaced, which is what a rebuild must see.
"""

from __future__ import annotations

import hashlib
import os


def checkpoint_identity(path: str) -> str:
    """sha256 over (relative name, size, mtime) of every file under ``path`` ('missing' if absent)."""
    if not os.path.exists(path):
        return "missing"
    entries = []
    if os.path.isfile(path):
        st = os.stat(path)
        entries.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            st = os.stat(full)
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(repr(sorted(entries)).encode()).hexdigest()
