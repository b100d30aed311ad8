"""Which Prefect API a command that runs a flow talks to.

In order: the API the user configured (``PREFECT_API_URL``, in the environment or the Prefect
profile); else a long-lived local server already running at ``SYNTHVG_PREFECT_LOCAL_URL``
(default ``http://127.0.0.1:4200/api``, what ``prefect server start`` serves), so repeated
builds skip the several seconds a server takes to start; else a temporary server owned by this
process. Prefect's own temporary server outlives a build killed with SIGKILL (only an atexit
handler stops it); this one is started so that the kernel stops it when its parent dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from synthvg import prefect_env

LOCAL_URL_ENV = "SYNTHVG_PREFECT_LOCAL_URL"
DEFAULT_LOCAL_URL = "http://127.0.0.1:4200/api"

# Run in the child before it becomes the server: ask for SIGTERM when the parent dies
# (PR_SET_PDEATHSIG = 1 survives exec), and give up if the parent is already gone.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; parent = int(sys.argv[1]); "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
    "os.getppid() == parent or sys.exit(1); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def configured_api_url() -> str | None:
    """The API the user named in the environment or the active Prefect profile."""
    prefect_env.configure()
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def running_local_server() -> str | None:
    """The long-lived local server's API URL when one answers its health check (0.5 s at most)."""
    url = os.environ.get(LOCAL_URL_ENV, DEFAULT_LOCAL_URL).rstrip("/")
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=0.5) as response:
            return url if response.status == 200 else None
    except (OSError, ValueError):
        return None


def _owned_server_class():
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class OwnedServer(SubprocessASGIServer):
        """Prefect's temporary server, started the way Prefect starts it, but tied to this process."""

        _instances: dict[int | None, Any] = {}  # not shared with Prefect's own instances

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect

            uvicorn = [
                "-m",
                "uvicorn",
                "--app-dir",
                str(prefect.__module_path__.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ]
            env = {
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            }
            return subprocess.Popen(
                [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *uvicorn], env=env
            )

    return OwnedServer


#: What a command says when it has to start a temporary server (to stderr, once).
TEMPORARY_SERVER_HINT = (
    "no Prefect server found ({where}): starting a temporary one, "
    "which takes 10-25 s; `prefect server start --host 127.0.0.1 --port 4200 --analytics-off` "
    "once keeps one for every later command (and its UI)"
)


@contextmanager
def flow_api(announce: Callable[[str], object] | None = None) -> Iterator[str]:
    """Point Prefect at the API a flow should use for the duration; yields its URL. ``announce``
    is told when a temporary server has to start (the one slow case, worth a line to the user)."""
    configured = configured_api_url()
    if configured:
        yield configured
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = running_local_server()
    if url:
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
        return
    if announce is not None:
        local = os.environ.get(LOCAL_URL_ENV, DEFAULT_LOCAL_URL)
        where = f"PREFECT_API_URL, or one on {local}" if local else "PREFECT_API_URL"
        announce(TEMPORARY_SERVER_HINT.format(where=where))
    server = _owned_server_class()()
    server.start()
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            finally:
                _send_pending()
    finally:
        server.stop()


def _send_pending(timeout: float = 10.0) -> None:
    """Send the logs and events still queued before the server they go to stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout)
