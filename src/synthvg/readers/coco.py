"""COCO ``instances_*.json`` (2014 and 2017 names): crowd RLE and polygons.

:class:`CocoFile` indexes any COCO-format file (COCO, LVIS, RefCOCO's ``instances.json``) in one
streaming pass: image entries by id and annotation byte spans by image, as numpy arrays, so
COCO train2017 (860K annotations) costs tens of MB instead of several GB. A shard re-reads only
its images' records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import numpy as np

from synthvg.readers.base import (
    ImageSeeds,
    ProblemLog,
    SourceError,
    SourceImage,
    SourceRegion,
    as_flag,
    is_box,
    xywh_box,
)
from synthvg.readers.jsonscan import JsonFault, SpanFile, scan
from synthvg.schemas import RegionSource

_SPLIT_IN_URL = re.compile(r"/((?:train|val|test)20\d\d)/")
_SPLIT_IN_NAME = re.compile(r"COCO_((?:train|val|test)20\d\d)_")
REQUIRED = ("images", "annotations", "categories")


def coco_split(image: dict) -> str | None:
    """The true split of a COCO image: from ``coco_url`` first (folders can lie), then the name."""
    for text, pattern in (
        (image.get("coco_url") or "", _SPLIT_IN_URL),
        (image.get("file_name") or "", _SPLIT_IN_NAME),
    ):
        m = pattern.search(text) if isinstance(text, str) else None
        if m:
            return m.group(1)
    return None


def _size_ok(entry: dict) -> bool:
    return all(
        isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) and entry[k] > 0
        for k in ("width", "height")
    )


def coco_image_problem(entry: dict) -> str | None:
    """Why a COCO image entry is unusable (None: it is fine)."""
    if not isinstance(entry.get("file_name"), str) or not _size_ok(entry):
        return "image entry needs int id, file_name, width, height > 0"
    return None


class CocoFile:
    """Image entries and annotation spans of one COCO-format file, indexed by image id."""

    def __init__(self, path: str, image_problem: Callable[[dict], str | None] = coco_image_problem):
        self.path = path
        self.problems = ProblemLog(path)
        try:
            self._file = SpanFile(path)
        except FileNotFoundError:
            raise SourceError(f"annotation file not found: {path}") from None
        except OSError as e:
            raise SourceError(f"cannot read annotation file {path}: {e}") from None
        self.images: dict[int, tuple[int, int]] = {}
        ann_image: list[int] = []
        ann_id: list[int] = []
        spans: list[tuple[int, int]] = []
        categories_span = None
        seen: set[str] = set()
        try:
            for item in scan(path, descend=("images", "annotations")):
                if item.key is not None:
                    seen.add(item.key)
                if item.key in ("images", "annotations") and item.index < 0:
                    raise SourceError(
                        f"{path}: '{item.key}' must be a list (is this a COCO-format file?)"
                    )
                if item.key == "images":
                    self._add_image(item, image_problem)
                elif item.key == "annotations":
                    v = item.value
                    if not isinstance(v, dict) or not isinstance(v.get("image_id"), int):
                        self.problems.add(
                            "bad_annotation",
                            f"annotation without int image_id: {str(v)[:120]}",
                            f"annotations[{item.index}]",
                        )
                        continue
                    ann_image.append(v["image_id"])
                    ann_id.append(v["id"] if isinstance(v.get("id"), int) else -1)
                    spans.append((item.start, item.end))
                elif item.key == "categories":
                    categories_span = (item.start, item.end)
        except SourceError:
            raise
        except JsonFault as fault:
            missing = [k for k in REQUIRED if k not in seen]
            if missing:
                raise SourceError(
                    f"{path}: not valid JSON (truncated or corrupt?): {fault}; never reached {missing}"
                ) from None
            self.problems.add(
                "truncated_file",
                f"not valid JSON from here on (truncated or corrupt?): {fault}; the records before it are kept",
            )
        except (ValueError, OSError) as e:
            raise SourceError(f"{path}: not a COCO-format file: {e}") from None
        for key in REQUIRED:
            if key not in seen:
                raise SourceError(
                    f"{path}: missing or non-list '{key}' (is this a COCO-format file?)"
                )
        self.categories = self._load_categories(categories_span)
        self._index_annotations(
            np.array(ann_image, np.int64),
            np.array(ann_id, np.int64),
            np.array(spans, np.int64).reshape(-1, 2),
        )
        self.problems.finish()

    def _add_image(self, item, image_problem) -> None:
        v = item.value
        record = f"images[{item.index}]"
        if not isinstance(v, dict) or not isinstance(v.get("id"), int):
            self.problems.add(
                "bad_image_entry", f"image entry without int id: {str(v)[:160]}", record
            )
            return
        reason = image_problem(v)
        if reason:
            self.problems.add(
                "bad_image_entry", f"{reason}: {str(v)[:160]}", f"image={v['id']}", v["id"]
            )
        elif v["id"] in self.images:
            self.problems.add(
                "duplicate_image",
                f"image id {v['id']} listed twice; first kept",
                f"image={v['id']}",
                v["id"],
            )
        else:
            self.images[v["id"]] = (item.start, item.end)

    def _load_categories(self, span) -> dict[int, dict]:
        raw = self._file.load(*span) if span else []
        if not isinstance(raw, list):
            raise SourceError(f"{self.path}: 'categories' must be a list")
        out = {}
        for c in raw:
            if (
                isinstance(c, dict)
                and isinstance(c.get("id"), int)
                and isinstance(c.get("name"), str)
            ):
                out[c["id"]] = c
            else:
                self.problems.add(
                    "bad_category",
                    f"category entry without int id / str name: {str(c)[:120]}",
                    "categories",
                )
        return out

    def _index_annotations(self, image: np.ndarray, ann_id: np.ndarray, spans: np.ndarray) -> None:
        known = np.isin(image, np.fromiter(self.images, np.int64, len(self.images)))
        for k in np.flatnonzero(~known):
            self.problems.add(
                "unknown_image",
                f"annotation {ann_id[k]} points at image {image[k]}, which the file does not list",
                f"annotation={ann_id[k]}",
                int(image[k]),
            )
        image, ann_id, spans = image[known], ann_id[known], spans[known]
        order = np.lexsort((ann_id, image))  # by image, then annotation id: a stable region order
        self._image, self._ids, self._spans = image[order], ann_id[order], spans[order]
        self._id_order = np.argsort(self._ids, kind="stable")

    def has(self, image_id: int) -> bool:
        return image_id in self.images

    def image(self, image_id: int) -> dict:
        return self._file.load(*self.images[image_id])

    def annotations(self, image_id: int, problems: ProblemLog) -> Iterator[dict]:
        """The image's annotation records; one that does not parse is a problem, not the
        end of the image's other annotations."""
        lo, hi = np.searchsorted(self._image, [image_id, image_id + 1])
        for k in range(lo, hi):
            start, end = self._spans[k]
            try:
                ann = self._file.load(int(start), int(end))
            except ValueError as e:
                problems.add(
                    "bad_annotation",
                    f"annotation record does not parse: {e}; annotation skipped",
                    f"annotation={self._ids[k]}",
                    image_id,
                )
                continue
            yield ann

    def annotation(self, ann_id: int) -> dict | None:
        """The annotation with this id (COCO ids are unique per file), or None."""
        k = np.searchsorted(self._ids, ann_id, sorter=self._id_order)
        if k < len(self._ids) and self._ids[self._id_order[k]] == ann_id:
            return self._file.load(*(int(v) for v in self._spans[self._id_order[k]]))
        return None

    def category_name(self, category_id: object) -> str | None:
        c = self.categories.get(category_id) if isinstance(category_id, int) else None
        return c["name"] if c else None


def coco_region(
    ann: dict,
    index: CocoFile,
    dataset: str,
    problems: ProblemLog,
    native_id: int,
    *,
    link: bool = True,
) -> SourceRegion | None:
    """One COCO-format annotation as a region (None, with a problem, when it is unusable)."""
    record = f"annotation={ann.get('id')}"
    if not is_box(ann.get("bbox")):
        problems.add(
            "bad_annotation",
            f"bbox must be 4 finite numbers, got {str(ann.get('bbox'))[:80]}; annotation skipped",
            record,
            native_id,
        )
        return None
    crowd = as_flag(ann.get("iscrowd", 0))
    if crowd is None:
        problems.add(
            "bad_annotation",
            f"iscrowd must be 0 or 1, got {str(ann.get('iscrowd'))[:40]!r}; annotation skipped",
            record,
            native_id,
        )
        return None
    category = index.category_name(ann.get("category_id"))
    if category is None:
        problems.add(
            "unknown_category",
            f"category_id {ann.get('category_id')!r} is not in the file's categories; region kept without a label",
            record,
            native_id,
        )
    return SourceRegion(
        key=str(ann.get("id")),
        box=xywh_box(*ann["bbox"]),
        source=RegionSource(dataset=dataset, annotation_id=str(ann.get("id")), category=category),
        label=category,
        segmentation=ann.get("segmentation"),
        is_crowd=crowd,
        link=f"coco-ann:{ann['id']}" if link and isinstance(ann.get("id"), int) else None,
    )


def coco_source_image(
    dataset: str,
    native_id: int,
    entry: dict,
    *,
    file_name: str | None = None,
    split: str | None = None,
) -> SourceImage:
    """The image record every COCO-format reader (COCO, LVIS, RefCOCO) gives for ``entry``."""
    return SourceImage(
        dataset=dataset,
        native_id=native_id,
        width=entry["width"],
        height=entry["height"],
        file_name=file_name or entry["file_name"],
        url=entry.get("coco_url"),
        split=split or coco_split(entry),
        coco_id=native_id,
    )


class CocoFileReader:
    """A reader whose images are those its COCO-format file (``self.index``) lists."""

    index: CocoFile

    def native_ids(self) -> list[int]:
        return list(self.index.images)

    def has(self, native_id) -> bool:
        return self.index.has(native_id)


class CocoReader(CocoFileReader):
    """COCO instances: regions are the annotations; ids are COCO image ids."""

    dataset = "coco"
    family = "coco"
    model = "coco"
    native_type = int

    def __init__(self, annotations: str, images: str | None = None, split: str | None = None):
        self.index = CocoFile(annotations)
        self.images = images
        self.split = split
        self.problems = self.index.problems

    def read(self, native_id: int) -> ImageSeeds:
        entry = self.index.image(native_id)
        seeds = ImageSeeds(coco_source_image(self.dataset, native_id, entry, split=self.split))
        problems = ProblemLog(self.index.path)
        for ann in self.index.annotations(native_id, problems):
            region = coco_region(ann, self.index, self.dataset, problems, native_id)
            if region is not None:
                seeds.regions.append(region)
        seeds.problems = problems
        return seeds
