"""One writer per dataset root.

Local roots use an OS file lock (``flock``): the kernel releases it when the holder dies, so a
build killed with SIGKILL never leaves a stale lock behind. Remote (fsspec) roots have no such
primitive; they use a lease file refreshed by a heartbeat thread, which a new build may take
over once it is older than ``lease_seconds``.

The lock file also carries a **fencing token**, new for every acquisition, which
:func:`build_lock` yields. The build hands it to every shard commit (run_shard's ``fence``),
and :func:`check_fence` refuses a commit whose token is no longer the lock file's, or whose
build is gone (a local lock's holder process has exited, a released lock is empty). So a Dask or
Ray worker that outlived a killed build cannot commit after it, nor over another build's work.
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

from synthvg.storage.dataset import Dataset, utcnow, writing

LOCK_NAME = ".synthvg.lock"


class BuildLocked(RuntimeError):
    """Another build is writing this dataset root."""


class LockLost(RuntimeError):
    """A commit from a build that no longer holds the root's lock (a worker that outlived it)."""


def _holder_text(info: dict | None) -> str:
    if not info:
        return "another build"
    return (
        f"build run {info.get('run_id')} (pid {info.get('pid')} on {info.get('host')}, "
        f"started {info.get('started_at')})"
    )


@contextlib.contextmanager
def build_lock(dataset: Dataset, run_id: str, lease_seconds: float = 300.0) -> Iterator[str]:
    """Hold the root's writer lock; yields the fencing token that this build's commits carry."""
    token = uuid.uuid4().hex
    info = {
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": utcnow().isoformat(),
        "token": token,
    }
    if dataset.is_local:
        with _local_lock(dataset, info):
            yield token
    else:
        with _lease_lock(dataset, info, lease_seconds):
            yield token


def lock_holder(dataset: Dataset) -> dict | None:
    """What the lock file says about the build holding the root (None: nobody)."""
    if not dataset.is_local:
        try:
            return dataset.read_json(dataset.abspath(LOCK_NAME))
        except ValueError:
            return None
    try:
        with open(os.path.join(dataset.path, LOCK_NAME), "rb") as f:
            return json.loads(f.read() or b"null")
    except (FileNotFoundError, ValueError):
        return None


def _alive_here(info: dict) -> bool:
    """False only when the holder ran on this host and its process is gone."""
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def check_fence(dataset: Dataset, token: str, what: str) -> None:
    """Refuse to commit ``what`` unless the build that owns ``token`` still holds the root."""
    holder = lock_holder(dataset)
    if not holder or holder.get("token") != token:
        now = f"it is now held by {_holder_text(holder)}" if holder else "no build holds it now"
        raise LockLost(
            f"refused to commit {what} to {dataset.url}: the build this worker belongs to no longer "
            f"holds the dataset's lock ({now}); nothing was written"
        )
    if dataset.is_local and not _alive_here(holder):
        raise LockLost(
            f"refused to commit {what} to {dataset.url}: the build this worker belongs to "
            f"(pid {holder.get('pid')}) has ended; nothing was written"
        )


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
    path = os.path.join(dataset.path, LOCK_NAME)
    with writing(path):
        os.makedirs(dataset.path, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(dataset, _read_holder(fd)) from None
        with writing(path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # released: no commit may carry this token any more
                os.ftruncate(fd, 0)
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
