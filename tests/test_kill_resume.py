"""SIGKILL a real `synthvg build` mid-way, run it again: exactly the rows of an uninterrupted build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import DEMO_CONFIG, dataset_rows, demo_config

from synthvg.pipeline import run_build
from synthvg.storage import Dataset
from synthvg.storage.verify import verify_dataset

pytestmark = pytest.mark.slow


def _cli(config_path, env):
    return subprocess.Popen(
        [sys.executable, "-m", "synthvg.cli", "build", "--config", str(config_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigkill_then_resume_gives_the_uninterrupted_rows(prefect_server, tmp_path):
    killed_root = tmp_path / "killed"
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config.update(
        out=str(killed_root), limit=8, shard_size=2, executor={"workers": 1, "retries": 0}
    )
    for src in config["seeds"]["sources"]:
        for key in ("annotations", "images"):
            src[key] = str((DEMO_CONFIG.parent / src[key]).resolve())
    config_path = tmp_path / "build.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PREFECT_API_URL": prefect_server}

    proc = _cli(config_path, env)

    # Kill once the regions stage has committed some but not all of its 4 shards.
    def regions_committed() -> int:
        return (
            len(list(Dataset(str(killed_root)).manifests("regions")))
            if (killed_root / "completions").exists()
            else 0
        )

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if regions_committed() >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "build finished before it could be killed:\n" + proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = regions_committed()
    assert 1 <= done_before < 4

    resumed = _cli(config_path, env)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert "regions  done: " in out
    # The resumed build tidied up after the killed one, and every committed file is intact.
    assert [r.status for r in Dataset(str(killed_root)).runs()] == ["interrupted", "completed"]
    assert not list(killed_root.rglob("*.tmp"))
    assert verify_dataset(str(killed_root)).ok

    reference = demo_config(tmp_path / "reference", limit=8, shard_size=2)
    run_build(reference)
    assert dataset_rows(str(killed_root)) == dataset_rows(reference.out)
