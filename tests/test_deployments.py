"""prefect.yaml against a real `prefect server start`: deploy, run, and the trigger (see the script)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow


def test_deploy_all_then_a_build_run_triggers_the_report():
    # A subprocess: the script runs its own server, worker and settings, not the test server's.
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_deployments.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]
    assert '"ok": true' in p.stdout
