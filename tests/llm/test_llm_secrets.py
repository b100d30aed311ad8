"""The API key is sent to the server and appears nowhere else."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from synthvg.llm import (
    BatchJob,
    LLMClient,
    LLMConfig,
    LLMConfigError,
    LLMError,
    RedactingFilter,
    install_log_redaction,
    redact,
)
from synthvg.llm.testing import Reply


class Answer(BaseModel):
    value: int


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_key_never_leaks(make_client, server, cache_dir, api_key, caplog):
    caplog.set_level(logging.DEBUG)  # every library's records, the SDK's and httpx's included
    client = make_client(
        max_retries=1, budget_usd=10.0, prices={"fake-model": {"input": 1.0, "output": 1.0}}
    )
    outputs: list[str] = [repr(client), repr(client.config), str(client.config.model_dump())]
    errors: list[BaseException] = []

    result = client.run_sync(client.complete(user("ok"), logprobs=True))
    outputs.append(result.model_dump_json())
    server.enqueue(Reply.rate_limited(0.01), Reply(content="{broken"), Reply(content="{broken"))
    try:
        client.run_sync(client.complete_structured(user("two"), Answer))
    except LLMError as exc:
        errors.append(exc)
    server.enqueue(Reply.bad_request(f"Incorrect API key provided: {api_key}.", status=401))
    server.enqueue(*[Reply.server_error()] * 2)
    results = client.map_complete([{"messages": user("3")}, {"messages": user("4")}])
    errors += [r for r in results if isinstance(r, BaseException)]
    assert client.fatal is not None  # the 401 stops the client for the rest of this run
    client.begin_run("next-run")
    BatchJob(client, poll_seconds=0.01).run([{"messages": user("5")}])

    assert len(errors) == 3, errors
    assert all(r.headers.get("authorization") == f"Bearer {api_key}" for r in server.requests)
    for exc in errors:
        outputs += [str(exc), repr(exc), repr(exc.args)]
    outputs += [r.getMessage() for r in caplog.records]
    outputs += [p.read_text() for p in Path(cache_dir).rglob("*") if p.is_file()]
    assert any("[REDACTED]" in text for text in outputs)  # the 401 echo was scrubbed
    leaks = [text[:200] for text in outputs if api_key in text]
    assert not leaks


def test_logged_secrets_are_scrubbed(make_client, api_key, caplog):
    make_client()  # registers the key
    caplog.set_level(logging.INFO)
    logging.getLogger("synthvg.llm").info("key is %s", api_key)
    assert caplog.records[-1].getMessage() == "key is [REDACTED]"
    assert redact(f"x{api_key}y") == "x[REDACTED]y"

    other = logging.getLogger("some.library")
    install_log_redaction()  # handler-level: covers records of every logger
    try:
        other.warning("oops %s", api_key)
    finally:
        for handler in logging.getLogger().handlers:
            for f in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
                handler.removeFilter(f)
    assert caplog.records[-1].getMessage() == "oops [REDACTED]"


def test_missing_key_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("SYNTHVG_NO_SUCH_KEY", raising=False)
    config = LLMConfig(model="m", api_key_env="SYNTHVG_NO_SUCH_KEY")
    client = LLMClient(config)  # no key needed until a request is sent (dry runs)
    with client, pytest.raises(LLMConfigError, match="api.openai.com.*SYNTHVG_NO_SUCH_KEY"):
        client.run_sync(client.complete([{"role": "user", "content": "x"}]))


def test_key_from_a_prefect_secret_block(monkeypatch, server, api_key):
    from prefect.blocks import system

    loaded: list[str] = []

    class FakeSecret:
        def get(self) -> str:
            return api_key

    def load(name: str, **kwargs: Any) -> FakeSecret:
        loaded.append(name)
        return FakeSecret()

    monkeypatch.setattr(system.Secret, "load", load)
    monkeypatch.delenv("SYNTHVG_TEST_LLM_KEY")
    config = LLMConfig(model="m", base_url=server.base_url, api_key_secret_block="openai-key")
    with LLMClient(config) as client:
        client.run_sync(client.complete(user("x")))
    assert loaded == ["openai-key"]
    assert server.authorizations == [f"Bearer {api_key}"]
    assert api_key not in repr(config) and api_key not in repr(client)
