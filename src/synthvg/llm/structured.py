"""Structured output: pydantic schema in, validated JSON out.

OpenAI's strict ``json_schema`` mode needs every object closed (``additionalProperties:
false``) with all properties required; pydantic's schema is adapted here. Endpoints without
structured outputs get the schema in the prompt instead, and any answer is parsed leniently
(code fences stripped) before validation.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

SCHEMA_INSTRUCTION = (
    "Reply with one JSON object and nothing else (no prose, no code fences). "
    "It must validate against this JSON Schema:\n{schema}"
)
REPAIR_INSTRUCTION = (
    "That reply is not usable: {error}. Reply again with only the complete JSON object, "
    "valid against the schema."
)


def _strict(node: Any, root: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_strict(item, root) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node and len(node) > 1:  # strict mode forbids siblings next to $ref: inline
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
    out = {k: _strict(v, root) for k, v in node.items() if not (k == "default" and v is None)}
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
        out["required"] = list(out.get("properties", {}))
    if isinstance(out.get("allOf"), list) and len(out["allOf"]) == 1:
        out.update(out.pop("allOf")[0])
    return out


def strict_json_schema(schema: type[BaseModel]) -> dict[str, Any]:
    raw = schema.model_json_schema()
    return _strict(raw, raw)


def json_schema_format(schema: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` value for a pydantic model."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.__name__,
            "schema": strict_json_schema(schema),
            "strict": True,
        },
    }


def schema_of(response_format: type[BaseModel] | Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON schema inside a response_format (None for plain ``json_object``)."""
    if isinstance(response_format, type):
        return strict_json_schema(response_format)
    spec = response_format.get("json_schema")
    return dict(spec.get("schema", {})) if isinstance(spec, Mapping) else None


def with_schema_instruction(
    messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Prompt-mode messages: the schema goes into the (first) system message."""
    text = SCHEMA_INSTRUCTION.format(
        schema=json.dumps(schema, separators=(",", ":")) if schema else '{"type":"object"}'
    )
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system" and isinstance(out[0].get("content"), str):
        out[0]["content"] = f"{out[0]['content']}\n\n{text}"
    else:
        out.insert(0, {"role": "system", "content": text})
    return out


def _strip_fences(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rstrip().removesuffix("```")
    return text.strip()


def parse_content(
    content: str, schema: type[BaseModel] | None
) -> tuple[dict[str, Any] | None, str | None]:
    """``(object, None)`` when usable, else ``(None, a short reason for the repair prompt)``."""
    try:
        obj = json.loads(_strip_fences(content))
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    if schema is not None:
        try:
            schema.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                for e in exc.errors(include_url=False)[:10]
            )
            return None, f"does not match the schema ({problems})"
    return obj, None


def repair_turns(content: str, error: str) -> list[dict[str, Any]]:
    return [
        {"role": "assistant", "content": content},
        {"role": "user", "content": REPAIR_INSTRUCTION.format(error=error)},
    ]
