"""Structured output: strict schema, repair request, prompt fallback, clear failures."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from pydantic import BaseModel, Field

from synthvg.llm import StructuredOutputError
from synthvg.llm.structured import parse_content, strict_json_schema
from synthvg.llm.testing import Reply


class Box(BaseModel):
    x: float
    y: float


class Scene(BaseModel):
    objects: list[str]
    count: int = Field(ge=0)
    box: Box | None = None
    note: str = "none"


GOOD = json.dumps({"objects": ["cup", "table"], "count": 2, "box": {"x": 1, "y": 2}, "note": "ok"})


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_strict_schema_closes_every_object_and_requires_every_field():
    schema = strict_json_schema(Scene)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["objects", "count", "box", "note"]
    box = schema["$defs"]["Box"]
    assert box["additionalProperties"] is False and box["required"] == ["x", "y"]
    assert "default" not in schema["properties"]["box"]  # None defaults are dropped


def test_parse_content_accepts_fences_and_reports_problems():
    assert parse_content(f"```json\n{GOOD}\n```", Scene)[0]["count"] == 2
    assert "not valid JSON" in parse_content('{"objects": [', Scene)[1]
    assert "expected a JSON object" in parse_content("[1]", None)[1]
    assert "count" in parse_content('{"objects": [], "count": -1}', Scene)[1]


def test_structured_answer_is_validated(make_client, server):
    server.responder = lambda req: GOOD
    client = make_client()
    scene = client.run_sync(client.complete_structured(user("describe"), Scene))
    assert scene == Scene.model_validate_json(GOOD)
    fmt = server.chat_requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Scene"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == strict_json_schema(Scene)


def test_raw_response_format_gives_parsed_dict(make_client, server):
    client = make_client()
    result = client.run_sync(client.complete(user("hi"), response_format={"type": "json_object"}))
    assert result.parsed == {"echo": "hi"}
    assert server.chat_requests[0]["response_format"] == {"type": "json_object"}


def test_invalid_json_gets_one_repair_request(make_client, server):
    server.responder = lambda req: GOOD
    server.enqueue(Reply(content="Sure! Here it is: {objects: cup}"))
    client = make_client()
    result = client.run_sync(client.complete(user("describe"), response_format=Scene))
    assert result.parsed["count"] == 2 and result.attempts == 2
    repair = server.chat_requests[1]["messages"]
    assert repair[:1] == user("describe")
    assert repair[1] == {"role": "assistant", "content": "Sure! Here it is: {objects: cup}"}
    assert repair[2]["role"] == "user" and "not valid JSON" in repair[2]["content"]
    # Both answers are cached: a rerun is free and gives the same repaired answer.
    again = client.run_sync(client.complete(user("describe"), response_format=Scene))
    assert again.cached and again.parsed == result.parsed and len(server.chat_requests) == 2


def test_schema_violation_is_repaired(make_client, server):
    server.responder = lambda req: GOOD
    server.enqueue(Reply(content='{"objects": "cup", "count": -3}'))
    client = make_client()
    scene = client.run_sync(client.complete_structured(user("describe"), Scene))
    assert scene.count == 2
    assert "does not match the schema" in server.chat_requests[1]["messages"][-1]["content"]


def test_truncated_json_fails_clearly_after_the_repair(make_client, server):
    cut = Reply(content='{"objects": ["cup", "tab', finish_reason="length")
    server.enqueue(cut, cut)
    client = make_client()
    with pytest.raises(StructuredOutputError) as info:
        client.run_sync(client.complete_structured(user("describe"), Scene, max_tokens=8))
    message = str(info.value)
    assert "Scene" in message and "not valid JSON" in message and "raise max_tokens" in message
    assert info.value.finish_reason == "length" and info.value.content.startswith('{"objects"')
    assert len(server.chat_requests) == 2


def test_rejected_response_format_falls_back_to_the_prompt(make_client, server, caplog):
    server.responder = lambda req: f"```json\n{GOOD}\n```"
    server.enqueue(Reply.reject_response_format())
    client = make_client()
    with caplog.at_level(logging.WARNING, logger="synthvg.llm"):
        scene = client.run_sync(client.complete_structured(user("describe"), Scene))
    assert scene.objects == ["cup", "table"]
    assert "rejected response_format" in caplog.text
    rejected, fallback = server.chat_requests
    assert "response_format" in rejected and "response_format" not in fallback
    assert fallback["messages"][0]["role"] == "system"
    assert '"objects"' in fallback["messages"][0]["content"]  # the schema is in the prompt
    # The client remembers: the next structured request goes straight to prompt mode.
    client.run_sync(client.complete_structured(user("another"), Scene))
    assert len(server.chat_requests) == 3 and "response_format" not in server.chat_requests[2]


def test_prompt_mode_by_config_extends_an_existing_system_message(make_client, server):
    server.responder = lambda req: GOOD
    client = make_client(structured_output="prompt")
    messages = [{"role": "system", "content": "You label scenes."}, *user("describe")]
    client.run_sync(client.complete_structured(messages, Scene))
    sent = server.chat_requests[0]
    assert "response_format" not in sent and len(sent["messages"]) == 2
    assert sent["messages"][0]["content"].startswith("You label scenes.\n\nReply with one JSON")
