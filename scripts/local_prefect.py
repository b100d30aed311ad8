"""A throw-away ``prefect server start`` on 127.0.0.1, for checks that need a real server.

The test suite's in-process test server cannot run workers, deployments, automations or the
UI; these scripts start the real server (with its UI and its trigger services) in a temporary
PREFECT_HOME and stop it, and everything they started, at the end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for the server, workers and CLIs: a private home, this checkout's code."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Flow runs chdir into the checkout (prefect.yaml's pull step): make them import it too.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p
        ),
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def wait_until(check, timeout: float, what: str, every: float = 1.0):
    """Poll ``check`` until it returns something truthy; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.read().strip() == b"true"
    except OSError:
        return False


@contextmanager
def started(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group for the block; SIGINT it (and its children) after.

    SIGINT, not SIGTERM: a Prefect worker shuts down on SIGINT at once but keeps running for
    tens of seconds after SIGTERM.
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
                if proc.poll() is not None:
                    break
                os.killpg(proc.pid, sig)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue


@contextmanager
def local_server(home: Path, port: int | None = None) -> Iterator[str]:
    """``prefect server start`` in ``home``; yields its API URL once /api/health answers."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    cmd = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--analytics-off",
    ]
    # The UI asks its server where the API is; by default it says port 4200, whatever the port.
    env = {**child_env(home), "PREFECT_UI_API_URL": url}
    with started(cmd, env, home / "server.log") as proc:
        wait_until(
            lambda: proc.poll() is not None or _healthy(url),
            180,
            f"the Prefect server on port {port}",
        )
        if proc.poll() is not None:
            raise RuntimeError(
                f"prefect server exited with {proc.returncode}; see {home / 'server.log'}"
            )
        yield url


def run_check(check, prefix: str) -> int:
    """Run ``check(tmp)`` in a fresh temporary folder; on failure print the tail of every log it
    left there (server, worker) before re-raising."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        try:
            check(Path(tmp))
        except Exception:
            for log in sorted(Path(tmp).rglob("*.log")):
                print(f"--- {log.name} (tail)", file=sys.stderr)
                print(log.read_text(errors="replace")[-6000:], file=sys.stderr)
            raise
    return 0
