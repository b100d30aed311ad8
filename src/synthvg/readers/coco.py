"""COCO ``instances_*.json`` (2014 and 2017 names): an index of images and their annotations.

The index is parsed once per worker process (cached by file identity), validated record by
record: a malformed file raises :class:`SourceError`; a malformed image or annotation entry
becomes a :class:`Problem` and is skipped, so one bad record never sinks the file.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field

_SPLIT_IN_URL = re.compile(r"/((?:train|val|test)20\d\d)/")
_SPLIT_IN_NAME = re.compile(r"COCO_((?:train|val|test)20\d\d)_")


class SourceError(ValueError):
    """An annotation file that cannot be used at all (missing, truncated, wrong shape)."""


@dataclass(frozen=True)
class Problem:
    kind: str
    reason: str
    image_id: int | None = None


@dataclass
class CocoIndex:
    path: str
    images: dict[int, dict]
    annotations: dict[int, list[dict]]
    categories: dict[int, str]
    problems: list[Problem] = field(default_factory=list)


def coco_split(image: dict) -> str | None:
    """The true split of a COCO image: from ``coco_url`` first (folders can lie), then the name."""
    for text, pattern in ((image.get("coco_url") or "", _SPLIT_IN_URL), (image.get("file_name") or "", _SPLIT_IN_NAME)):
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_coco(data: object, path: str) -> CocoIndex:
    if not isinstance(data, dict):
        raise SourceError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SourceError(f"{path}: missing or non-list '{key}' (is this a COCO instances file?)")
    problems: list[Problem] = []
    categories = {}
    for c in data["categories"]:
        if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str):
            categories[c["id"]] = c["name"]
        else:
            problems.append(Problem("bad_category", f"category entry without int id / str name: {str(c)[:120]}"))
    images: dict[int, dict] = {}
    for img in data["images"]:
        ok = (
            isinstance(img, dict)
            and isinstance(img.get("id"), int)
            and isinstance(img.get("file_name"), str)
            and isinstance(img.get("width"), int)
            and isinstance(img.get("height"), int)
            and img["width"] > 0
            and img["height"] > 0
        )
        if not ok:
            problems.append(Problem("bad_image_entry", f"image entry needs int id, file_name, width, height > 0: {str(img)[:160]}"))
            continue
        if img["id"] in images:
            problems.append(Problem("duplicate_image", f"image id {img['id']} listed twice; first kept", img["id"]))
            continue
        images[img["id"]] = img
    annotations: dict[int, list[dict]] = {i: [] for i in images}
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int):
            problems.append(Problem("bad_annotation", f"annotation without int image_id: {str(ann)[:160]}"))
            continue
        if ann["image_id"] not in images:
            problems.append(
                Problem("unknown_image", f"annotation {ann.get('id')} points at image {ann['image_id']}, which the file does not list", ann["image_id"])
            )
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            problems.append(Problem("bad_annotation", f"annotation {ann.get('id')}: bbox must be 4 numbers, got {str(bbox)[:80]}", ann["image_id"]))
            continue
        annotations[ann["image_id"]].append(ann)
    for anns in annotations.values():
        anns.sort(key=lambda a: (a.get("id") is None, a.get("id", 0)))
    return CocoIndex(path=path, images=images, annotations=annotations, categories=categories, problems=problems)


_CACHE: dict[tuple[str, int, int], CocoIndex] = {}
_LOCK = threading.Lock()


def load_coco(path: str) -> CocoIndex:
    """Parse (once per process and file version) and validate a COCO instances file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"annotation file not found: {path}") from None
    key = (path, st.st_size, st.st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SourceError(f"{path}: not valid JSON (truncated or corrupt?): {e}") from None
        except OSError as e:
            raise SourceError(f"{path}: cannot read: {e}") from None
        index = parse_coco(data, path)
        for old in [k for k in _CACHE if k[0] == path]:
            del _CACHE[old]  # one version of each file is all a build uses
        _CACHE[key] = index
        return index
