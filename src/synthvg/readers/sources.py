"""Open the configured sources once per process and answer: which images, who annotates them.

Indexing a full-size source takes a streaming pass over its files, so readers are cached by
their config and the size and mtime of their files: planning and every shard a worker runs
share one index. A source that cannot be read at all is kept as a failure with its message.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from synthvg.readers.base import Problem, Reader
from synthvg.readers.base import SourceError as SourceError
from synthvg.readers.config import SeedSource, VgSource
from synthvg.readers.identity import Identity

#: The order in which sources describe an image: the first with an image file gives it, the
#: first with a mask gives a merged region its geometry, the first with a name its label.
PRIORITY = ("coco", "lvis", "refcoco", "refcoco+", "refcocog", "psg", "vg", "gqa", "ade20k")


def vg_files(source: VgSource) -> dict[str, str]:
    return source.files()


def main_path(source: SeedSource) -> str:
    """The file (or folder) that names a source in messages."""
    return source.main_path()


def annotation_files(source: SeedSource) -> list[str]:
    """The single files whose content decides what a source says."""
    return source.annotation_files()


def annotation_folders(source: SeedSource) -> list[str]:
    """Folders of per-image annotation files (fingerprinted by their listing, not their bytes)."""
    return source.annotation_folders()


def open_reader(source: SeedSource) -> Reader[Any]:
    """A new reader over ``source`` (raises :class:`SourceError` when it cannot be read)."""
    return source.open_reader()


def _stat(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_size, st.st_mtime_ns)


def _cache_key(source: SeedSource) -> tuple:
    return (
        source.model_dump_json(),
        tuple(_stat(p) for p in annotation_files(source) + annotation_folders(source)),
    )


@dataclass
class Opened:
    """One configured source: its reader, or why it could not be read."""

    config: SeedSource
    path: str
    reader: Reader[Any] | None = None
    failure: str | None = None

    @property
    def opened_reader(self) -> Reader[Any]:
        """The reader of a source that opened (those :attr:`SeedSources.readers` lists)."""
        if self.reader is None:
            raise SourceError(self.failure or f"{self.path}: source was not opened")
        return self.reader


@dataclass
class SeedSources:
    """Every configured source, opened, with the build's image identity."""

    sources: list[Opened]
    identity: Identity
    problems: list[tuple[Opened, Problem]] = field(default_factory=list)

    @property
    def readers(self) -> list[Opened]:
        return [s for s in self.sources if s.reader is not None]

    def image_datasets(self) -> dict[str, set[str]]:
        """Every image id of the build, with the datasets that annotate it."""
        out: dict[str, set[str]] = {}
        for r in (s.reader for s in self.sources if s.reader is not None):
            for native in r.native_ids():
                out.setdefault(self.identity.image_id(r.family, native), set()).add(r.dataset)
        return out

    def views(self, image_id: str) -> list[tuple[Opened, int | str]]:
        """The sources that describe ``image_id`` and its native id in each, in priority order."""
        out: list[tuple[int, Opened, int | str]] = []
        for s in self.sources:
            if (r := s.reader) is None:
                continue
            native = self.identity.native(r.family, image_id)
            if native is not None:
                native = r.native_type(native)
                if r.has(native):
                    out.append((PRIORITY.index(r.dataset), s, native))
        return [(s, native) for _, s, native in sorted(out, key=lambda v: v[0])]


_CACHE: OrderedDict[tuple, Opened] = OrderedDict()
_LOCK = threading.Lock()
_CACHE_SIZE = 16


def _open(source: SeedSource) -> Opened:
    key = _cache_key(source)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        opened = Opened(source, main_path(source))
        try:
            opened.reader = open_reader(source)
        except SourceError as e:
            opened.failure = str(e)
        _CACHE[key] = opened
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return opened


def open_sources(sources: list[SeedSource]) -> SeedSources:
    """Open (or reuse) every source and work out the image identity between them."""
    opened = [_open(s) for s in sources]
    identity = Identity(getattr(s.reader, "coco_ids", {}) for s in opened if s.reader is not None)
    problems = [(s, p) for s in opened if s.reader is not None for p in s.reader.problems]
    vg = next((s for s in opened if s.reader is not None and s.reader.family == "vg"), None)
    problems += [(vg, p) for p in identity.problems] if vg else []
    return SeedSources(opened, identity, problems)
