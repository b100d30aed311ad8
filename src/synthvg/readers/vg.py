"""Visual Genome v1.2 / v1.4: ``image_data``, ``objects``, ``attributes``, ``relationships``,
``region_descriptions`` and ``scene_graphs`` (``.json``), each a list with one record per image.

Quirks handled: a record's image id is ``image_id`` or ``id`` (``region_descriptions`` and
v1.0 ``image_data``); objects name themselves by ``names`` (list) or ``name`` (string); an
object listed by several files is one object (the first file that lists it gives its box, the
others add attributes); ``merged_object_ids`` are aliases of the object that absorbed them;
a relationship endpoint missing from the objects is added from the endpoint itself
(``relationships.json`` carries its box), while a ``scene_graphs.json`` endpoint that names
no object is reported and its relation skipped. Region descriptions become description-only
regions. Boxes are xywh ints in VG's own image size, which differs from COCO's for shared
images: the join scales them.
"""

from __future__ import annotations

import os
from typing import Any, TypeGuard

from synthvg.readers.base import (
    ImageSeeds,
    ProblemLog,
    SourceError,
    SourceImage,
    SourceRegion,
    SourceRelation,
    are_numbers,
)
from synthvg.readers.base import xywh_box as _box
from synthvg.readers.jsonscan import Item
from synthvg.readers.names import synset_lemma
from synthvg.readers.perimage import NoId, PerImageFile
from synthvg.schemas import RegionSource

FILES = (
    "image_data",
    "objects",
    "attributes",
    "relationships",
    "region_descriptions",
    "scene_graphs",
)


def release_files(root: str) -> dict[str, str]:
    """The release files found in ``root`` under their official names (``objects.json``, ...)."""
    return {name: p for name in FILES if os.path.isfile(p := os.path.join(root, f"{name}.json"))}


def _int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def record_image_id(item: Item) -> int | NoId:
    v = item.value
    if not isinstance(v, dict):
        return NoId("record must be a JSON object")
    for key in ("image_id", "id"):
        if _int(v.get(key)):
            return v[key]
    regions = v.get("regions")
    if (
        isinstance(regions, list)
        and regions
        and isinstance(regions[0], dict)
        and _int(regions[0].get("image_id"))
    ):
        return regions[0]["image_id"]
    return NoId("record without int 'image_id' (or 'id')")


def _names(o: dict) -> list[str]:
    names = o.get("names", o.get("name"))
    if isinstance(names, str):
        names = [names]
    return (
        [n.strip() for n in names if isinstance(n, str) and n.strip()]
        if isinstance(names, list)
        else []
    )


def _strings(values: object) -> list[str]:
    if isinstance(values, str):
        values = [values]
    return (
        [v.strip() for v in values if isinstance(v, str) and v.strip()]
        if isinstance(values, list)
        else []
    )


class _Image:
    """The objects, aliases and relations of one VG image while its files are read."""

    def __init__(self, vg_id: int, problems: ProblemLog):
        self.vg_id = vg_id
        self.problems = problems
        self.objects: dict[int, SourceRegion] = {}
        self.alias: dict[int, int] = {}

    def resolve(self, oid: Any) -> int | None:
        if oid in self.objects:
            return oid
        return self.alias.get(oid)

    def add_object(self, o: object, record: str) -> int | None:
        """Add (or enrich) an object; returns its id, None if the record is unusable."""
        if not isinstance(o, dict):
            self.problems.add(
                "bad_annotation",
                f"object must be a JSON object, got {type(o).__name__}",
                record,
                self.vg_id,
            )
            return None
        oid = o.get("object_id", o.get("id"))
        known = self.resolve(oid) if _int(oid) else None
        if known is not None:
            region = self.objects[known]
            region.attributes.extend(
                a for a in _strings(o.get("attributes")) if a not in region.attributes
            )
            return known
        w: Any = o.get("w", o.get("width"))
        h: Any = o.get("h", o.get("height"))
        if not _int(oid) or not are_numbers(o.get("x"), o.get("y"), w, h):
            self.problems.add(
                "bad_annotation",
                f"object needs int object_id and finite numeric x, y, w, h: {str(o)[:160]}",
                record,
                self.vg_id,
            )
            return None
        names = _names(o)
        if not names:
            self.problems.add(
                "bad_annotation",
                f"object {oid} has no name; kept without a label",
                record,
                self.vg_id,
            )
        label = names[0] if names else None
        self.objects[oid] = SourceRegion(
            key=f"o{oid}",
            box=_box(o["x"], o["y"], w, h),
            source=RegionSource(dataset="vg", annotation_id=f"object:{oid}", category=label),
            label=label,
            attributes=list(dict.fromkeys(_strings(o.get("attributes")))),
            names=tuple(names[1:]) + tuple(synset_lemma(s) for s in _strings(o.get("synsets"))),
        )
        for merged in o.get("merged_object_ids") or ():
            if _int(merged) and merged != oid:
                self.alias.setdefault(merged, oid)
        return oid


class VgReader:
    dataset = "vg"
    family = "vg"
    native_type = int

    def __init__(self, files: dict[str, str], images: str | None = None, version: str = "1.4"):
        if not files:
            raise SourceError(
                "no Visual Genome files given (image_data.json, objects.json, relationships.json, ...)"
            )
        self.model = f"visual-genome-{version}"
        self.images = images
        self.coco_ids: dict[int, int] = {}
        self.files: dict[str, PerImageFile] = {}
        for name, path in files.items():
            self.files[name] = PerImageFile(
                path, self._image_data_id if name == "image_data" else record_image_id, shape="list"
            )
        self.problems = ProblemLog(files.get("image_data") or next(iter(files.values())))
        for f in self.files.values():
            self.problems.extend(f.problems)
        if "image_data" in self.files:
            self._ids = list(self.files["image_data"].spans)
            listed = self.files["image_data"].spans
            for name, f in self.files.items():
                for vg_id in f.spans.keys() - listed.keys():
                    self.problems.add(
                        "unknown_image",
                        f"{name}.json has a record for image {vg_id}, which image_data.json does not list",
                        f"image={vg_id}",
                        vg_id,
                    )
        elif images is None:
            raise SourceError(
                f"{next(iter(files.values()))}: Visual Genome without image_data.json gives no image sizes: "
                "add image_data.json or the image folder (--images / `images:`)"
            )
        else:
            self._ids = sorted({i for f in self.files.values() for i in f.spans})
        self.problems.finish()

    def _image_data_id(self, item: Item) -> int | NoId:
        key = record_image_id(item)
        v = item.value
        if isinstance(key, NoId):
            return key
        if not (
            _int(v.get("width")) and _int(v.get("height")) and v["width"] > 0 and v["height"] > 0
        ):
            return NoId(f"image {key} needs int width and height > 0")
        if _int(v.get("coco_id")):
            self.coco_ids[key] = v["coco_id"]
        return key

    def native_ids(self) -> list[int | str]:
        return self._ids

    def has(self, native_id) -> bool:
        if "image_data" in self.files:
            return native_id in self.files["image_data"]
        return any(native_id in f for f in self.files.values())

    def _load(self, name: str, vg_id: int) -> dict | None:
        f = self.files.get(name)
        return f.load(vg_id) if f is not None and vg_id in f else None

    def read(self, native_id: int) -> ImageSeeds:
        meta = self._load("image_data", native_id) or {}
        url = meta.get("url") if isinstance(meta.get("url"), str) else None
        seeds = ImageSeeds(
            SourceImage(
                dataset=self.dataset,
                native_id=native_id,
                width=meta.get("width"),
                height=meta.get("height"),
                file_name="/".join(url.rstrip("/").split("/")[-2:]) if url else f"{native_id}.jpg",
                url=url,
                coco_id=meta.get("coco_id") if _int(meta.get("coco_id")) else None,
                vg_id=native_id,
            )
        )
        problems = ProblemLog(self.problems.path)
        image = _Image(native_id, problems)
        for name, key in (
            ("objects", "objects"),
            ("scene_graphs", "objects"),
            ("attributes", "attributes"),
        ):
            for k, o in enumerate(self._list(name, key, native_id, problems)):
                image.add_object(o, f"{name}:image={native_id}/{key}[{k}]")
        relations = self._relations(image, problems)
        seeds.regions = list(image.objects.values()) + self._phrases(native_id, problems)
        seeds.relations = relations
        seeds.problems = problems
        return seeds

    def _list(self, name: str, key: str, vg_id: int, problems: ProblemLog) -> list:
        record = self._load(name, vg_id)
        if record is None:
            return []
        values = record.get(key, []) if isinstance(record, dict) else None
        if not isinstance(values, list):
            problems.add(
                "bad_record",
                f"'{key}' must be a list, got {type(values).__name__}",
                f"{name}:image={vg_id}",
                vg_id,
            )
            return []
        return values

    def _relations(self, image: _Image, problems: ProblemLog) -> list[SourceRelation]:
        name = "relationships" if "relationships" in self.files else "scene_graphs"
        out = []
        for k, rel in enumerate(self._list(name, "relationships", image.vg_id, problems)):
            record = f"{name}:image={image.vg_id}/relationships[{k}]"
            if not isinstance(rel, dict) or not isinstance(rel.get("predicate"), str):
                problems.add(
                    "bad_relation",
                    f"relationship needs a text 'predicate': {str(rel)[:160]}",
                    record,
                    image.vg_id,
                )
                continue
            ends = []
            for end in ("subject", "object"):
                if name == "relationships":
                    # relationships.json carries each endpoint whole: one missing from the objects is added.
                    ends.append(image.add_object(rel.get(end), f"{record}/{end}"))
                else:
                    oid = image.resolve(rel.get(f"{end}_id"))
                    if oid is None:
                        problems.add(
                            "unknown_object",
                            f"{end}_id {rel.get(f'{end}_id')!r} names no object of the image; relation skipped",
                            record,
                            image.vg_id,
                        )
                    ends.append(oid)
            if None in ends:
                continue
            rid = rel.get("relationship_id", rel.get("id", k))
            out.append(
                SourceRelation(
                    key=str(rid),
                    subject=f"o{ends[0]}",
                    object=f"o{ends[1]}",
                    predicate=rel["predicate"],
                )
            )
        return out

    def _phrases(self, vg_id: int, problems: ProblemLog) -> list[SourceRegion]:
        out = []
        for k, r in enumerate(self._list("region_descriptions", "regions", vg_id, problems)):
            record = f"region_descriptions:image={vg_id}/regions[{k}]"
            ok = (
                isinstance(r, dict)
                and isinstance(r.get("phrase"), str)
                and are_numbers(r.get("x"), r.get("y"), r.get("width"), r.get("height"))
            )
            if not ok:
                problems.add(
                    "bad_annotation",
                    f"region needs a text 'phrase' and finite numeric x, y, width, height: {str(r)[:160]}",
                    record,
                    vg_id,
                )
                continue
            rid = r.get("region_id", k)
            out.append(
                SourceRegion(
                    key=f"r{rid}",
                    box=_box(r["x"], r["y"], r["width"], r["height"]),
                    source=RegionSource(dataset="vg", annotation_id=f"region:{rid}"),
                    descriptions=[r["phrase"].strip()],
                    phrase=True,
                )
            )
        return out
