"""ADE20K (2021 release, ``ADE20K_2021_17_01``): per-image ``<name>.json`` and ``<name>_seg.png``.

Every ``*.json`` under the root is one image, ``ade20k:<name>``. In ``_seg.png`` the class of
a pixel is ``R / 10 * 256 + G`` (0: unlabelled) and instances differ by ``B``; each (class,
B) pair is one instance, whose mask becomes the region. The JSON's whole objects
(``parts.part_level == 0``; parts live in ``_parts_N.png`` and are not read) give names and
attributes: an instance takes the object of its class (the class code is ``name_ndx + 1``)
whose ``polygon`` overlaps it most. An instance no object claims keeps no label, an object
no instance shows is reported; both land in ``errors``. ``name`` is WordNet-style
(``car, auto, automobile``): the label is its first term, the rest help matching.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from synthvg import masks
from synthvg.readers.base import (
    ImageSeeds,
    ProblemLog,
    SourceError,
    SourceImage,
    SourceRegion,
    are_numbers,
)
from synthvg.schemas import RLE, RegionSource


def decode_seg(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class map, instance map) of an ADE20K ``_seg.png``."""
    r, g, b = (rgb[..., k].astype(np.int32) for k in range(3))
    return (r // 10) * 256 + g, b


def _polygon_rle(obj: dict, height: int, width: int) -> RLE | None:
    poly = obj.get("polygon")
    xs, ys = (poly.get("x"), poly.get("y")) if isinstance(poly, dict) else (None, None)
    if (
        not isinstance(xs, list)
        or not isinstance(ys, list)
        or len(xs) != len(ys)
        or len(xs) < 3
        or not are_numbers(*xs, *ys)
    ):
        return None
    flat = [float(v) for xy in zip(xs, ys, strict=True) for v in xy]
    return masks.from_coco(mask_utils.merge(mask_utils.frPyObjects([flat], height, width)))


def _strings(v: object) -> list[str]:
    values = [v] if isinstance(v, str) else v if isinstance(v, list) else []
    return [s.strip() for s in values if isinstance(s, str) and s.strip()]


class Ade20kReader:
    dataset = "ade20k"
    family = "ade20k"
    model = "ade20k"
    native_type = str

    def __init__(self, root: str, images: str | None = None):
        self.root = root
        self.images = images
        self.problems = ProblemLog(root)
        self.paths: dict[str, str] = {}
        if not os.path.isdir(root):
            raise SourceError(f"ADE20K folder not found: {root}")
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".json"):
                    name = f[: -len(".json")]
                    if name in self.paths:
                        self.problems.add(
                            "duplicate_image",
                            f"{name}.json exists twice; the first is kept",
                            os.path.join(folder, f),
                        )
                    else:
                        self.paths[name] = os.path.join(folder, f)
        if not self.paths:
            raise SourceError(f"no ADE20K per-image JSON files under {root}")
        self.problems.finish()

    def native_ids(self) -> list[str]:
        return list(self.paths)

    def has(self, native_id) -> bool:
        return native_id in self.paths

    def read(self, native_id: str) -> ImageSeeds:
        path = self.paths[native_id]
        problems = ProblemLog(path)
        folder = os.path.dirname(path)
        seeds = ImageSeeds(
            SourceImage(self.dataset, native_id, None, None, None), problems=problems
        )
        try:
            with open(path, "rb") as f:
                ann = json.load(f)["annotation"]
            objects, imsize, filename = ann["object"], ann["imsize"], ann["filename"]
            height, width = int(imsize[0]), int(imsize[1])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            problems.add(
                "bad_record",
                f"unusable ADE20K JSON ({type(e).__name__}: {e}); image has no regions",
            )
            return seeds
        rel = os.path.relpath(os.path.join(folder, filename), self.root)
        split = next((s for s in ("training", "validation") if s in rel.split(os.sep)), None)
        seeds.image = SourceImage(
            self.dataset,
            native_id,
            width,
            height,
            rel,
            url=os.path.join(folder, filename),
            split=split,
        )
        seg_path = path[: -len(".json")] + "_seg.png"
        try:
            with Image.open(seg_path) as im:
                im.load()
                classes, instances = decode_seg(np.asarray(im.convert("RGB")))
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            Image.DecompressionBombError,
            MemoryError,
        ) as e:
            problems.add("bad_segmentation", f"cannot read {seg_path}: {e}; image has no regions")
            return seeds
        if classes.shape != (height, width):
            problems.add(
                "png_size_mismatch",
                f"{seg_path} is {classes.shape[1]}x{classes.shape[0]}, the JSON says {width}x{height}; image has no regions",
            )
            return seeds
        whole = [
            o
            for o in objects
            if isinstance(o, dict)
            and isinstance(o.get("parts"), dict)
            and o["parts"].get("part_level") == 0
        ]
        seeds.regions = self._regions(classes, instances, whole, problems, height, width)
        return seeds

    def _regions(
        self, classes, instances, objects: list[dict], problems: ProblemLog, height: int, width: int
    ) -> list[SourceRegion]:
        labelled = classes > 0
        codes = np.where(labelled, classes * 256 + instances, 0)
        rles = masks.label_map_to_rles(codes)
        rles.pop(0, None)
        unused = dict(enumerate(objects))
        out = []
        for code in sorted(rles):
            cls, rle = code // 256, rles[code]
            candidates = [k for k, o in unused.items() if o.get("name_ndx") == cls - 1]
            best = self._best(rle, [unused[k] for k in candidates], height, width)
            if best is None:
                problems.add(
                    "unknown_category",
                    f"instance (class {cls}, B={code % 256}) matches no object of the JSON; region kept without a label",
                )
                out.append(((1, code), self._region(code, rle, None)))
            else:
                k = candidates[best]
                out.append(((0, k), self._region(code, rle, unused.pop(k))))
        for o in unused.values():
            problems.add(
                "unmatched_object",
                f"object {o.get('id')} ({o.get('raw_name')}) has no instance in the _seg.png; skipped",
            )
        return [
            region for _, region in sorted(out, key=lambda x: x[0])
        ]  # in the JSON's object order

    @staticmethod
    def _best(rle: RLE, candidates: list[dict], height: int, width: int) -> int | None:
        if len(candidates) <= 1:
            return 0 if candidates else None
        polys = [
            _polygon_rle(o, height, width) or masks.encode(np.zeros((height, width), bool))
            for o in candidates
        ]
        return int(np.argmax(masks.iou_matrix([rle], polys)[0]))

    def _region(self, code: int, rle: RLE, obj: dict | None) -> SourceRegion:
        terms = (
            [t.strip() for t in obj["name"].split(",")]
            if obj and isinstance(obj.get("name"), str)
            else []
        )
        label = terms[0] if terms else None
        ann_id = str(obj.get("id")) if obj else f"seg:{code // 256}/{code % 256}"
        b = masks.bbox(rle)
        return SourceRegion(
            key=ann_id,
            box=(b.x1, b.y1, b.x2, b.y2),
            source=RegionSource(
                dataset=self.dataset,
                annotation_id=ann_id,
                category=obj.get("name") if obj else None,
            ),
            label=label,
            segmentation=rle,
            attributes=_strings(obj.get("attributes")) if obj else [],
            names=tuple(terms[1:]) + tuple(_strings(obj.get("raw_name")) if obj else ()),
        )
