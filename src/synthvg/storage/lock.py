"""One writer per dataset root.

Local roots use an OS file lock (``flock``): the kernel releases it when the holder dies, so a
build killed with SIGKILL never leaves a stale lock behind. Remote (fsspec) roots have no such
primitive; they use a lease file refreshed by a heartbeat thread, which a new build may take
over once it is older than ``lease_seconds``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator

from synthvg.storage.dataset import Dataset, utcnow

LOCK_NAME = ".synthvg.lock"


class BuildLocked(RuntimeError):
    """Another build is writing this dataset root."""


def _holder_text(info: dict | None) -> str:
    if not info:
        return "another build"
    return (
        f"build run {info.get('run_id')} (pid {info.get('pid')} on {info.get('host')}, "
        f"started {info.get('started_at')})"
    )


@contextlib.contextmanager
def build_lock(dataset: Dataset, run_id: str, lease_seconds: float = 300.0) -> Iterator[None]:
    info = {
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": utcnow().isoformat(),
        "token": uuid.uuid4().hex,
    }
    if dataset.is_local:
        with _local_lock(dataset, info):
            yield
    else:
        with _lease_lock(dataset, info, lease_seconds):
            yield


def check_unlocked(dataset: Dataset, lease_seconds: float = 300.0) -> None:
    """Raise :class:`BuildLocked` if a build holds ``dataset`` now, taking nothing: lets a
    command refuse before it starts a flow (and a Prefect server) that would be refused anyway."""
    if dataset.is_local:
        path = os.path.join(dataset.path, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(dataset, _read_holder(fd)) from None
        finally:
            os.close(fd)
    else:
        current = dataset.read_json(dataset.abspath(LOCK_NAME))
        if current is not None and _lease_age(current) < lease_seconds:
            raise _locked(dataset, current)


def _read_holder(fd: int) -> dict | None:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:
        return None


def _locked(dataset: Dataset, holder: dict | None) -> BuildLocked:
    return BuildLocked(
        f"{dataset.url} is being written by {_holder_text(holder)}; wait for it to finish or stop it, then run again"
    )


def _lease_age(lease: dict) -> float:
    return (utcnow() - dt.datetime.fromisoformat(lease["heartbeat"])).total_seconds()


@contextlib.contextmanager
def _local_lock(dataset: Dataset, info: dict) -> Iterator[None]:
    os.makedirs(dataset.path, exist_ok=True)
    path = os.path.join(dataset.path, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(dataset, _read_holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def _lease_lock(dataset: Dataset, info: dict, lease_seconds: float) -> Iterator[None]:
    path = dataset.abspath(LOCK_NAME)
    current = dataset.read_json(path)
    if current is not None:
        age = _lease_age(current)
        if age < lease_seconds:
            raise BuildLocked(
                f"{dataset.url} is being written by {_holder_text(current)} "
                f"(lease refreshed {age:.0f}s ago, expires after {lease_seconds:.0f}s)"
            )
    stop = threading.Event()

    def beat() -> None:
        dataset.write_json(path, {**info, "heartbeat": utcnow().isoformat()})

    beat()
    if (dataset.read_json(path) or {}).get("token") != info["token"]:
        raise BuildLocked(f"{dataset.url}: lost the race for the lease to another build")

    def loop() -> None:
        while not stop.wait(lease_seconds / 3):
            beat()

    thread = threading.Thread(target=loop, name="synthvg-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            dataset.fs.rm(path)
