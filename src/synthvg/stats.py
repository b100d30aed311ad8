"""Dataset statistics: the paper's Table 1 columns for any built dataset, and breakdowns.

Definitions (also in docs/SCHEMA.md):
- objects / image: regions per image (the scene graph's nodes);
- triplets / image: relations not dropped by the filters, per image;
- predicates / region: those relations per region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from synthvg.storage import Snapshot, connect, fetch_dicts

if TYPE_CHECKING:
    from synthvg.storage import Dataset

# The paper's Table 1, to hold a build against.
PAPER_TABLE_1 = [
    ("Visual Genome", "108K", 35.2, 21.4, 0.6),
    ("GQA", "85K", 16.4, 50.6, 3.1),
    ("PSG", "49K", 11.2, 5.7, 0.6),
    ("SVG-RELATIONS", "33K", 13.2, 25.5, 1.9),
    ("SVG-FULL", "113K", 19.8, 42.3, 2.4),
]


#: The counts a build's stats artifact and the dataset card show first.
HEADLINE_COUNTS = (
    "images",
    "regions",
    "regions_kept",
    "proposals",
    "relations",
    "relations_not_dropped",
    "errors",
)


def compute_stats(root: str | Dataset | Snapshot) -> dict:
    con = connect(root)
    try:
        (images,) = con.sql("SELECT count(*) FROM images").fetchall()[0]
        (regions, kept, checked) = con.sql(
            "SELECT count(*), count(*) FILTER (WHERE kept), count(kept) FROM regions"
        ).fetchall()[0]
        (relations, live) = con.sql(
            "SELECT count(*), count(*) FILTER (WHERE verdict <> 'dropped') FROM relations"
        ).fetchall()[0]
        (proposals,) = con.sql("SELECT count(*) FROM proposals").fetchall()[0]
        (errors,) = con.sql("SELECT count(*) FROM errors").fetchall()[0]
        stats = {
            "images": images,
            "regions": regions,
            "regions_checked": checked,
            "regions_kept": kept,
            "proposals": proposals,
            "relations": relations,
            "relations_not_dropped": live,
            "errors": errors,
            "table1": {
                "objects_per_image": round(regions / images, 2) if images else 0.0,
                "triplets_per_image": round(live / images, 2) if images else 0.0,
                "predicates_per_region": round(live / regions, 2) if regions else 0.0,
            },
            "by_category": fetch_dicts(
                con,
                "SELECT category, count(*) AS relations FROM relations GROUP BY 1 ORDER BY 2 DESC, 1",
            ),
            "by_stage": fetch_dicts(
                con,
                "SELECT stage, generator, count(*) AS relations FROM relations GROUP BY 1, 2 ORDER BY 1, 2",
            ),
            "by_verdict": fetch_dicts(
                con,
                "SELECT verdict, count(*) AS relations FROM relations GROUP BY 1 ORDER BY 2 DESC, 1",
            ),
            "verdicts_by_rule": fetch_dicts(
                con,
                """
                SELECT coalesce(verified_by, '(no filter)') AS rule,
                       count(*) FILTER (WHERE verdict = 'kept') AS kept,
                       count(*) FILTER (WHERE verdict = 'dropped') AS dropped,
                       count(*) FILTER (WHERE verdict = 'unverified') AS unverified
                FROM relations GROUP BY 1 ORDER BY 1""",
            ),
            "verdicts_by_category": fetch_dicts(
                con,
                """
                SELECT category,
                       count(*) FILTER (WHERE verdict = 'kept') AS kept,
                       count(*) FILTER (WHERE verdict = 'dropped') AS dropped,
                       count(*) FILTER (WHERE verdict = 'unverified') AS unverified
                FROM relations GROUP BY 1 ORDER BY 1""",
            ),
            # As Table 1 counts triplets: relations the filters dropped are not in the dataset's graphs.
            "top_predicates": fetch_dicts(
                con,
                "SELECT predicate, count(*) AS relations FROM relations WHERE verdict <> 'dropped' GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 15",
            ),
            "errors_by_kind": fetch_dicts(
                con,
                "SELECT stage, kind, count(*) AS errors FROM errors GROUP BY 1, 2 ORDER BY 1, 3 DESC",
            ),
        }
    finally:
        con.close()
    return stats


def format_stats(stats: dict) -> str:
    """A plain-text report: counts, Table 1 next to the paper's, breakdowns."""
    t = stats["table1"]
    lines = [
        f"images {stats['images']}  regions {stats['regions']} (checked {stats['regions_checked']}, "
        f"kept {stats['regions_kept']})  proposals {stats['proposals']}  relations {stats['relations']} "
        f"(not dropped {stats['relations_not_dropped']})  errors {stats['errors']}",
        "",
        f"{'dataset':<16}{'images':>8}{'objects/img':>13}{'triplets/img':>14}{'preds/region':>14}",
    ]
    for name, n, o, tr, p in PAPER_TABLE_1:
        lines.append(f"{name:<16}{n:>8}{o:>13.1f}{tr:>14.1f}{p:>14.1f}")
    lines.append(
        f"{'this build':<16}{stats['images']:>8}{t['objects_per_image']:>13.1f}"
        f"{t['triplets_per_image']:>14.1f}{t['predicates_per_region']:>14.1f}"
    )
    for title, key, cols in (
        ("relations by category", "by_category", ("category", "relations")),
        ("relations by stage", "by_stage", ("stage", "generator", "relations")),
        ("relations by verdict", "by_verdict", ("verdict", "relations")),
        (
            "verdicts by rule or verifier",
            "verdicts_by_rule",
            ("rule", "kept", "dropped", "unverified"),
        ),
        (
            "verdicts by category",
            "verdicts_by_category",
            ("category", "kept", "dropped", "unverified"),
        ),
        ("errors by stage and kind", "errors_by_kind", ("stage", "kind", "errors")),
    ):
        lines += ["", title + ":"]
        rows = stats[key]
        if not rows:
            lines.append("  (none)")
        else:  # a header row: the numbers say what they count
            lines.append("  " + "  ".join(f"{c:<14}" for c in cols).rstrip())
        for r in rows:
            lines.append("  " + "  ".join(f"{r[c]!s:<14}" for c in cols).rstrip())
    return "\n".join(lines)
