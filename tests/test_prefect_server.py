"""The Prefect API a flow uses: a running long-lived server is reused, and the temporary one a
build starts dies with the build, even when the build is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import synthvg
from synthvg.prefect_server import LOCAL_URL_ENV, running_local_server

SRC = str(Path(synthvg.__file__).resolve().parents[1])
# Holds the API open and prints its URL, how long getting it took and whether it said it had to
# start a temporary server.
HOLD = """
import os, sys, time
from synthvg.prefect_server import flow_api
t0 = time.perf_counter()
said = []
with flow_api(announce=said.append) as url:
    print(url, round(time.perf_counter() - t0, 2), int(any("temporary" in m for m in said)), flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _env(tmp_path: Path, local_url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {
        **env,
        "PYTHONPATH": SRC,
        "PREFECT_HOME": str(tmp_path / "home"),
        LOCAL_URL_ENV: local_url,
    }


def _hold(
    tmp_path: Path, local_url: str, seconds: float
) -> tuple[subprocess.Popen, str, float, bool]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(seconds)],
        env=_env(tmp_path, local_url),
        stdout=subprocess.PIPE,
        text=True,
    )
    url, took, announced = proc.stdout.readline().split()
    return proc, url, float(took), announced == "1"


def _gone(url: str, within: float = 15.0) -> bool:
    os.environ[LOCAL_URL_ENV] = url
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if running_local_server() is None:
                return True
            time.sleep(0.2)
        return False
    finally:
        os.environ[LOCAL_URL_ENV] = ""


@pytest.mark.slow
def test_running_server_is_reused_and_a_killed_owner_takes_its_server_along(tmp_path):
    owner, url, _, announced = _hold(tmp_path, "", 300)  # no local server: a temporary one
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        assert announced  # the slow case is worth a line to the user
        os.environ[LOCAL_URL_ENV] = url
        assert running_local_server() == url
        os.environ[LOCAL_URL_ENV] = ""
        # a second command finds it running: it uses it (a server of its own would have its own port)
        (tmp_path / "second").mkdir()
        reuser, reused, _, announced = _hold(tmp_path / "second", url, 0)
        assert reuser.wait(timeout=60) == 0
        assert reused == url and not announced
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert _gone(url), "the temporary server outlived the process that started it"


@pytest.mark.parametrize(
    ("local_url", "names"),
    [
        ("", "(PREFECT_API_URL)"),
        ("http://127.0.0.1:4299/api", "or one on http://127.0.0.1:4299/api"),
    ],
)
def test_a_command_says_in_one_line_that_it_starts_a_temporary_server(
    monkeypatch, local_url, names
):
    import synthvg.prefect_server as ps

    class Stop(Exception):
        pass

    class NoServer:
        def start(self):
            raise Stop

    monkeypatch.setenv(LOCAL_URL_ENV, local_url)
    monkeypatch.setattr(ps, "configured_api_url", lambda: None)
    monkeypatch.setattr(ps, "running_local_server", lambda: None)
    monkeypatch.setattr(ps, "_owned_server_class", lambda: NoServer)
    said: list[str] = []
    with pytest.raises(Stop), ps.flow_api(announce=said.append):
        pass
    assert len(said) == 1 and "\n" not in said[0]
    assert "starting a temporary one" in said[0] and names in said[0]
    assert "prefect server start --host 127.0.0.1 --port 4200" in said[0]
