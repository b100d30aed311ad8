"""The self-distillation loop of prefect.yaml against a real `prefect server start`: five
deployments chained by flow-run Completed triggers (see scripts/check_loop.py; ~6 minutes)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow


def test_one_build_run_drives_train_build_train_evaluate_through_the_triggers():
    # A subprocess: the script runs its own server, worker, editor and settings.
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_loop.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]
    assert '"ok": true' in p.stdout
    for step in ("train-loop-stage1", "loop-svg-full", "train-loop-stage2", "evaluate-robin"):
        assert f"{step}: triggered run" in p.stdout, p.stdout
