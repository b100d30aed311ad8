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
from collections import Counter
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


#: Per image, the triplet sets of one source (``p``) and of the humans (``h``), as DuckDB tables
#: (image_id, s, o, pidx, cat) with one row per triplet; the counts of one comparison.
_COMPARE_SQL = """
WITH pp AS (SELECT * FROM {p} WHERE image_id IN (SELECT image_id FROM {h})),
     imgs AS (SELECT DISTINCT image_id FROM pp),
     hh AS (SELECT * FROM {h} WHERE image_id IN (SELECT image_id FROM imgs)),
     hit AS (SELECT p.cat AS pcat, h.cat AS hcat FROM pp p JOIN hh h USING (image_id, s, o, pidx))
SELECT 'total' AS what, NULL AS cat,
       (SELECT count(*) FROM imgs) AS images,
       (SELECT count(DISTINCT image_id) FROM {h}) - (SELECT count(*) FROM imgs) AS without,
       (SELECT count(*) FROM hh) AS human,
       (SELECT count(*) FROM pp) AS predicted,
       (SELECT count(*) FROM hit) AS matched,
       (SELECT count(*) FROM pp WHERE pidx < 0) AS unmapped
UNION ALL SELECT 'human', cat, 0, 0, count(*), 0, 0, 0 FROM hh GROUP BY cat
UNION ALL SELECT 'predicted', cat, 0, 0, 0, count(*), 0, 0 FROM pp GROUP BY cat
UNION ALL SELECT 'matched_human', hcat, 0, 0, 0, 0, count(*), 0 FROM hit GROUP BY hcat
UNION ALL SELECT 'matched_predicted', pcat, 0, 0, 0, 0, count(*), 0 FROM hit GROUP BY pcat
"""


def _compare_tables(con, source: str, human: str, predicted: str) -> Agreement:
    """Score ``predicted`` against ``human`` (tables or views of distinct triplets)."""
    a = Agreement(source)
    for what, cat, images, without, h, p, m, unmapped in con.execute(
        _COMPARE_SQL.format(h=human, p=predicted)
    ).fetchall():
        if what == "total":
            a.images, a.human_images_without_source = images, without
            a.human, a.predicted, a.matched, a.unmapped = h, p, m, unmapped
        elif what == "human":
            a.human_by_category[cat] = h
        elif what == "predicted":
            a.predicted_by_category[cat] = p
        elif what == "matched_human":
            a.matched_human_by_category[cat] = m
        else:
            a.matched_predicted_by_category[cat] = m
    return a


def _triplet_table(graphs: dict[str, dict[Triplet, str]]):
    import pyarrow as pa

    rows = [
        (image_id, s, o, p, cat) for image_id, g in graphs.items() for (s, o, p), cat in g.items()
    ]
    names = ["image_id", "s", "o", "pidx", "cat"]
    return pa.table(
        {n: [r[i] for r in rows] for i, n in enumerate(names)},
        schema=pa.schema(
            [
                ("image_id", pa.string()),
                ("s", pa.int64()),
                ("o", pa.int64()),
                ("pidx", pa.int64()),
                ("cat", pa.string()),
            ]
        ),
    )


def compare(
    source: str,
    human: dict[str, dict[Triplet, str]],
    predicted: dict[str, dict[Triplet, str]],
) -> Agreement:
    """Score one source given in memory: per image, {triplet: category} of the human and the
    predicted graph (the same SQL :func:`agreement` runs over a root)."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.register("h", _triplet_table(human))
        con.register("p", _triplet_table(predicted))
        return _compare_tables(con, source, "h", "p")
    finally:
        con.close()


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


_HUMAN = "stage = 'seed' AND generator = 'human'"


def _scalar(con, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def agreement(
    root: str,
    *,
    stages: Iterable[str] = ("seed", *MODEL_STAGES),
    include_dropped: bool = False,
    embedding: bool = False,
    embedding_threshold: float = 0.6,
) -> QualityReport:
    """Triplet precision and recall of each stage against the root's human graphs.

    The sets and joins run in DuckDB over the root's views (a paper-scale root's millions of
    relations never become Python objects); only the distinct predicates go through the label
    mapper.
    """
    import pyarrow as pa

    from synthvg.storage import connect

    con = connect(root)
    try:
        labels = [
            r[0]
            for r in con.execute(
                f"SELECT DISTINCT predicate FROM relations WHERE {_HUMAN} ORDER BY 1"
            ).fetchall()
        ]
        if not labels:
            raise EvalInputError(
                f"{root} has no human scene graphs (no seed relations from VG, GQA or PSG): nothing to agree with"
            )
        notes: list[str] = []
        embed = None
        if embedding:
            try:
                embed = minilm_embedder()
            except EmbeddingUnavailable as e:
                notes.append(str(e))
        mapper = LabelMapper(labels, "predicate", embed=embed, threshold=embedding_threshold)
        texts = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT predicate FROM relations WHERE predicate IS NOT NULL"
            ).fetchall()
        ]
        con.register(
            "_pmap",
            pa.table(
                {"text": texts, "pidx": [mapper(t) for t in texts]},
                schema=pa.schema([("text", pa.string()), ("pidx", pa.int64())]),
            ),
        )
        con.execute(
            """CREATE TEMP TABLE _human AS
                SELECT r.image_id, r.subject_id AS s, r.object_id AS o, m.pidx,
                       any_value(r.category) AS cat, list(DISTINCT rel) AS releases
                FROM relations r JOIN _pmap m ON r.predicate = m.text,
                     unnest(string_split(coalesce(r.model, ''), '+')) AS t(rel)
                WHERE r.stage = 'seed' AND r.generator = 'human'
                GROUP BY ALL"""
        )
        human_images = _scalar(con, "SELECT count(DISTINCT image_id) FROM _human")
        releases = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT unnest(releases) FROM _human ORDER BY 1"
            ).fetchall()
        ]
        present = {r[0] for r in con.execute("SELECT DISTINCT stage FROM relations").fetchall()}
        stages = list(stages)
        out: list[Agreement] = []
        if "seed" in stages:
            if len(releases) < 2:
                notes.append(
                    f"seed: one human source ({', '.join(releases) or 'unnamed'}); no second source to compare it with"
                )
            else:
                for release in releases:
                    con.execute(
                        "CREATE OR REPLACE TEMP TABLE _own AS SELECT image_id, s, o, pidx, cat "
                        "FROM _human WHERE list_contains(releases, ?)",
                        [release],
                    )
                    # the other sources' triplets on the images this one annotates
                    con.execute(
                        "CREATE OR REPLACE TEMP TABLE _others AS SELECT image_id, s, o, pidx, cat "
                        "FROM _human WHERE (len(releases) > 1 OR NOT list_contains(releases, ?)) "
                        "AND image_id IN (SELECT image_id FROM _own)",
                        [release],
                    )
                    if _scalar(con, "SELECT count(*) FROM _others"):
                        # images only this source annotates are not comparable: left out
                        con.execute(
                            "CREATE OR REPLACE TEMP VIEW _own_shared AS SELECT * FROM _own "
                            "WHERE image_id IN (SELECT image_id FROM _others)"
                        )
                        out.append(
                            _compare_tables(con, f"seed:{release}", "_others", "_own_shared")
                        )
        dropped = "" if include_dropped else "AND r.verdict <> 'dropped'"
        for stage in (s for s in stages if s != "seed"):
            if stage not in present:
                notes.append(f"{stage}: no relations in this root")
                continue
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE _pred AS
                    SELECT r.image_id, r.subject_id AS s, r.object_id AS o,
                           coalesce(m.pidx, -1) AS pidx, any_value(r.category) AS cat
                    FROM relations r LEFT JOIN _pmap m ON r.predicate = m.text
                    WHERE r.stage = ? {dropped}
                      AND r.image_id IN (SELECT image_id FROM _human)
                    GROUP BY ALL""",
                [stage],
            )
            out.append(_compare_tables(con, stage, "_human", "_pred"))
    finally:
        con.close()
    return QualityReport(
        root=root,
        human_images=human_images,
        human_sources=releases,
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
