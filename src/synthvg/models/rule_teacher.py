"""A rule-based stand-in for the GPT-4V teacher: spatial relations from geometry alone.

It needs no model and no network, so the demo has relations offline. Like a real teacher
it proposes loosely ("near" means among a subject's nearest regions), and the filters check. Everything it writes is
labelled ``generator='rules'`` and ``model='synthvg-rule-teacher'``: these are geometric facts
about boxes and masks (left of, on, inside, ...), never claims about interactions, function,
social or emotional content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synthvg import masks
from synthvg.schemas import RLE, Box
from synthvg.schemas.config import RuleTeacherConfig

MODEL_NAME = "synthvg-rule-teacher"
RULES_VERSION = "geometry-v2"


@dataclass(frozen=True)
class RegionGeom:
    region_id: int
    box: Box
    mask: RLE
    area: float


@dataclass(frozen=True)
class Triple:
    subject_id: int
    object_id: int
    predicate: str
    score: float


def _overlap(a1: float, a2: float, b1: float, b2: float) -> float:
    return max(0.0, min(a2, b2) - max(a1, b1))


def spatial_predicate(
    s: RegionGeom, o: RegionGeom, s_in_o: float, o_in_s: float
) -> tuple[str, float] | None:
    """The single most specific spatial predicate of ``s`` relative to ``o`` (or None).

    ``s_in_o`` / ``o_in_s`` are mask coverages (|s & o| / |s| and |s & o| / |o|). The score is
    the margin by which the deciding test passed, in [0, 1].
    """
    a, b = s.box, o.box
    x_overlap = _overlap(a.x1, a.x2, b.x1, b.x2)
    # "on": s is the smaller one, rests on o's upper half, mostly over it horizontally, and
    # reaches above o's top. Checked before "inside": a table's mask covers what stands on it.
    if (
        a.width > 0
        and s.area < o.area
        and x_overlap >= 0.6 * a.width
        and b.y1 - 0.05 * b.height <= a.y2 <= b.y1 + 0.5 * b.height
        and a.y1 < b.y1
    ):
        return "on", min(1.0, x_overlap / a.width)
    if s_in_o >= 0.85 and s.area <= 0.5 * o.area:
        return "inside", s_in_o
    if o_in_s >= 0.85 and o.area <= 0.5 * s.area:
        return "contains", o_in_s
    tol_y = 0.1 * min(a.height, b.height)
    if x_overlap > 0 and a.y2 <= b.y1 + tol_y:
        return "above", min(1.0, x_overlap / max(min(a.width, b.width), 1e-6))
    if x_overlap > 0 and b.y2 <= a.y1 + tol_y:
        return "below", min(1.0, x_overlap / max(min(a.width, b.width), 1e-6))
    tol_x = 0.1 * min(a.width, b.width)
    y_overlap = _overlap(a.y1, a.y2, b.y1, b.y2)
    if a.x2 <= b.x1 + tol_x:
        gap = max(0.0, b.x1 - a.x2)
        if y_overlap > 0 and gap <= 0.25 * max(a.width, b.width):
            return "next to", 1.0 - gap / max(0.25 * max(a.width, b.width), 1e-6)
        return "left of", min(1.0, (b.x1 - a.x1) / max(a.width + b.width, 1e-6))
    if a.x1 >= b.x2 - tol_x:
        gap = max(0.0, a.x1 - b.x2)
        if y_overlap > 0 and gap <= 0.25 * max(a.width, b.width):
            return "next to", 1.0 - gap / max(0.25 * max(a.width, b.width), 1e-6)
        return "right of", min(1.0, (a.x2 - b.x2) / max(a.width + b.width, 1e-6))
    return None


class RuleTeacher:
    """Picks the largest regions as subjects and relates each to its nearest regions."""

    name = MODEL_NAME
    version = RULES_VERSION

    def __init__(self, config: RuleTeacherConfig):
        self.config = config

    def relate(self, regions: list[RegionGeom]) -> list[Triple]:
        if len(regions) < 2:
            return []
        n_subjects = max(
            min(self.config.max_subjects, len(regions)), min(self.config.min_subjects, len(regions))
        )
        by_area = sorted(regions, key=lambda r: (-r.area, r.region_id))
        subjects = by_area[:n_subjects]
        all_masks = [r.mask for r in regions]
        subj_masks = [s.mask for s in subjects]
        cover_s = masks.coverage_matrix(subj_masks, all_masks)  # |s & o| / |s|
        cover_o = masks.coverage_matrix(all_masks, subj_masks).T  # |s & o| / |o|
        centers = np.array(
            [[(r.box.x1 + r.box.x2) / 2, (r.box.y1 + r.box.y2) / 2] for r in regions]
        )
        out: list[Triple] = []
        for i, s in enumerate(subjects):
            si = regions.index(s)
            dist = np.linalg.norm(centers - centers[si], axis=1)
            dist[si] = np.inf
            nearest = [
                int(j)
                for j in np.argsort(dist, kind="stable")[: self.config.objects_per_subject]
                if np.isfinite(dist[j])
            ]
            for rank, j in enumerate(nearest):
                o = regions[j]
                found = spatial_predicate(s, o, float(cover_s[i, j]), float(cover_o[i, j]))
                if found:
                    out.append(
                        Triple(s.region_id, o.region_id, found[0], round(float(found[1]), 4))
                    )
                if not found or found[0] in ("left of", "right of", "above", "below"):
                    # Nearness here is relative (among this subject's nearest regions): a loose
                    # proposal, as a teacher's would be; the filters judge absolute distance.
                    out.append(
                        Triple(
                            s.region_id, o.region_id, "near", round(1.0 - rank / len(nearest), 4)
                        )
                    )
        return out
