"""Walk a huge JSON file record by record, with each record's byte span, in bounded memory.

Release files such as VG ``relationships.json`` (hundreds of MB) must not be parsed whole.
The scanner reads a few MB at a time and hands each element of the top-level list (or of the
lists under chosen top-level keys) to the C JSON decoder, yielding it with its byte span.
Readers keep only ids and spans, and re-read one record by its span when a shard needs it.

Text is decoded as latin-1 while scanning, so that string positions are byte offsets: ids and
numbers come out exact, strings may not (a UTF-8 name reads as mojibake). Whatever text a
reader keeps must be re-read with :class:`SpanFile`, which decodes UTF-8 properly.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

_WS = re.compile(r"[ \t\n\r]*")
_STRUCTURE = re.compile(r"[,\]}]")
#: Decoder errors this close to the end of the buffer may only mean the record goes on.
_TAIL = 32
_DECODER = json.JSONDecoder()
CHUNK = 1 << 22
#: One record larger than this is refused: no release file has one, a broken file might.
MAX_RECORD = 1 << 30


class JsonFault(ValueError):
    """The file stops being valid JSON at ``offset``; records before it were read."""

    def __init__(self, reason: str, offset: int):
        super().__init__(f"{reason} at byte {offset}")
        self.offset = offset


@dataclass(frozen=True)
class Item:
    """One record: the top-level ``key`` it sits under (None for a top-level list), its
    ``index`` within that list (-1 for a whole value), its byte span and its value."""

    key: str | None
    index: int
    start: int
    end: int
    value: Any  # decoded JSON


class _Buffer:
    def __init__(self, f, chunk: int):
        self.f = f
        self.chunk = chunk
        self.text = ""
        self.base = 0
        self.pos = 0
        self.eof = False

    def more(self, greedy: bool = False) -> bool:
        """Append the next block; ``greedy`` doubles the pending part (one big record costs O(n))."""
        if self.eof:
            return False
        pending = len(self.text) - self.pos
        if pending > MAX_RECORD:
            raise JsonFault(f"a record longer than {MAX_RECORD} bytes", self.base + self.pos)
        data = self.f.read(max(self.chunk, pending) if greedy else self.chunk)
        if not data:
            self.eof = True
            return False
        self.text = self.text[self.pos :] + data.decode("latin-1")
        self.base += self.pos
        self.pos = 0
        return True

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def peek(self) -> str:
        while True:
            self.pos = _WS.match(self.text, self.pos).end()  # type: ignore[union-attr]  # matches ''
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def expect(self, chars: str, where: str) -> str:
        c = self.peek()
        if not c:
            raise JsonFault(f"file ends inside {where} (truncated)", self.offset)
        if c not in chars:
            raise JsonFault(
                f"expected {' or '.join(repr(x) for x in chars)} in {where}, found {c!r}",
                self.offset,
            )
        self.pos += 1
        return c

    def value(self, where: str) -> tuple[Any, int, int]:
        if not self.peek():
            raise JsonFault(f"file ends inside {where} (truncated)", self.offset)
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                unterminated = e.msg.startswith("Unterminated string")
                if (unterminated or e.pos >= len(self.text) - _TAIL) and self.more(greedy=True):
                    continue
                # At the end of the file: cut off (nothing structural follows) or malformed.
                if unterminated or not _STRUCTURE.search(self.text, e.pos):
                    raise JsonFault(
                        f"file ends inside {where} (truncated)", self.base + e.pos
                    ) from None
                raise JsonFault(f"{e.msg} in {where}", self.base + e.pos) from None
            # A number near the end of the buffer may go on in the next block ("12" + ".5").
            if (
                isinstance(obj, int | float)
                and len(self.text) - end < _TAIL
                and self.more(greedy=True)
            ):
                continue
            start = self.offset
            self.pos = end
            return obj, start, self.base + end


def scan(
    path: str | os.PathLike, descend: Collection[str] = (), chunk: int = CHUNK
) -> Iterator[Item]:
    """Yield the records of ``path``: each element of a top-level list, or for a top-level
    object each ``key: value`` (keys in ``descend`` whose value is a list: each element).

    Raises :class:`JsonFault` where the file stops being valid JSON (after yielding every
    record before that point), ``ValueError`` when the top level is neither list nor object.
    """
    with open(path, "rb") as f:
        buf = _Buffer(f, chunk)
        first = buf.peek()
        if first == "[":
            buf.pos += 1
            yield from _elements(buf, None)
        elif first == "{":
            buf.pos += 1
            yield from _members(buf, descend)
        elif not first:
            raise ValueError("the file is empty")
        else:
            raise ValueError(f"top level must be a JSON list or object, found {first!r}")
        if buf.peek():
            raise JsonFault("extra data after the top-level value", buf.offset)


def _elements(buf: _Buffer, key: str | None) -> Iterator[Item]:
    where = f"the list under {key!r}" if key else "the top-level list"
    if buf.peek() == "]":
        buf.pos += 1
        return
    index = 0
    while True:
        value, start, end = buf.value(where)
        yield Item(key, index, start, end, value)
        index += 1
        if buf.expect(",]", where) == "]":
            return


def _members(buf: _Buffer, descend: Collection[str]) -> Iterator[Item]:
    where = "the top-level object"
    if buf.peek() == "}":
        buf.pos += 1
        return
    while True:
        if buf.peek() != '"':
            buf.expect('"', where)  # raises: a key must be a string
        key, _, _ = buf.value(where)
        key = str(key).encode("latin-1").decode("utf-8", errors="replace")
        buf.expect(":", where)
        if key in descend and buf.peek() == "[":
            buf.pos += 1
            yield from _elements(buf, key)
        else:
            value, start, end = buf.value(f"the value of {key!r}")
            yield Item(key, -1, start, end, value)
        if buf.expect(",}", where) == "}":
            return


class SpanFile:
    """A file whose records are re-read by byte span (``pread``: safe from several threads)."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)

    def load(self, start: int, end: int) -> Any:
        """The record at ``[start, end)``; raises ``ValueError`` if it does not parse.

        What the scan accepted reads back the same: orjson refuses ``NaN``, ``Infinity`` and
        integers beyond 64 bits, which Python's decoder (the scan's) takes, so those records
        are decoded by Python's; readers then judge each value.
        """
        raw = os.pread(self._fd, end - start, start)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return json.loads(raw)

    def __del__(self, _close=os.close) -> None:  # bound now: at exit ``os`` may be gone
        fd = getattr(self, "_fd", None)
        if fd is not None:
            _close(fd)
