"""Cache of LLM answers, one file per request, in a folder or under any fsspec URL.

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
import posixpath
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

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
    """``<root>/<key[:2]>/<key>.json``; the two-hex shard keeps folders small.

    ``root`` is a folder or any fsspec URL (``s3://bucket/ds/cache/llm``), so every worker of
    a cluster, and every later build, shares one cache. Local entries are written through a
    temp file and ``os.replace``; object stores replace whole objects atomically on their own.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.url = os.fspath(root)
        self.fs, path = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root: Path | str = Path(path) if self.is_local else path

    def path(self, key: str) -> Path | str:
        return self._join(key[:2], f"{key}.json")

    def _join(self, *parts: str) -> Path | str:
        if isinstance(self.root, Path):
            return self.root.joinpath(*parts)
        return posixpath.join(self.root, *parts)

    def __contains__(self, key: str) -> bool:
        path = self.path(key)
        return path.is_file() if isinstance(path, Path) else self.fs.exists(path)

    def _read(self, path: Path | str) -> str:
        if isinstance(path, Path):
            return path.read_text(encoding="utf-8")
        return self.fs.cat_file(path).decode("utf-8")

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            entry = json.loads(self._read(path))
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
        self._write(self.path(key), entry)

    def discard(self, key: str) -> None:
        """Forget an entry that turned out not to be a usable answer."""
        path = self.path(key)
        if isinstance(path, Path):
            path.unlink(missing_ok=True)
        else:
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                pass

    # ---- small JSON files beside the entries (batch job state) ------------------------------

    def read_json(self, rel: str) -> Any:
        """The JSON file ``rel`` under the root; None when missing (ValueError when unreadable)."""
        try:
            return json.loads(self._read(self._join(rel)))
        except FileNotFoundError:
            return None

    def write_json(self, rel: str, data: Any) -> None:
        self._write(self._join(rel), data)

    def _write(self, path: Path | str, data: Any) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, data)
        else:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            self.fs.pipe(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


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
