"""Join what every source says about one image into its region and seed-relation rows.

Each source's annotations are first brought to the image's pixels: boxes to xyxy, scaled when
the source saw the image at another size (VG and GQA images are often larger than COCO's),
clipped; masks to COCO RLE at the image's size. Then the merge rule
(:mod:`synthvg.readers.merge`) groups them into regions, and each source's relations are
re-pointed at the merged regions. Identical triples from several sources are one row whose
``model`` names every source (``visual-genome-1.4+gqa-1.1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from synthvg import masks
from synthvg.predicates import category_of, normalise
from synthvg.readers.base import ImageSeeds, Problem, SourceImage, SourceRegion
from synthvg.readers.merge import Cluster, Member, Merger
from synthvg.schemas import RLE, Box, RegionRecord, RelationRecord
from synthvg.schemas.records import relation_id

#: Two sizes of one image whose aspect ratios differ by more than this are not the same picture.
ASPECT_TOLERANCE = 0.02


@dataclass
class View:
    """One source's annotations of the image, and where they come from (for messages)."""

    seeds: ImageSeeds
    path: str
    model: str


@dataclass
class Joined:
    regions: list[RegionRecord] = field(default_factory=list)
    relations: list[RelationRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Datasets whose annotations were used.
    datasets: list[str] = field(default_factory=list)


def scale_of(image: SourceImage, width: int, height: int) -> tuple[float, float] | None:
    """Factors from a source's pixels to the image's; None when the shapes disagree."""
    if not image.width or not image.height:
        return 1.0, 1.0
    sx, sy = width / image.width, height / image.height
    return (sx, sy) if abs(sx - sy) <= ASPECT_TOLERANCE * max(sx, sy) else None


def _shown(b: tuple[float, float, float, float]) -> str:
    return f"[{b[0]:g}, {b[1]:g}, {b[2]:g}, {b[3]:g}] (xyxy)"


def resize_mask(rle: RLE, height: int, width: int) -> RLE:
    m = Image.fromarray(masks.decode(rle).astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST
    )
    return masks.encode(np.asarray(m) > 127)


def frame_mask(
    segmentation: object,
    source: tuple[int, int],
    scale: tuple[float, float],
    height: int,
    width: int,
) -> RLE:
    """A region's mask as RLE at the image's size; ``source`` is the source's (height, width)."""
    if isinstance(segmentation, list):
        sx, sy = scale
        if (sx, sy) != (1.0, 1.0):
            segmentation = [
                [v * (sx if k % 2 == 0 else sy) for k, v in enumerate(p)]
                if isinstance(p, list)
                else p
                for p in segmentation
            ]
        return masks.segmentation_to_rle(segmentation, height, width)
    if isinstance(segmentation, RLE):
        rle = segmentation
    else:
        rle = masks.segmentation_to_rle(segmentation, *source)
        masks.decode(rle)  # a compressed RLE string is only checked by decoding it (ValueError)
    return rle if rle.size == [height, width] else resize_mask(rle, height, width)


class Joiner:
    """Joins the views of one image; built once per build config."""

    def __init__(self, merger: Merger, min_region_area: float):
        self.merger = merger
        self.min_region_area = min_region_area

    def join(
        self, image_id: str, views: list[View], width: int, height: int, run_id: str
    ) -> Joined:
        out = Joined()
        members: list[Member] = []
        used: list[int] = []
        for v, view in enumerate(views):
            scale = scale_of(view.seeds.image, width, height)
            if scale is None:
                img = view.seeds.image
                out.problems.append(
                    Problem(
                        "image_size_mismatch",
                        f"{img.dataset} saw this image as {img.width}x{img.height}, another shape than its {width}x{height} file; its annotations are skipped",
                        view.path,
                    )
                )
                continue
            used.append(v)
            out.datasets.append(view.seeds.image.dataset)
            source = (view.seeds.image.height or height, view.seeds.image.width or width)
            for region in view.seeds.regions:
                member = self._member(v, view, region, scale, source, width, height, out.problems)
                if member is not None:
                    members.append(member)
        clusters = self.merger.merge(members)
        index = {(m.view, m.region.key): k for k, c in enumerate(clusters) for m in c.members}
        out.regions = [self._record(image_id, k, c) for k, c in enumerate(clusters)]
        out.relations = self._relations(
            image_id, [(v, views[v]) for v in used], index, run_id, out.problems
        )
        return out

    def _member(
        self, v, view: View, region: SourceRegion, scale, source, width, height, problems
    ) -> Member | None:
        sx, sy = scale
        b = region.box
        x1, y1, x2, y2 = b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy
        ref = f"{view.path}#annotation={region.source.annotation_id}"
        if not math.isfinite(x1 + y1 + x2 + y2) or x2 <= x1 or y2 <= y1:
            problems.append(
                Problem("zero_area", f"box {_shown(b)} has no area; region skipped", ref)
            )
            return None
        box = (
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
            min(max(x2, 0.0), width),
            min(max(y2, 0.0), height),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            problems.append(
                Problem(
                    "box_outside_image",
                    f"box {_shown(b)} lies outside the {width}x{height} image; region skipped",
                    ref,
                )
            )
            return None
        if box != (x1, y1, x2, y2):
            problems.append(
                Problem(
                    "box_clipped",
                    f"box {_shown(b)} extends past the {width}x{height} image; clipped",
                    ref,
                )
            )
        mask = None
        if region.segmentation is not None:
            try:
                mask = frame_mask(region.segmentation, source, scale, height, width)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                problems.append(
                    Problem("bad_segmentation", f"{e}; region kept with its box only", ref)
                )
        area = masks.area(mask) if mask is not None else (box[2] - box[0]) * (box[3] - box[1])
        if area < self.min_region_area:
            problems.append(
                Problem(
                    "zero_area",
                    f"region area {area:.1f}px is below min_region_area; region skipped",
                    ref,
                )
            )
            return None
        return Member(v, view.seeds.image.dataset, region, box, mask, area)

    @staticmethod
    def _record(image_id: str, region_id: int, cluster: Cluster) -> RegionRecord:
        ms = cluster.members
        rep = next((m for m in ms if m.mask is not None), ms[0])
        x1, y1, x2, y2 = rep.box
        if len(ms) == 1:  # most regions: nothing to combine
            r = rep.region
            label, descriptions, attributes, sources = (
                r.label,
                r.descriptions,
                r.attributes,
                [r.source],
            )
        else:
            label = next((m.region.label for m in ms if m.region.label), None)
            descriptions = list(dict.fromkeys(d for m in ms for d in m.region.descriptions))
            attributes = list(dict.fromkeys(a for m in ms for a in m.region.attributes))
            sources = list(dict.fromkeys(m.region.source for m in ms))
        return RegionRecord(
            image_id=image_id,
            region_id=region_id,
            bbox=Box(x1=x1, y1=y1, x2=x2, y2=y2),
            mask=rep.mask,
            area=rep.area,
            label=label,
            descriptions=descriptions,
            attributes=attributes,
            is_crowd=rep.region.is_crowd,
            sources=sources,
        )

    @staticmethod
    def _relations(
        image_id, views: list[tuple[int, View]], index, run_id: str, problems: list[Problem]
    ) -> list[RelationRecord]:
        triples: dict[tuple[int, int, str], tuple[str, list[str]]] = {}
        for v, view in views:
            for rel in view.seeds.relations:
                ends = index.get((v, rel.subject)), index.get((v, rel.object))
                ref = f"{view.path}#relation={rel.key}"
                predicate = normalise(rel.predicate)
                if None in ends:
                    which = "subject" if ends[0] is None else "object"
                    problems.append(
                        Problem(
                            "dangling_relation",
                            f"relation {rel.predicate!r}: its {which} region was skipped (see its own error); relation skipped",
                            ref,
                        )
                    )
                elif not predicate:
                    problems.append(
                        Problem("bad_relation", "empty predicate; relation skipped", ref)
                    )
                else:
                    raw, models = triples.setdefault(
                        (ends[0], ends[1], predicate), (rel.predicate, [])
                    )
                    if view.model not in models:
                        models.append(view.model)
        return [
            RelationRecord(
                relation_id=relation_id(image_id, "seed", s, o, p),
                image_id=image_id,
                subject_id=s,
                object_id=o,
                predicate=p,
                predicate_raw=raw,
                category=category_of(p),
                stage="seed",
                generator="human",
                model="+".join(models),
                run_id=run_id,
            )
            for (s, o, p), (raw, models) in triples.items()
        ]
