"""PSG (OpenPSG ``psg.json``) with the COCO panoptic PNGs.

``data`` holds one record per image: ``coco_image_id`` (a string) is its COCO id,
``segments_info[i]`` and ``annotations[i]`` describe segment *i* (``bbox`` is **xyxy**;
``category_id`` a 0-based index into ``thing_classes + stuff_classes``), ``relations`` are
``[subject_index, object_index, predicate_index]`` with the predicate 0-based into
``predicate_classes``. A segment's mask is ``rgb2id(png) == segments_info[i].id`` in the PNG
at ``pan_seg_file_name`` (relative to the COCO root, like ``file_name``). The split in
``sources.split`` is PSG's: ``test`` for ``test_image_ids``, else ``train``; the image's split
is its COCO folder (``train2017``).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from synthvg import masks
from synthvg.readers.base import (
    ImageSeeds,
    ProblemLog,
    SourceError,
    SourceImage,
    SourceRegion,
    SourceRelation,
    as_flag,
    is_box,
)
from synthvg.readers.jsonscan import Item
from synthvg.readers.perimage import NoId, PerImageFile
from synthvg.schemas import RLE, RegionSource

_KEPT = ("thing_classes", "stuff_classes", "predicate_classes", "test_image_ids")


def _coco_image_id(item: Item) -> int | NoId:
    v = item.value
    cid = v.get("coco_image_id") if isinstance(v, dict) else None
    if isinstance(cid, int) and not isinstance(cid, bool):
        return cid
    if isinstance(cid, str) and cid.isdigit():
        return int(cid)
    return NoId("record without a numeric 'coco_image_id'")


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic segment ids: R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _string_list(kept: dict, key: str, path: str) -> list[str]:
    values = kept.get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SourceError(f"{path}: '{key}' must be a list of names (is this OpenPSG's psg.json?)")
    return values


class PsgReader:
    dataset = "psg"
    family = "coco"
    model = "psg"
    native_type = int

    def __init__(self, annotations: str, panoptic: str | None = None, images: str | None = None):
        if panoptic is None and images is None:
            raise SourceError(
                f"{annotations}: PSG masks are in the COCO panoptic PNGs: give the folder holding panoptic_*2017/ (`panoptic:` or --images)"
            )
        self.file = PerImageFile(
            annotations, _coco_image_id, shape="object", descend=("data",), keep=_KEPT
        )
        if "data" not in self.file.seen:
            raise SourceError(f"{annotations}: no 'data' list (is this OpenPSG's psg.json?)")
        kept = self.file.kept
        self.classes = _string_list(kept, "thing_classes", annotations) + _string_list(
            kept, "stuff_classes", annotations
        )
        self.predicates = _string_list(kept, "predicate_classes", annotations)
        self.test_ids = {str(i) for i in kept.get("test_image_ids") or ()}
        self.panoptic: str = panoptic or images or ""  # one of them is given (checked above)
        self.images = images
        self.problems = self.file.problems

    def native_ids(self) -> list[int | str]:
        return list(self.file.spans)

    def has(self, native_id) -> bool:
        return native_id in self.file

    def read(self, native_id: int) -> ImageSeeds:
        rec = self.file.load(native_id)
        problems = ProblemLog(self.file.path)
        record = f"coco_image_id={native_id}"
        size = (rec.get("width"), rec.get("height"))
        if not all(isinstance(v, int) and v > 0 for v in size):
            problems.add(
                "bad_image_entry",
                f"record needs int width and height > 0, got {size}",
                record,
                native_id,
            )
            size = (None, None)
        file_name = rec.get("file_name") if isinstance(rec.get("file_name"), str) else None
        split = "test" if str(rec.get("image_id")) in self.test_ids else "train"
        seeds = ImageSeeds(
            SourceImage(
                dataset=self.dataset,
                native_id=native_id,
                width=size[0],
                height=size[1],
                file_name=file_name,
                split=file_name.split("/", 1)[0] if file_name and "/" in file_name else None,
                coco_id=native_id,
                psg_id=native_id,
            ),
            problems=problems,
        )
        segments, anns = rec.get("segments_info"), rec.get("annotations")
        if not isinstance(segments, list) or not isinstance(anns, list):
            problems.add(
                "bad_record",
                "'segments_info' and 'annotations' must be lists; image has no regions",
                record,
                native_id,
            )
            return seeds
        if len(segments) != len(anns):
            problems.add(
                "bad_record",
                f"{len(segments)} segments_info but {len(anns)} annotations; only pairs with both are read",
                record,
                native_id,
            )
        rles = self._masks(rec, size, problems, record, native_id) if size[0] else None
        for i, (seg, ann) in enumerate(zip(segments, anns, strict=False)):
            region = self._region(i, seg, ann, rles, split, problems, record, native_id)
            if region is not None:
                seeds.regions.append(region)
        seeds.relations = self._relations(
            rec.get("relations"), {r.key for r in seeds.regions}, problems, record, native_id
        )
        return seeds

    def _masks(
        self, rec: dict, size, problems: ProblemLog, record: str, native_id: int
    ) -> dict[int, RLE] | None:
        name = rec.get("pan_seg_file_name")
        if not isinstance(name, str):
            problems.add(
                "bad_segmentation",
                "no 'pan_seg_file_name': regions keep their boxes only",
                record,
                native_id,
            )
            return None
        path = os.path.join(self.panoptic, name)
        try:
            with Image.open(path) as im:
                im.load()
                rgb = np.asarray(im.convert("RGB"))
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            Image.DecompressionBombError,
            MemoryError,
        ) as e:
            problems.add(
                "bad_segmentation",
                f"cannot read panoptic PNG {path}: {e}; regions keep their boxes only",
                record,
                native_id,
            )
            return None
        if rgb.shape[1] != size[0] or rgb.shape[0] != size[1]:
            problems.add(
                "png_size_mismatch",
                f"panoptic PNG {path} is {rgb.shape[1]}x{rgb.shape[0]}, the record says {size[0]}x{size[1]}; regions keep their boxes only",
                record,
                native_id,
            )
            return None
        return masks.label_map_to_rles(rgb2id(rgb))

    def _region(
        self, i, seg, ann, rles, split, problems: ProblemLog, record: str, native_id: int
    ) -> SourceRegion | None:
        where = f"{record}/segment[{i}]"
        if (
            not isinstance(seg, dict)
            or not isinstance(seg.get("id"), int)
            or not isinstance(ann, dict)
            or not is_box(ann.get("bbox"))
        ):
            problems.add(
                "bad_annotation",
                f"segment needs an int id and its annotation a 4-number xyxy bbox: {str(seg)[:80]} / {str(ann)[:80]}",
                where,
                native_id,
            )
            return None
        cat = seg.get("category_id", ann.get("category_id"))
        label = self.classes[cat] if isinstance(cat, int) and 0 <= cat < len(self.classes) else None
        if label is None:
            problems.add(
                "unknown_category",
                f"category index {cat!r} is outside the file's {len(self.classes)} classes; region kept without a label",
                where,
                native_id,
            )
        mask = None
        if rles is not None:
            mask = rles.get(seg["id"])
            if mask is None:
                problems.add(
                    "bad_segmentation",
                    f"segment id {seg['id']} does not occur in the panoptic PNG; region keeps its box only",
                    where,
                    native_id,
                )
        crowd = as_flag(seg.get("iscrowd", 0))
        if crowd is None:
            problems.add(
                "bad_annotation",
                f"iscrowd must be 0 or 1, got {str(seg.get('iscrowd'))[:40]!r}; segment skipped",
                where,
                native_id,
            )
            return None
        x1, y1, x2, y2 = (float(v) for v in ann["bbox"])
        return SourceRegion(
            key=str(i),
            box=(x1, y1, x2, y2),
            source=RegionSource(
                dataset=self.dataset, annotation_id=str(seg["id"]), category=label, split=split
            ),
            label=label,
            segmentation=mask,
            is_crowd=crowd,
        )

    def _relations(
        self, relations, known: set[str], problems: ProblemLog, record: str, native_id: int
    ) -> list[SourceRelation]:
        if not isinstance(relations, list):
            problems.add(
                "bad_relation",
                f"'relations' must be a list, got {type(relations).__name__}",
                record,
                native_id,
            )
            return []
        out = []
        for k, rel in enumerate(relations):
            where = f"{record}/relations[{k}]"
            if not (
                isinstance(rel, list)
                and len(rel) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in rel)
            ):
                problems.add(
                    "bad_relation",
                    f"relation must be [subject, object, predicate] indices, got {str(rel)[:80]}",
                    where,
                    native_id,
                )
                continue
            s, o, p = rel
            if not 0 <= p < len(self.predicates):
                problems.add(
                    "unknown_predicate",
                    f"predicate index {p} is outside the file's {len(self.predicates)} predicate_classes; skipped",
                    where,
                    native_id,
                )
            elif str(s) not in known or str(o) not in known:
                problems.add(
                    "unknown_object",
                    f"relation [{s}, {o}, {p}] points at a segment the image does not have (or that was skipped); skipped",
                    where,
                    native_id,
                )
            else:
                out.append(
                    SourceRelation(
                        key=str(k), subject=str(s), object=str(o), predicate=self.predicates[p]
                    )
                )
        return out
