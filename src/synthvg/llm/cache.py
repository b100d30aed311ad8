"""On-disk cache of LLM answers, one file per request.

The key is the sha256 of the canonical JSON of the whole request body (model, messages with
their image data, every generation parameter), so an identical request is never paid for
twice and a changed one never reuses a stale answer. There is no global version stamp: changing
one parameter of one request voids only that request's entry. Entries are written atomically
(temp file + ``os.replace``) so concurrent writers, threads or processes, never leave a torn
file. An entry holds the response JSON and its usage, never the key or request headers.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from synthvg.llm.redact import log


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def canonical_json(body: Mapping[str, Any]) -> str:
    """Key order and whitespace independent; raw bytes are base64-tagged."""
    return json.dumps(_jsonable(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(body: Mapping[str, Any]) -> str:
    """sha256 hex of a request body: ``{"model", "messages", **parameters}``."""
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


class RequestCache:
    """``<root>/<key[:2]>/<key>.json``; the two-hex shard keeps folders small."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable LLM cache entry %s: %s", path, exc)
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or "response" not in entry:
            log.warning("ignoring malformed LLM cache entry %s", path)
            return None
        return entry

    def put(
        self,
        key: str,
        response: Mapping[str, Any],
        *,
        cost_usd: float,
        source: str,
    ) -> None:
        entry = {
            "key": key,
            "source": source,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cost_usd": cost_usd,
            "usage": response.get("usage"),
            "response": response,
        }
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, entry)


    def discard(self, key: str) -> None:
        """Forget an entry that turned out not to be a usable answer."""
        self.path(key).unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers see the old file or the new one, never a partial write."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem[:16]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
