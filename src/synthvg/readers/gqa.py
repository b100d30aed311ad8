"""GQA scene graphs (``train_sceneGraphs.json``, ``val_sceneGraphs.json``).

The top level maps image ids (strings; they are VG image ids) to scene graphs: ``width``,
``height`` and ``objects`` keyed by object id, each with ``name``, an xywh box, ``attributes``
and ``relations``: a **list** of ``{name, object}`` edges from this object to another. GQA's
object ids come from VG but its boxes and names are cleaned, so GQA regions are matched to
VG's by geometry, never by id. The split is the file name's prefix (``train``, ``val``). GQA files do not know COCO ids:
VG's ``image_data.json`` (from a VG source, or the GQA source's own ``image_data``) maps them.
"""

from __future__ import annotations

import os

from synthvg.readers.base import (
    ImageSeeds,
    ProblemLog,
    SourceImage,
    SourceRegion,
    SourceRelation,
    are_numbers,
    xywh_box,
)
from synthvg.readers.jsonscan import Item
from synthvg.readers.perimage import NoId, PerImageFile
from synthvg.readers.vg import VgReader
from synthvg.schemas import RegionSource


def _image_id(item: Item) -> str | NoId:
    if isinstance(item.value, dict) and item.key is not None:
        return item.key
    return NoId("a scene graph must be a JSON object")


def _split(path: str) -> str | None:
    name = os.path.basename(path)
    return name.split("_", 1)[0] if "_sceneGraphs" in name else None


class GqaReader:
    dataset = "gqa"
    family = "vg"
    native_type = str

    def __init__(
        self,
        annotations: str,
        images: str | None = None,
        release: str = "gqa-1.1",
        image_data: str | None = None,
    ):
        self.file = PerImageFile(annotations, _image_id, shape="object")
        self.images = images
        self.model = release
        self.split = _split(annotations)
        self.problems = self.file.problems
        # GQA files do not know COCO ids; VG's image_data.json maps them (for a build without VG).
        self.coco_ids = VgReader({"image_data": image_data}).coco_ids if image_data else {}

    def native_ids(self) -> list[int | str]:
        return list(self.file.spans)

    def has(self, native_id) -> bool:
        return native_id in self.file

    def read(self, native_id: str) -> ImageSeeds:
        graph = self.file.load(native_id)
        problems = ProblemLog(self.file.path)
        record = f"image={native_id}"
        sizes = [graph.get(k) for k in ("width", "height")]
        if not all(isinstance(v, int) and v > 0 for v in sizes):
            problems.add(
                "bad_image_entry",
                f"scene graph needs int width and height > 0, got {sizes}",
                record,
                native_id,
            )
            sizes = [None, None]
        seeds = ImageSeeds(
            SourceImage(
                dataset=self.dataset,
                native_id=native_id,
                width=sizes[0],
                height=sizes[1],
                file_name=f"{native_id}.jpg",
                split=self.split,
                gqa_id=native_id,
                vg_id=int(native_id) if native_id.isdigit() else None,
            ),
            problems=problems,
        )
        objects = graph.get("objects")
        if not isinstance(objects, dict):
            problems.add(
                "bad_record",
                f"'objects' must be a JSON object keyed by object id, got {type(objects).__name__}",
                record,
                native_id,
            )
            return seeds
        for oid, o in objects.items():
            region = self._region(native_id, oid, o, problems)
            if region is not None:
                seeds.regions.append(region)
        known = {r.source.annotation_id for r in seeds.regions}
        for region in seeds.regions:
            seeds.relations.extend(
                self._relations(
                    native_id,
                    region.source.annotation_id,
                    objects[region.source.annotation_id],
                    known,
                    problems,
                )
            )
        return seeds

    def _region(self, image: str, oid: str, o: object, problems: ProblemLog) -> SourceRegion | None:
        record = f"image={image}/object={oid}"
        if (
            not isinstance(o, dict)
            or not isinstance(o.get("name"), str)
            or not are_numbers(o.get("x"), o.get("y"), o.get("w"), o.get("h"))
        ):
            problems.add(
                "bad_annotation",
                f"object needs a text 'name' and finite numeric x, y, w, h: {str(o)[:160]}",
                record,
                image,
            )
            return None
        attributes = o.get("attributes", [])
        if not isinstance(attributes, list):
            problems.add(
                "bad_annotation",
                f"'attributes' must be a list, got {type(attributes).__name__}; ignored",
                record,
                image,
            )
            attributes = []
        return SourceRegion(
            key=oid,
            box=xywh_box(o["x"], o["y"], o["w"], o["h"]),
            source=RegionSource(dataset=self.dataset, annotation_id=oid, category=o["name"]),
            label=o["name"],
            attributes=list(
                dict.fromkeys(a.strip() for a in attributes if isinstance(a, str) and a.strip())
            ),
        )

    def _relations(
        self, image: str, oid: str, o: dict, known: set[str], problems: ProblemLog
    ) -> list[SourceRelation]:
        record = f"image={image}/object={oid}"
        relations = o.get("relations", [])
        if not isinstance(relations, list):
            problems.add(
                "bad_relation",
                f"'relations' must be a list of {{name, object}}, got {type(relations).__name__}; skipped",
                record,
                image,
            )
            return []
        out = []
        for k, rel in enumerate(relations):
            if (
                not isinstance(rel, dict)
                or not isinstance(rel.get("name"), str)
                or not isinstance(rel.get("object"), str)
            ):
                problems.add(
                    "bad_relation",
                    f"relation must be {{name: str, object: str}}, got {str(rel)[:120]}",
                    f"{record}/relations[{k}]",
                    image,
                )
            elif rel["object"] not in known:
                problems.add(
                    "unknown_object",
                    f"relation {rel['name']!r} points at object {rel['object']}, which the image does not have; skipped",
                    f"{record}/relations[{k}]",
                    image,
                )
            else:
                out.append(
                    SourceRelation(
                        key=f"{oid}/{k}", subject=oid, object=rel["object"], predicate=rel["name"]
                    )
                )
        return out
