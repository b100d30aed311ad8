"""Index of a release file that holds one record per image (VG lists, GQA and PSG maps).

One streaming pass records each image's byte span, so a 700 MB VG ``relationships.json``
costs a dict of ~108K spans; a shard re-reads only its images' records.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Literal

from synthvg.readers.base import ProblemLog, SourceError
from synthvg.readers.jsonscan import Item, JsonFault, SpanFile, scan


class NoId(str):
    """Why a record has no usable image id (the record is reported and skipped)."""


class PerImageFile:
    """Byte spans of one file's per-image records, by image id.

    ``shape`` is the top level: a ``list`` of records (VG) or an ``object`` (GQA: keyed by
    image id; PSG: records in the lists under ``descend``, class lists under ``keep``, kept
    whole). ``image_id`` maps a scanned record to its image id, or to a :class:`NoId`.
    """

    def __init__(
        self,
        path: str,
        image_id: Callable[[Item], int | str | NoId],
        *,
        shape: Literal["list", "object"],
        descend: Collection[str] = (),
        keep: Collection[str] = (),
    ):
        self.path = path
        self.problems = ProblemLog(path)
        try:
            self.file = SpanFile(path)
        except FileNotFoundError:
            raise SourceError(f"annotation file not found: {path}") from None
        except OSError as e:
            raise SourceError(f"cannot read annotation file {path}: {e}") from None
        self.spans: dict[int | str, tuple[int, int]] = {}
        self.kept: dict[str, Any] = {}
        #: Top-level keys met (object files).
        self.seen: set[str] = set()
        try:
            for item in scan(path, descend=descend):
                self._add(item, image_id, shape, descend, keep)
        except SourceError:
            raise
        except JsonFault as fault:
            if not self.spans:
                raise SourceError(
                    f"{path}: not valid JSON (truncated or corrupt?): {fault}"
                ) from None
            self.problems.add(
                "truncated_file",
                f"not valid JSON from here on (truncated or corrupt?): {fault}; the {len(self.spans)} image records before it are kept",
            )
        except ValueError as e:
            raise SourceError(f"{path}: {e}") from None
        self.problems.finish()

    def _add(self, item: Item, image_id, shape, descend, keep) -> None:
        if (item.key is None) != (shape == "list"):
            raise SourceError(
                f"{self.path}: top level must be a JSON {shape} (is this the right file?)"
            )
        if item.key is not None:
            self.seen.add(item.key)
        if item.key is not None and item.key in keep:
            self.kept[item.key] = self.file.load(item.start, item.end)
            return
        if descend:
            if item.key not in descend:
                return
            if item.index < 0:
                raise SourceError(f"{self.path}: '{item.key}' must be a list of per-image records")
        key = image_id(item)
        record = f"{item.key or ''}[{item.index}]" if item.index >= 0 else str(item.key)
        if isinstance(key, NoId):
            self.problems.add("bad_record", f"{key}: {str(item.value)[:160]}", record)
        elif key in self.spans:
            self.problems.add(
                "duplicate_image", f"image {key} has two records; the first is kept", record, key
            )
        else:
            self.spans[key] = (item.start, item.end)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self.spans

    def load(self, image_id: int | str) -> Any:
        return self.file.load(*self.spans[image_id])
