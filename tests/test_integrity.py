"""Committed files are checked, killed builds are tidied up, workers of ended builds are fenced
off, and storage faults end in one line (issue 23)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, dataset_rows, demo_config, image_table
from typer.testing import CliRunner

import synthvg.storage.dataset as dataset_module
import synthvg.storage.lock as lock_module
from synthvg.cli import app
from synthvg.pipeline import run_build
from synthvg.storage import Dataset, LockLost, StorageRefused, build_lock
from synthvg.storage.dataset import file_digest, utcnow
from synthvg.storage.verify import verify_dataset

runner = CliRunner()


def _commit(ds: Dataset, shard: int, fp: str, *ids: str, fence: str | None = None):
    return ds.commit_shard(
        "seeds",
        shard,
        fp,
        {"images": image_table(*ids)},
        run_id="r",
        image_count=len(ids),
        started_at=utcnow(),
        fence=fence,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".synthvg.lock"
    }


def _seeds_only(out: Path, **overrides):
    """The demo's seeds stage alone: a real build in about a second."""
    return demo_config(
        out,
        limit=4,
        shard_size=2,
        regions={"proposer": "none"},
        teacher={"backend": "none"},
        filters={"backend": "none"},
        **overrides,
    )


# ---------------------------------------------------------------------------------- integrity
def test_a_commit_records_each_files_size_and_sha256(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    (f,) = _commit(ds, 0, "fp", "a", "b").files
    data = (tmp_path / f.path).read_bytes()
    assert (f.bytes, f.sha256, f.rows) == (len(data), file_digest(data), 2)
    assert verify_dataset(ds).ok


def test_a_record_without_checksums_still_loads_and_verifies(tmp_path):
    """Records migrated from roots written before checksums were recorded: loaded, built on,
    verified without them."""
    from synthvg.schemas import ShardFile

    ds = Dataset(tmp_path)
    ds.init()
    m = _commit(ds, 0, "fp", "a")
    old = m.model_copy(
        update={"files": [ShardFile(table=f.table, path=f.path, rows=f.rows) for f in m.files]}
    )
    ds._append_record("seeds", 0, "r", old)
    assert ds.is_committed("seeds", 0, "fp")
    report = verify_dataset(ds)
    assert report.ok and len(report.unchecksummed) == 1


def test_verify_reports_missing_files(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    (gone,) = _commit(ds, 0, "fp0", "a").files
    _commit(ds, 1, "fp1", "b")
    os.remove(tmp_path / gone.path)
    problems = verify_dataset(ds).problems
    assert problems == [f"seeds shard 00000: {gone.path}: missing"]


def test_a_build_redoes_a_truncated_or_deleted_shard_and_says_so(tmp_path, caplog):
    cfg = _seeds_only(tmp_path / "root")
    run_build(cfg)
    root = Path(cfg.out)
    before = dataset_rows(cfg.out)
    ds = Dataset(cfg.out)
    (images_1,) = [f for f in ds.read_manifest("seeds", 1).files if f.table == "images"]
    (regions_0,) = [f for f in ds.read_manifest("seeds", 0).files if f.table == "regions"]
    (root / images_1.path).write_bytes((root / images_1.path).read_bytes()[:100])
    os.remove(root / regions_0.path)

    with caplog.at_level("WARNING", logger="synthvg"):
        run = run_build(cfg)
    seeds = next(s for s in run.stages if s.stage == "seeds")
    assert (seeds.shards_written, seeds.shards_up_to_date) == (2, 0)
    assert seeds.redone == [
        f"shard 00000: {regions_0.path} is missing",
        f"shard 00001: {images_1.path} has 100 bytes, its commit recorded {images_1.bytes}",
    ]
    assert (
        f"seeds shard 00001: redoing it, its committed files changed: {images_1.path} has 100 bytes"
        in caplog.text
    )
    assert dataset_rows(cfg.out) == before
    assert verify_dataset(ds).ok
    rerun = run_build(cfg)
    assert all(s.redone == [] and s.shards_written == 0 for s in rerun.stages)


# ---------------------------------------------------------------------------------- cleanup
def test_the_next_build_removes_stale_temporaries_and_marks_killed_runs_interrupted(tmp_path):
    cfg = _seeds_only(tmp_path / "root")
    first = run_build(cfg)
    root = Path(cfg.out)
    stale = [
        "plan.json.0123456789abcdef0123456789abcdef.tmp",
        "runs/x.json.fedcba9876543210fedcba9876543210.tmp",
        "stats.json.00000000000000000000000000000000.tmp",
        "tables/images/_stage=seeds/_shard=0/part-abc.parquet.11111111111111111111111111111111.tmp",
    ]
    for rel in stale:
        (root / rel).write_bytes(b"partial")
    (root / "notes.tmp").write_text("not ours: kept")
    killed = json.loads((root / "runs" / f"{first.run_id}.json").read_text())
    killed.update(run_id="20200101T000000Z-killed", status="running", finished_at=None, stages=[])
    (root / "runs" / "20200101T000000Z-killed.json").write_text(json.dumps(killed))

    second = run_build(cfg)
    assert not [rel for rel in stale if (root / rel).exists()]
    assert (root / "notes.tmp").exists()
    status = {r.run_id: r.status for r in Dataset(cfg.out).runs()}
    assert status == {
        "20200101T000000Z-killed": "interrupted",
        first.run_id: "completed",
        second.run_id: "completed",
    }


# ---------------------------------------------------------------------------------- fencing
def test_a_stale_build_cannot_commit_after_another_took_the_root(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    with build_lock(ds, "run-a") as fence_a:
        _commit(ds, 0, "fp-a", "a", fence=fence_a)
    with build_lock(ds, "run-b") as fence_b:
        _commit(ds, 0, "fp-b", "a", "b", fence=fence_b)
        before = _files(tmp_path)
        for shard in (0, 1):  # over build B's commit, and a new shard
            with pytest.raises(LockLost, match=r"held by build run run-b .*nothing was written"):
                _commit(ds, shard, "fp-a", "stale", fence=fence_a)
        assert _files(tmp_path) == before
        assert ds.read_manifest("seeds", 0).fingerprint == "fp-b"
    with pytest.raises(LockLost, match="no build holds it now"):  # B released the root
        _commit(ds, 1, "fp-b", "b", fence=fence_b)
    assert ds.read_manifest("seeds", 1) is None


def test_a_worker_of_a_killed_build_cannot_commit(tmp_path):
    """The issue's Ray case: the build's process dies, its worker goes on and tries to commit."""
    ds = Dataset(tmp_path)
    ds.init()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from synthvg.storage import Dataset, build_lock
            with build_lock(Dataset({str(tmp_path)!r}), "run-killed") as fence:
                print(fence, flush=True)
                time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        fence = holder.stdout.readline().strip()
        _commit(ds, 0, "fp", "a", fence=fence)  # the build is alive: its commits go through
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    before = _files(tmp_path)
    with pytest.raises(LockLost, match=r"\(pid \d+\) has ended; nothing was written"):
        _commit(ds, 1, "fp", "b", fence=fence)
    with (
        build_lock(ds, "run-next"),
        pytest.raises(LockLost, match="now held by build run run-next"),
    ):
        _commit(ds, 1, "fp", "b", fence=fence)
    assert _files(tmp_path) == before


def test_a_remote_root_fences_by_its_lease(tmp_path):
    ds = Dataset(f"file://{tmp_path}")
    ds.is_local = False  # an object-store root: the lock is a lease file, Delta reads file:// URLs
    ds.init()
    with build_lock(ds, "run-a", lease_seconds=30) as fence:
        _commit(ds, 0, "fp", "a", fence=fence)
    with pytest.raises(LockLost, match="no build holds it now"):
        _commit(ds, 1, "fp", "b", fence=fence)
    assert verify_dataset(ds).ok and verify_dataset(ds).files == 1


def test_every_shard_commit_of_a_build_carries_its_lock_token(tmp_path, monkeypatch):
    checked: list[tuple[str, str]] = []
    real = lock_module.check_fence
    monkeypatch.setattr(
        lock_module,
        "check_fence",
        lambda ds, token, what: (checked.append((token, what)), real(ds, token, what)),
    )
    cfg = _seeds_only(tmp_path / "root")
    run_build(cfg)
    tokens = {t for t, _ in checked}
    assert len(tokens) == 1 and len(next(iter(tokens))) == 32
    assert sorted({w for _, w in checked}) == ["seeds shard 00000", "seeds shard 00001"]
    assert len(checked) == 4  # before touching anything, and again before the manifest


# ---------------------------------------------------------------------------------- faults
class _FailingDisk:
    """``os`` as the dataset module sees it, where writes start failing after ``free`` files
    (``failures`` times, then they work again)."""

    def __init__(self, free: int, code: int, call: str, failures: int = 1 << 30):
        self.free, self.code, self.call, self.failures = free, code, call, failures
        self.refused = 0

    def __getattr__(self, name):
        real = getattr(os, name)
        if name != self.call:
            return real

        def failing(*args):
            if self.free <= 0 and self.refused < self.failures:
                self.refused += 1
                raise OSError(self.code, os.strerror(self.code))
            self.free -= 1
            return real(*args)

        return failing


@pytest.mark.parametrize(("code", "call"), [(errno.ENOSPC, "fsync"), (errno.EACCES, "replace")])
def test_a_storage_fault_stops_the_build_and_the_rerun_completes(tmp_path, monkeypatch, code, call):
    """A full disk (fsync fails) or a folder made read-only (rename refused) mid-build."""
    cfg = _seeds_only(tmp_path / "root")
    reference = _seeds_only(tmp_path / "reference")
    run_build(reference)
    monkeypatch.setattr(dataset_module, "os", _FailingDisk(5, code, call))
    with pytest.raises(StorageRefused) as info:
        run_build(cfg)
    message = str(info.value)
    assert (
        message.startswith(f"cannot write {cfg.out}/")
        and f"[Errno {code}] {os.strerror(code)}" in message
    )
    assert "\n" not in message and ".tmp" not in message
    assert not list(Path(cfg.out).rglob("*.tmp"))  # the partial copy is not left behind
    monkeypatch.undo()
    run_build(cfg)
    assert dataset_rows(cfg.out) == dataset_rows(reference.out)


def test_a_flaky_write_fails_only_its_shard(tmp_path, monkeypatch):
    """An I/O error that is not the storage refusing writes is the shard's fault: recorded, the
    build goes on, a rerun redoes that shard."""
    cfg = _seeds_only(tmp_path / "root")
    monkeypatch.setattr(dataset_module, "os", _FailingDisk(5, errno.EIO, "fsync", failures=1))
    run = run_build(cfg)
    seeds = next(s for s in run.stages if s.stage == "seeds")
    assert (run.status, seeds.shards_written, seeds.shards_failed) == ("failed", 1, 1)
    assert (
        f"StorageWriteError: cannot write {cfg.out}/tables/" in seeds.reason
        and "[Errno 5] Input/output error" in seeds.reason
    )
    monkeypatch.undo()
    assert run_build(cfg).status == "completed"


def test_storage_write_errors_survive_pickling():
    """Dask and Ray workers send the exception back pickled."""
    import pickle

    e = pickle.loads(pickle.dumps(StorageRefused(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y")))
    assert (
        isinstance(e, StorageRefused)
        and str(e) == "cannot write /x/y: [Errno 28] No space left on device"
    )


def _without_write_permission() -> list[str]:
    """A command prefix under which file permissions apply, as they would for a normal user."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [*_without_write_permission(), sys.executable, "-m", "synthvg.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_build_into_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    result = _cli(
        "build", "--config", str(REPO / "configs" / "demo.yaml"), "--out", str(folder / "demo")
    )
    folder.chmod(0o755)
    assert result.returncode == 1, result.stderr
    assert (
        f"cannot write {folder / 'demo'}: [Errno 13] Permission denied"
        in result.stderr.splitlines()
    )
    assert f"nothing is committed in {folder / 'demo'}" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_a_read_only_dataset_can_be_verified_and_queried(tmp_path):
    cfg = _seeds_only(tmp_path / "root")
    run_build(cfg)
    root = Path(cfg.out)
    before = _files(root)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        touch = subprocess.run(
            [*_without_write_permission(), "touch", str(root / "x")], capture_output=True
        )
        assert touch.returncode != 0  # the commands below really run without write access
        outputs = {}
        for args in (
            ["verify"],
            ["sql", "SELECT count(*) AS n FROM images", "--format", "csv"],
            ["stats"],
        ):
            result = _cli(*args, "--root", cfg.out)
            assert result.returncode == 0, (args, result.stderr)
            outputs[args[0]] = result.stdout
        assert "all intact" in outputs["verify"] and outputs["sql"].split() == ["n", "4"]
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert _files(root) == before


@pytest.mark.slow
def test_a_full_disk_mid_build_is_one_line_and_the_summary(prefect_server, tmp_path, monkeypatch):
    """Through the Prefect flow: the shard's fault is not retried, the build stops, the CLI prints
    the path and errno, what is committed, and exits 1 without a traceback."""
    cfg = _seeds_only(tmp_path / "root", executor={"workers": 1, "retries": 2})
    config_path = tmp_path / "build.yaml"
    config_path.write_text(json.dumps(cfg.model_dump(mode="json")))
    disk = _FailingDisk(
        8, errno.ENOSPC, "fsync"
    )  # marker, plan, plan.json, run; shard 0: 3 tables, manifest
    monkeypatch.setattr(dataset_module, "os", disk)
    result = runner.invoke(app, ["build", "--config", str(config_path)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    fault = [line for line in lines if line.startswith("cannot write ")]
    assert len(fault) == 1 and fault[0].endswith(": [Errno 28] No space left on device")
    assert f"committed in {cfg.out} (shards per stage): seeds 1" in lines
    assert "Traceback" not in result.output
    assert len(list(Dataset(cfg.out).manifests("seeds"))) == 1
    assert disk.refused == 1  # not retried: a full disk fails again on every try
