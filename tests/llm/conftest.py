"""Fixtures for the LLM client tests: a fake OpenAI server, a throw-away key, client factory.

The key is generated per test, so no key-like literal lives in the repository.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from synthvg.llm import LLMClient, LLMConfig  # noqa: E402
from synthvg.llm.testing import FakeOpenAIServer  # noqa: E402

KEY_ENV = "SYNTHVG_TEST_LLM_KEY"


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = "sk-test-" + "".join(
        secrets.choice(string.ascii_letters + string.digits) for _ in range(40)
    )
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache" / "llm"


MakeClient = Callable[..., LLMClient]


@pytest.fixture
def make_client(api_key: str, server: FakeOpenAIServer, cache_dir: Path) -> Iterator[MakeClient]:
    """``make_client(cache=True, **config_overrides)``; clients are closed after the test."""
    clients: list[LLMClient] = []

    def make(*, cache: bool = True, **overrides: Any) -> LLMClient:
        fields: dict[str, Any] = {
            "model": "fake-model",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "timeout_seconds": 5.0,
            "backoff_base_seconds": 0.01,
            "backoff_max_seconds": 2.0,
            **overrides,
        }
        client = LLMClient(LLMConfig(**fields), cache_dir=cache_dir if cache else None)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
