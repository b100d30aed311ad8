"""Shared fixtures. Prefect gets a throw-away home and one test server per session."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="synthvg-prefect-home-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Never reuse a developer's long-lived server on 127.0.0.1:4200 (synthvg.prefect_server).
os.environ.setdefault("SYNTHVG_PREFECT_LOCAL_URL", "")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A Prefect API for the whole session (starting one costs ~12 s); yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def edit_build(tmp_path_factory):
    """One build with the scripted SG-EDIT editor (rule teacher, 4 images, 2 shards), shared by
    the edit and export tests: (config, run, the chat requests it made). A rerun is checked to
    be up to date and answered from the cache."""
    from edit_scripts import KEY, KEY_ENV, edit_config, scripted_editor

    from synthvg.llm.testing import FakeOpenAIServer
    from synthvg.pipeline import run_build, up_to_date

    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor) as server:
        cfg = edit_config(tmp_path_factory.mktemp("edit") / "root", server)
        run = run_build(cfg)
        requests = server.chat_requests
        rerun = run_build(cfg)
        assert up_to_date(rerun) and len(server.chat_requests) == len(requests)
        yield cfg, run, requests
    mp.undo()
