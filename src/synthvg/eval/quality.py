"""Dataset quality without training: how each stage's graphs agree with the human ones.

On the images of a root that carry human scene graphs (seed relations from VG, GQA or PSG),
every stage's triplets are compared with the human triplets of the same image:

- **objects** are the root's regions, which every stage shares (a relation names its subject
  and object by ``region_id``), so a triplet's ends match when they are the same regions;
- **predicates** are mapped onto the human predicates of the root with the evaluation's
  :class:`~synthvg.eval.vocab.LabelMapper` (exact, then synonym, then optionally the nearest
  label by sentence embedding); a predicate that maps to none counts as a wrong triplet;
- per image, triplets are sets (a triplet said twice counts once);
- **precision** = matched / predicted triplets and **recall** = matched / human triplets, summed
  over the images that have both a human graph and at least one triplet of the stage (micro
  average); the human images the stage left without any triplet are counted beside it;
- **per category**: recall over the human triplets of a category, precision over the stage's
  triplets of a category (the categories are the relations' own ``category`` column).

The ``seed`` stage is compared source against source: the triplets one human source gave
(``model`` names the releases that gave a seed triplet: ``visual-genome-1.4+gqa-1.1``) against
the union of the other human sources, on images both annotate: a human-to-human reference
for the model stages' numbers. Relations the filters dropped are left out unless asked.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from synthvg.eval.inputs import EvalInputError
from synthvg.eval.vocab import EmbeddingUnavailable, LabelMapper, minilm_embedder

MODEL_STAGES = ("teacher", "robin", "edit")
QUALITY_DIR = "eval/quality"

Triplet = tuple[int, int, int]  # subject region, object region, predicate index (-1: unmapped)


@dataclass
class Agreement:
    """One graph source against the human graphs: counts, then the ratios."""

    source: str  # teacher, robin, edit, or seed:<release>
    images: int = 0  # images with both graphs
    human_images_without_source: int = 0
    human: int = 0
    predicted: int = 0
    matched: int = 0
    unmapped: int = 0  # predicted triplets whose predicate maps to no human predicate
    human_by_category: Counter = field(default_factory=Counter)
    predicted_by_category: Counter = field(default_factory=Counter)
    matched_human_by_category: Counter = field(default_factory=Counter)
    matched_predicted_by_category: Counter = field(default_factory=Counter)

    @property
    def precision(self) -> float | None:
        return self.matched / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.human if self.human else None

    def row(self) -> dict:
        return {
            "source": self.source,
            "images": self.images,
            "human_images_without_source": self.human_images_without_source,
            "human": self.human,
            "predicted": self.predicted,
            "matched": self.matched,
            "unmapped": self.unmapped,
            "precision": self.precision,
            "recall": self.recall,
        }

    def category_rows(self) -> list[dict]:
        cats = sorted(set(self.human_by_category) | set(self.predicted_by_category))
        return [
            {
                "source": self.source,
                "category": c,
                "human": self.human_by_category[c],
                "predicted": self.predicted_by_category[c],
                "precision": (
                    self.matched_predicted_by_category[c] / self.predicted_by_category[c]
                    if self.predicted_by_category[c]
                    else None
                ),
                "recall": (
                    self.matched_human_by_category[c] / self.human_by_category[c]
                    if self.human_by_category[c]
                    else None
                ),
            }
            for c in cats
        ]


def compare(
    source: str,
    human: dict[str, dict[Triplet, str]],
    predicted: dict[str, dict[Triplet, str]],
) -> Agreement:
    """Score one source: per image, {triplet: category} of the human and the predicted graph."""
    a = Agreement(source)
    for image_id, gt in human.items():
        pred = predicted.get(image_id)
        if not pred:
            a.human_images_without_source += 1
            continue
        a.images += 1
        a.human += len(gt)
        a.predicted += len(pred)
        a.unmapped += sum(1 for t in pred if t[2] < 0)
        hits = gt.keys() & pred.keys()
        a.matched += len(hits)
        a.human_by_category.update(gt.values())
        a.predicted_by_category.update(pred.values())
        a.matched_human_by_category.update(gt[t] for t in hits)
        a.matched_predicted_by_category.update(pred[t] for t in hits)
    return a


@dataclass
class QualityReport:
    root: str
    human_images: int
    human_sources: list[str]
    agreement: list[Agreement]
    mapping: list[dict]
    notes: list[str] = field(default_factory=list)
    include_dropped: bool = False

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "human_images": self.human_images,
            "human_sources": self.human_sources,
            "include_dropped": self.include_dropped,
            "agreement": [a.row() for a in self.agreement],
            "by_category": [r for a in self.agreement for r in a.category_rows()],
            "mapping": self.mapping,
            "notes": self.notes,
        }


def _rows(con, include_dropped: bool) -> list[dict]:
    from synthvg.storage import fetch_dicts

    where = "" if include_dropped else "WHERE verdict <> 'dropped' OR stage = 'seed'"
    return fetch_dicts(
        con,
        "SELECT image_id, stage, generator, subject_id, object_id, predicate, category, model "
        f"FROM relations {where}",
    )


def agreement(
    root: str,
    *,
    stages: Iterable[str] = ("seed", *MODEL_STAGES),
    include_dropped: bool = False,
    embedding: bool = False,
    embedding_threshold: float = 0.6,
) -> QualityReport:
    """Triplet precision and recall of each stage against the root's human graphs."""
    from synthvg.storage import connect

    con = connect(root)
    try:
        rows = _rows(con, include_dropped)
    finally:
        con.close()
    human_rows = [r for r in rows if r["stage"] == "seed" and r["generator"] == "human"]
    if not human_rows:
        raise EvalInputError(
            f"{root} has no human scene graphs (no seed relations from VG, GQA or PSG): nothing to agree with"
        )
    labels = sorted({r["predicate"] for r in human_rows})
    notes: list[str] = []
    embed = None
    if embedding:
        try:
            embed = minilm_embedder()
        except EmbeddingUnavailable as e:
            notes.append(str(e))
    mapper = LabelMapper(labels, "predicate", embed=embed, threshold=embedding_threshold)
    index = {p: i for i, p in enumerate(labels)}

    human: dict[str, dict[Triplet, str]] = defaultdict(dict)
    by_release: dict[str, dict[str, dict[Triplet, str]]] = defaultdict(lambda: defaultdict(dict))
    for r in human_rows:
        t = (r["subject_id"], r["object_id"], index[r["predicate"]])
        human[r["image_id"]][t] = r["category"]
        for release in (r["model"] or "").split("+"):
            by_release[release][r["image_id"]][t] = r["category"]

    stages = list(stages)
    out: list[Agreement] = []
    if "seed" in stages:
        if len(by_release) < 2:
            notes.append(
                f"seed: one human source ({', '.join(by_release) or 'unnamed'}); no second source to compare it with"
            )
        for release, own in sorted(by_release.items()):
            others = {
                image_id: {
                    t: c
                    for other, graphs in by_release.items()
                    if other != release
                    for t, c in graphs.get(image_id, {}).items()
                }
                for image_id in own
            }
            others = {i: g for i, g in others.items() if g}
            if others:
                out.append(compare(f"seed:{release}", others, own))
    for stage in (s for s in stages if s != "seed"):
        predicted: dict[str, dict[Triplet, str]] = defaultdict(dict)
        for r in rows:
            if r["stage"] == stage and r["image_id"] in human:
                predicted[r["image_id"]][
                    (r["subject_id"], r["object_id"], mapper(r["predicate"]))
                ] = r["category"]
        if not predicted and not any(r["stage"] == stage for r in rows):
            notes.append(f"{stage}: no relations in this root")
            continue
        out.append(compare(stage, human, predicted))
    return QualityReport(
        root=root,
        human_images=len(human),
        human_sources=sorted(by_release),
        agreement=out,
        mapping=[m for m in mapper.records() if m["method"] != "exact"],
        notes=notes,
        include_dropped=include_dropped,
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_quality(report: QualityReport) -> str:
    lines = [
        f"agreement with human scene graphs: {report.root}",
        f"{report.human_images} images with human graphs (sources: {', '.join(report.human_sources)}); "
        "objects matched by region, predicates after label mapping",
        "",
        f"{'source':<28}{'images':>8}{'human':>8}{'pred':>8}{'match':>8}{'P %':>8}{'R %':>8}",
    ]
    for a in report.agreement:
        lines.append(
            f"{a.source:<28}{a.images:>8}{a.human:>8}{a.predicted:>8}{a.matched:>8}"
            f"{_pct(a.precision):>8}{_pct(a.recall):>8}"
        )
    cats = [r for a in report.agreement for r in a.category_rows()]
    if cats:
        lines += ["", "by category:", f"  {'source':<26}{'category':<15}{'P %':>8}{'R %':>8}"]
        lines += [
            f"  {r['source']:<26}{r['category']:<15}{_pct(r['precision']):>8}{_pct(r['recall']):>8}"
            for r in cats
        ]
    skipped = [a for a in report.agreement if a.human_images_without_source]
    for a in skipped:
        lines.append(
            f"{a.source}: {a.human_images_without_source} human-annotated image(s) without any of its triplets (not in P/R)"
        )
    lines.extend(report.notes)
    return "\n".join(lines)


def write_quality(report: QualityReport, out: str | Path) -> list[Path]:
    """agreement.json (everything), agreement.parquet and agreement_by_category.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_json()
    files = [
        out / "agreement.json",
        out / "agreement.parquet",
        out / "agreement_by_category.parquet",
    ]
    files[0].write_text(json.dumps(data, indent=2))
    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    pq.write_table(
        pa.Table.from_pylist(
            data["agreement"],
            schema=pa.schema(
                [("source", s)]
                + [
                    (k, i64)
                    for k in (
                        "images",
                        "human_images_without_source",
                        "human",
                        "predicted",
                        "matched",
                        "unmapped",
                    )
                ]
                + [("precision", f64), ("recall", f64)]
            ),
        ),
        files[1],
    )
    pq.write_table(
        pa.Table.from_pylist(
            data["by_category"],
            schema=pa.schema(
                [
                    ("source", s),
                    ("category", s),
                    ("human", i64),
                    ("predicted", i64),
                    ("precision", f64),
                    ("recall", f64),
                ]
            ),
        ),
        files[2],
    )
    return files


__all__ = [
    "Agreement",
    "QualityReport",
    "agreement",
    "compare",
    "format_quality",
    "write_quality",
]
