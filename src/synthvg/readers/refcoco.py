"""RefCOCO, RefCOCO+, RefCOCOg: ``refs(unc|umd|google).p`` joined by ``ann_id`` to ``instances.json``.

The refs file is a Python pickle (written by Python 2) of a list of dicts, one per referred
object. It is loaded with an unpickler that refuses every global, so a hostile pickle cannot
run code. A ref has no box: its ``ann_id`` names a COCO-2014 annotation in the matching
``instances.json``, which gives box, mask and class. Each ref becomes one region whose
descriptions are its sentences (``raw``: the annotator's text; ``sent`` when ``raw`` is
missing) and whose ``sources.split`` is the ref's split (``testA``, ``val``, ...). Its link
``coco-ann:<ann_id>`` joins it to the same annotation from a COCO source.
"""

from __future__ import annotations

import os
import pickle

from synthvg.readers.base import ImageSeeds, ProblemLog, SourceError
from synthvg.readers.coco import CocoFile, coco_region, coco_source_image


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refs pickles hold only lists, dicts and text; refused global {module}.{name}"
        )


def load_refs(path: str) -> list:
    try:
        with open(path, "rb") as f:
            refs = _NoGlobals(f, encoding="latin1").load()
    except FileNotFoundError:
        raise SourceError(f"refs file not found: {path}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
    ) as e:
        raise SourceError(f"{path}: not a readable refs pickle: {type(e).__name__}: {e}") from None
    if not isinstance(refs, list):
        raise SourceError(
            f"{path}: not a refs list (the pickle holds a {type(refs).__name__}, expected a list of ref dicts)"
        )
    return refs


def _ref_problem(ref: object) -> str | None:
    if not isinstance(ref, dict):
        return f"ref must be a dict, got {type(ref).__name__}"
    for key in ("ref_id", "ann_id", "image_id"):
        if not isinstance(ref.get(key), int):
            return f"missing or non-int {key!r}"
    if not isinstance(ref.get("sentences"), list):
        return "missing or non-list 'sentences'"
    return None


class RefcocoReader:
    family = "coco"
    native_type = int

    def __init__(
        self,
        refs: str,
        instances: str | None = None,
        images: str | None = None,
        dataset: str = "refcoco",
    ):
        self.refs_path = refs
        self.instances_path = instances or os.path.join(os.path.dirname(refs), "instances.json")
        self.dataset = dataset
        self.model = self.dataset
        self.images = images
        self.index = CocoFile(self.instances_path)
        self.problems = ProblemLog(refs)
        self.problems.extend(self.index.problems)
        self._refs: dict[int, list[dict]] = {}
        for k, ref in enumerate(load_refs(refs)):
            reason = _ref_problem(ref)
            if reason:
                self.problems.add("bad_ref", f"{reason}: {str(ref)[:160]}", f"refs[{k}]")
            elif not self.index.has(ref["image_id"]):
                self.problems.add(
                    "unknown_image",
                    f"ref {ref['ref_id']} points at image {ref['image_id']}, which {self.instances_path} does not list",
                    f"ref={ref['ref_id']}",
                    ref["image_id"],
                )
            else:
                self._refs.setdefault(ref["image_id"], []).append(ref)
        for refs_of_image in self._refs.values():
            refs_of_image.sort(key=lambda r: r["ref_id"])
        self.problems.finish()

    def native_ids(self) -> list[int]:
        return list(self._refs)

    def has(self, native_id) -> bool:
        return native_id in self._refs

    def read(self, native_id: int) -> ImageSeeds:
        entry = self.index.image(native_id)
        seeds = ImageSeeds(coco_source_image(self.dataset, native_id, entry))
        problems = ProblemLog(self.refs_path)
        for ref in self._refs[native_id]:
            record = f"ref={ref['ref_id']}"
            ann = self.index.annotation(ref["ann_id"])
            if ann is None:
                problems.add(
                    "unknown_annotation",
                    f"ann_id {ref['ann_id']} is not in {self.instances_path}; ref skipped",
                    record,
                    native_id,
                )
                continue
            if ann.get("image_id") != native_id:
                problems.add(
                    "unknown_annotation",
                    f"ann_id {ref['ann_id']} belongs to image {ann.get('image_id')}, not {native_id}; ref skipped",
                    record,
                    native_id,
                )
                continue
            region = coco_region(ann, self.index, self.dataset, problems, native_id)
            if region is None:
                continue
            texts = [
                s.get("raw") or s.get("sent") if isinstance(s, dict) else None
                for s in ref["sentences"]
            ]
            if not all(isinstance(t, str) for t in texts):
                problems.add(
                    "bad_ref",
                    "a sentence without 'raw' or 'sent' text was skipped",
                    record,
                    native_id,
                )
            region.key = f"ref={ref['ref_id']}"
            split = ref.get("split") if isinstance(ref.get("split"), str) else None
            region.source = region.source.model_copy(
                update={"annotation_id": str(ref["ref_id"]), "split": split}
            )
            region.descriptions = [t for t in texts if isinstance(t, str)]
            seeds.regions.append(region)
        seeds.problems = problems
        return seeds
