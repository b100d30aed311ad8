"""LVIS v1 and v0.5 (``lvis_v1_{train,val}.json``, ``lvis_v0.5_val.json``).

LVIS images are COCO-2017 images with COCO ids. v1 entries have no ``file_name``: like
detectron2, the file is ``<split>/<name>`` from ``coco_url``, relative to the COCO root (the
folder holding ``train2017/`` and ``val2017/``); v0.5's ``file_name`` names a COCO-2014 file,
so it is used only when ``coco_url`` is missing. Category names use ``_`` for spaces
(``baseball_bat``): labels read ``baseball bat``, ``sources.category`` keeps the name as given.
Synonyms and the synset help match LVIS regions to other sources' (see ``readers.names``).
"""

from __future__ import annotations

from synthvg.readers.base import ImageSeeds, ProblemLog
from synthvg.readers.coco import CocoFile, CocoFileReader, _size_ok, coco_region, coco_source_image
from synthvg.readers.names import synset_lemma


def lvis_image_problem(entry: dict) -> str | None:
    if not (
        isinstance(entry.get("coco_url"), str) or isinstance(entry.get("file_name"), str)
    ) or not _size_ok(entry):
        return "image entry needs int id, coco_url, width, height > 0"
    return None


def lvis_file_name(entry: dict) -> str:
    url = entry.get("coco_url")
    if isinstance(url, str) and url.count("/") >= 2:
        return "/".join(url.rstrip("/").split("/")[-2:])
    return entry["file_name"]


class LvisReader(CocoFileReader):
    dataset = "lvis"
    family = "coco"
    model = "lvis"
    native_type = int

    def __init__(self, annotations: str, images: str | None = None):
        self.index = CocoFile(annotations, image_problem=lvis_image_problem)
        self.images = images
        self.problems = self.index.problems
        self._names = {
            cid: tuple(s.replace("_", " ") for s in c.get("synonyms") or () if isinstance(s, str))
            + ((synset_lemma(c["synset"]),) if isinstance(c.get("synset"), str) else ())
            for cid, c in self.index.categories.items()
        }

    def read(self, native_id: int) -> ImageSeeds:
        entry = self.index.image(native_id)
        seeds = ImageSeeds(
            coco_source_image(self.dataset, native_id, entry, file_name=lvis_file_name(entry))
        )
        problems = ProblemLog(self.index.path)
        for ann in self.index.annotations(native_id, problems):
            region = coco_region(ann, self.index, self.dataset, problems, native_id, link=False)
            if region is None:
                continue
            if region.label:
                region.label = region.label.replace("_", " ")
            region.names = self._names.get(ann.get("category_id", -1), ())
            seeds.regions.append(region)
        seeds.problems = problems
        return seeds
