"""The merge rule: which annotations of one image, from different sources, are one region.

1. **Same annotation.** Regions with the same link are one region: RefCOCO refs name COCO
   annotation ids, so a ref joins the COCO annotation it refers to (and the same ref from
   RefCOCO+ or RefCOCOg).
2. **Same object, other dataset.** Sources are taken in priority order (COCO, LVIS, RefCOCO,
   PSG, VG, GQA, ADE20K). A region joins an existing region when their boxes overlap with
   IoU >= ``merge.iou`` (0.7), their names are compatible (:mod:`synthvg.readers.names`;
   ``merge.names: any`` skips this test), and that region has no annotation of the same
   dataset yet: two annotations of one dataset are never merged (VG's own duplicates stay).
   Pairs are matched greedily by decreasing IoU, so each region takes its best partner.
3. **Descriptions.** A description-only region (a VG region description) joins the region
   whose box it overlaps most, if IoU >= ``merge.phrase_iou`` (0.5); several may join one.
   One that joins no annotated region joins an earlier such description it overlaps as much
   (VG repeats regions), or stands alone.

A region's box is its first member's (the highest-priority source). Everything that merges
nowhere stays its own region: nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthvg.readers.base import SourceRegion
from synthvg.readers.names import NameMatcher
from synthvg.schemas import RLE


@dataclass
class Member:
    """A source region, converted to the image's pixels and checked."""

    view: int
    dataset: str
    region: SourceRegion
    #: xyxy in the image's pixels, clipped to it.
    box: tuple[float, float, float, float]
    mask: RLE | None
    area: float
    keys: frozenset[str] = frozenset()


@dataclass
class Cluster:
    """Members of one region; ``datasets`` and ``keys`` cover its annotated (non-phrase) members."""

    members: list[Member]
    datasets: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    def add(self, m: Member) -> None:
        self.members.append(m)
        if not m.region.phrase:
            self.datasets.add(m.dataset)
            self.keys |= m.keys

    @classmethod
    def of(cls, m: Member) -> Cluster:
        c = cls([])
        c.add(m)
        return c


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box of ``a`` (n x 4) with every one of ``b`` (m x 4)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    A, B = a[:, None, :], b[None, :, :]
    iw = np.clip(np.minimum(A[..., 2], B[..., 2]) - np.maximum(A[..., 0], B[..., 0]), 0, None)
    ih = np.clip(np.minimum(A[..., 3], B[..., 3]) - np.maximum(A[..., 1], B[..., 1]), 0, None)
    inter = iw * ih
    union = (
        (A[..., 2] - A[..., 0]) * (A[..., 3] - A[..., 1])
        + (B[..., 2] - B[..., 0]) * (B[..., 3] - B[..., 1])
        - inter
    )
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _boxes(items) -> np.ndarray:
    return np.array([m.box for m in items], dtype=np.float64).reshape(-1, 4)


class Merger:
    def __init__(self, iou: float, phrase_iou: float, names: str, matcher: NameMatcher):
        self.iou = iou
        self.phrase_iou = phrase_iou
        self.check_names = names == "compatible"
        self.matcher = matcher

    def merge(self, members: list[Member]) -> list[Cluster]:
        """Clusters of ``members`` (given in priority order), ordered by their first member."""
        clusters: list[Cluster] = []
        by_link: dict[str, Cluster] = {}
        phrases = []
        views: dict[int, list[Member]] = {}
        for m in members:
            if m.region.phrase:
                phrases.append(m)
            else:
                m.keys = self.matcher.keys((m.region.label, *m.region.names))
                views.setdefault(m.view, []).append(m)
        for batch in views.values():
            rest = []
            for m in batch:
                linked = by_link.get(m.region.link) if m.region.link else None
                if linked is not None:
                    linked.add(m)
                else:
                    rest.append(m)
            for m, c in self._match(rest, clusters):
                if c is None:
                    c = Cluster.of(m)
                    clusters.append(c)
                else:
                    c.add(m)
                if m.region.link:
                    by_link.setdefault(m.region.link, c)
        clusters += self._place_phrases(phrases, clusters)
        return clusters

    def _match(
        self, batch: list[Member], clusters: list[Cluster]
    ) -> list[tuple[Member, Cluster | None]]:
        """Greedy best-IoU pairing of one source's regions with the regions so far."""
        if not batch:
            return []
        dataset = batch[0].dataset
        open_clusters = [c for c in clusters if dataset not in c.datasets]
        ious = box_iou(_boxes(batch), _boxes(c.members[0] for c in open_clusters))
        rows, cols = np.nonzero(ious >= self.iou)
        order = np.lexsort((cols, rows, -ious[rows, cols]))
        taken: dict[int, Cluster] = {}
        used: set[int] = set()
        for i, j in zip(rows[order].tolist(), cols[order].tolist(), strict=True):
            if i in taken or j in used:
                continue
            if self.check_names and not self.matcher.compatible(
                batch[i].keys, open_clusters[j].keys
            ):
                continue
            taken[i] = open_clusters[j]
            used.add(j)
        return [(m, taken.get(i)) for i, m in enumerate(batch)]

    def _place_phrases(self, phrases: list[Member], clusters: list[Cluster]) -> list[Cluster]:
        """Phrases join the annotated region they overlap most; the rest group among themselves."""
        if not phrases:
            return []
        boxes = _boxes(phrases)
        alone = []
        if clusters:
            ious = box_iou(boxes, _boxes(c.members[0] for c in clusters))
            best = ious.argmax(axis=1)
            for k, m in enumerate(phrases):
                if ious[k, best[k]] >= self.phrase_iou:
                    clusters[best[k]].add(m)
                else:
                    alone.append(k)
        else:
            alone = list(range(len(phrases)))
        among = box_iou(boxes[alone], boxes[alone])
        leaders: list[int] = []
        out: list[Cluster] = []
        for u, k in enumerate(alone):
            if leaders:
                row = among[u, leaders]
                j = int(row.argmax())
                if row[j] >= self.phrase_iou:
                    out[j].add(phrases[k])
                    continue
            leaders.append(u)
            out.append(Cluster.of(phrases[k]))
        return out
