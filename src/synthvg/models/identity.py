"""Cheap identities of model files for fingerprints: a changed checkpoint redoes its stage.

Hashing gigabytes of weights on every build start would cost minutes, so a weight file is
known by its path, size and modification time, and a model directory by its config.json's
hash plus the same for each weight file. A missing path is an identity too (the stage's
constructor then fails with a clear message).
"""

from __future__ import annotations

import functools
import hashlib
import os

_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def _stat(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def path_identity(path: str) -> dict:
    """Identity of a weight file or a model directory."""
    if os.path.isfile(path):
        return {"path": path, **_stat(path)}
    if not os.path.isdir(path):
        return {"path": path, "missing": True}
    names = sorted(os.listdir(path))
    config = os.path.join(path, "config.json")
    return {
        "path": path,
        "config_sha256": _sha256(config) if os.path.isfile(config) else None,
        "weights": {n: _stat(os.path.join(path, n)) for n in names if n.endswith(_WEIGHTS)},
    }


def folder_identity(path: str) -> dict:
    """Identity of a folder of many small files (precomputed proposals): every file's name,
    size and mtime, hashed; cached per process while the folder's own mtime holds."""
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return {"path": path, "missing": True}
    return {"path": path, "listing_sha256": _listing(path, mtime)}


@functools.lru_cache(maxsize=8)
def _listing(path: str, mtime_ns: int) -> str:
    h = hashlib.sha256()
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
