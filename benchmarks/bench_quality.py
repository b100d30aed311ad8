"""Agreement with human graphs (`synthvg evaluate quality`) on a large synthetic root.

Builds (once, cached in --root) a root through the storage's own commit path: --images images
with 20 regions, 21 human seed relations each (models ``visual-genome-1.4``, ``gqa-1.1`` or
both, so the seed rows compare two sources) and 38 ``edit`` relations each, a third of them
the human triplets, the rest other pairs or predicates. Then, interleaved --repeat times
(medians):

  agreement    ``synthvg.eval.quality.agreement(root)``: the sets and joins in DuckDB
  rows->Python the floor of computing it in Python: fetching the relations the comparison
               needs as dicts (what a Python implementation must hold before it starts)

Usage: python benchmarks/bench_quality.py [--root DIR] [--images 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import _SHARD_SQL, _no_masks  # noqa: E402

HUMAN = """
    SELECT md5('h:' || i || ':' || k) AS relation_id, 'svg:' || i AS image_id,
           (k % 20)::BIGINT AS subject_id, ((k * 3 + 1) % 20)::BIGINT AS object_id,
           'pred' || (k % 40) AS predicate, 'pred' || (k % 40) AS predicate_raw,
           (['spatial', 'interactional', 'functional', 'social', 'emotional'])[1 + (k % 5)] AS category,
           'seed' AS stage, 'human' AS generator, 'unverified' AS verdict, NULL AS verdict_reason,
           NULL::DOUBLE AS score,
           (['visual-genome-1.4', 'gqa-1.1', 'visual-genome-1.4+gqa-1.1'])[1 + (k % 3)] AS model,
           NULL AS prompt_version, 'bench' AS run_id
    FROM range($lo, $hi) t(i), range(0, 21) u(k)"""

EDIT = """
    SELECT md5('e:' || i || ':' || k) AS relation_id, 'svg:' || i AS image_id,
           (k % 20)::BIGINT AS subject_id,
           (CASE WHEN k < 13 THEN (k * 3 + 1) % 20 ELSE (k + 7) % 20 END)::BIGINT AS object_id,
           'pred' || (CASE WHEN k < 13 THEN k % 40 ELSE (k * 11) % 60 END) AS predicate,
           'x' AS predicate_raw,
           (['spatial', 'interactional', 'functional', 'social', 'emotional'])[1 + (k % 5)] AS category,
           'edit' AS stage, 'model' AS generator, 'unverified' AS verdict, NULL AS verdict_reason,
           NULL::DOUBLE AS score, 'editor' AS model, NULL AS prompt_version, 'bench' AS run_id
    FROM range($lo, $hi) t(i), range(0, 38) u(k)"""


def build_root(root: Path, images: int, shard_size: int) -> None:
    import duckdb

    from synthvg.schemas import TABLES, schema_of
    from synthvg.storage import Dataset
    from synthvg.storage.dataset import utcnow

    ds = Dataset(str(root))
    ds.init()
    if ds.records():
        return
    con = duckdb.connect()
    mask_type = schema_of(TABLES["regions"]).field("mask").type
    t0 = time.perf_counter()
    for shard, lo in enumerate(range(0, images, shard_size)):
        p = {"lo": lo, "hi": min(lo + shard_size, images), "per_image_regions": 20}

        def q(sql: str, p=p):
            return con.sql(
                sql, params={k: v for k, v in p.items() if f"${k}" in sql}
            ).to_arrow_table()

        boxes = q(_SHARD_SQL["regions"])
        seeds = {
            "images": q(_SHARD_SQL["images"]),
            "regions": boxes.add_column(3, "mask", _no_masks(mask_type, boxes.num_rows)),
            "relations": q(HUMAN),
        }
        n = p["hi"] - lo
        ds.commit_shard(
            "seeds", shard, "bench", seeds, run_id="bench", image_count=n, started_at=utcnow()
        )
        ds.commit_shard(
            "edit",
            shard,
            "bench",
            {"relations": q(EDIT)},
            run_id="bench",
            image_count=n,
            started_at=utcnow(),
        )
    print(f"built {root} in {time.perf_counter() - t0:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", default=None)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import duckdb

    from synthvg.eval.quality import agreement, format_quality
    from synthvg.storage import connect, fetch_dicts

    root = Path(args.root or tempfile.mkdtemp(prefix="bench-quality-")) / "root"
    build_root(root, args.images, args.shard_size)
    times: dict[str, list[float]] = {"agreement": [], "rows->Python": []}
    report = None
    for _ in range(args.repeat):
        t = time.perf_counter()
        report = agreement(str(root))
        times["agreement"].append(time.perf_counter() - t)
        t = time.perf_counter()
        con = connect(str(root))
        rows = fetch_dicts(
            con,
            "SELECT image_id, stage, generator, subject_id, object_id, predicate, category, model "
            "FROM relations WHERE verdict <> 'dropped' OR stage = 'seed'",
        )
        con.close()
        times["rows->Python"].append(time.perf_counter() - t)
    n_rel = len(rows)
    del rows
    print(
        f"{platform.machine()}, DuckDB {duckdb.__version__}; {args.images:,} images, {n_rel:,} relations "
        f"(21 human + 38 edit per image); median of {args.repeat}"
    )
    print(f"{'what':<16}{'seconds':>10}")
    for k, v in times.items():
        print(f"{k:<16}{statistics.median(v):>10.2f}")
    print(
        f"rows->Python / agreement: {statistics.median(times['rows->Python']) / statistics.median(times['agreement']):.1f}x"
    )
    print(format_quality(report).split("\n\nby category")[0])


if __name__ == "__main__":
    main()
