"""Request cache: key properties (hypothesis), atomic sharded writes under concurrency."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from synthvg.llm.cache import RequestCache, request_key
from synthvg.llm.messages import image_part, text_part

params = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2, allow_nan=False),
        "max_tokens": st.integers(1, 4096),
        "top_p": st.floats(0, 1, allow_nan=False),
        "seed": st.integers(0, 2**31),
        "logprobs": st.booleans(),
        "response_format": st.sampled_from(
            [{"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "A"}}]
        ),
    },
)


def body(text: str, image: bytes, model: str, extra: dict[str, Any]) -> dict[str, Any]:
    content = [text_part(text), image_part(image)]
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50), st.binary(max_size=64), st.sampled_from(["a", "b"]), params)
def test_equal_requests_have_equal_keys(text, image, model, extra):
    one = body(text, image, model, extra)
    reordered = dict(reversed(list(body(text, image, model, dict(extra)).items())))
    assert request_key(one) == request_key(reordered)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50), st.binary(max_size=64), params, params)
def test_any_parameter_change_changes_the_key(text, image, extra, other):
    assume(json.dumps(extra, sort_keys=True) != json.dumps(other, sort_keys=True))
    assert request_key(body(text, image, "m", extra)) != request_key(body(text, image, "m", other))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=50), st.binary(max_size=64), st.binary(max_size=64), params)
def test_any_image_change_changes_the_key(text, image, other, extra):
    assume(image != other)
    assert request_key(body(text, image, "m", extra)) != request_key(body(text, other, "m", extra))
    raw = {"model": "m", "messages": [], "image": image}
    assert request_key(raw) != request_key({**raw, "image": other})  # raw bytes are hashed too


def test_entries_are_sharded_and_hold_no_headers(tmp_path):
    cache = RequestCache(tmp_path)
    key = request_key({"model": "m", "messages": []})
    cache.put(key, {"choices": [], "usage": {"prompt_tokens": 3}}, cost_usd=0.5, source="online")
    path = tmp_path / key[:2] / f"{key}.json"
    entry = json.loads(path.read_text())
    assert set(entry) == {"key", "source", "created_at", "cost_usd", "usage", "response"}
    assert cache.get(key)["usage"] == {"prompt_tokens": 3} and key in cache


def test_unreadable_entries_are_misses(tmp_path):
    cache = RequestCache(tmp_path)
    key = request_key({"model": "m"})
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text('{"key": "trunc')
    assert cache.get(key) is None
    cache.path(key).write_text(json.dumps({"key": "another", "response": {}}))
    assert cache.get(key) is None


def test_many_concurrent_writers_never_tear_a_file(tmp_path):
    cache = RequestCache(tmp_path)
    keys = [request_key({"i": i}) for i in range(20)]

    def write(n: int) -> None:
        key = keys[n % len(keys)]
        cache.put(key, {"choices": [{"n": n}], "pad": "x" * 5000}, cost_usd=0, source="online")
        assert cache.get(key) is not None  # any reader sees a whole entry

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(400)))

    async def from_asyncio() -> None:
        await asyncio.gather(*(asyncio.to_thread(write, n) for n in range(100)))

    asyncio.run(from_asyncio())
    assert all(cache.get(k) is not None for k in keys)
    assert not list(tmp_path.rglob("*.tmp"))
