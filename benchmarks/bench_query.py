"""Opening a paper-scale dataset and querying its views, against raw DuckDB on the same files.

Builds (once, cached in --root) a synthetic root the size of the SVG paper's dataset — by default
146,000 images, 2.92M regions, 5.58M relations (``stage='edit'``, as `synthvg import` of the
release writes them) in shards of 500 — through the storage's own commit path, then measures,
interleaved, ``--repeat`` times each (medians):

  connect      ``synthvg.storage.connect(root)``: manifests read, views created, sandbox applied
  each query   through a held connection's views, and the same query written against
               ``read_parquet`` of the very files the views read (the raw floor)

Usage: python benchmarks/bench_query.py [--root DIR] [--images 146000] [--repeat 5] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from _results import append_results

REPO = Path(__file__).resolve().parents[1]

# (name, SQL over the views, SQL over raw files: {relations} {regions} {images} are file lists)
QUERIES = [
    (
        "count relations",
        "SELECT count(*) FROM relations",
        "SELECT count(*) FROM read_parquet({relations})",
    ),
    (
        "relations by category",
        "SELECT category, count(*) FROM relations GROUP BY 1 ORDER BY 2 DESC",
        "SELECT category, count(*) FROM read_parquet({relations}) GROUP BY 1 ORDER BY 2 DESC",
    ),
    (
        "top-20 predicates of a stage",
        "SELECT predicate, count(*) AS n FROM relations WHERE stage = 'edit' GROUP BY 1 ORDER BY n DESC LIMIT 20",
        "SELECT predicate, count(*) AS n FROM read_parquet({relations}) WHERE stage = 'edit' GROUP BY 1 ORDER BY n DESC LIMIT 20",
    ),
    (
        "count svg_full",
        "SELECT count(*) FROM svg_full",
        "SELECT count(*) FROM read_parquet({relations}) WHERE stage = 'edit' AND verdict <> 'dropped'",
    ),
    (
        "one image's relations",
        "SELECT * FROM relations WHERE image_id = 'svg:77777'",
        "SELECT * FROM read_parquet({relations}) WHERE image_id = 'svg:77777'",
    ),
    (
        "regions per label",
        "SELECT label, count(*) FROM regions GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
        "SELECT label, count(*) FROM read_parquet({regions}) GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
    ),
    (
        "triples joined to regions (LIMIT 20)",
        "SELECT r.image_id, s.label, r.predicate, o.label FROM relations r "
        "JOIN regions s ON s.image_id = r.image_id AND s.region_id = r.subject_id "
        "JOIN regions o ON o.image_id = r.image_id AND o.region_id = r.object_id LIMIT 20",
        "SELECT r.image_id, s.label, r.predicate, o.label FROM read_parquet({relations}) r "
        "JOIN read_parquet({regions}) s ON s.image_id = r.image_id AND s.region_id = r.subject_id "
        "JOIN read_parquet({regions}) o ON o.image_id = r.image_id AND o.region_id = r.object_id LIMIT 20",
    ),
    (
        "objects and triplets per image",
        "SELECT i.image_id, count(DISTINCT g.region_id) AS objects, count(DISTINCT rel.relation_id) AS triplets FROM images i "
        "LEFT JOIN regions g USING (image_id) LEFT JOIN relations rel ON rel.image_id = i.image_id AND rel.verdict <> 'dropped' "
        "GROUP BY 1 ORDER BY triplets DESC LIMIT 10",
        "SELECT i.image_id, count(DISTINCT g.region_id) AS objects, count(DISTINCT rel.relation_id) AS triplets "
        "FROM read_parquet({images}) i LEFT JOIN read_parquet({regions}) g USING (image_id) "
        "LEFT JOIN read_parquet({relations}) rel ON rel.image_id = i.image_id AND rel.verdict <> 'dropped' "
        "GROUP BY 1 ORDER BY triplets DESC LIMIT 10",
    ),
]

_SHARD_SQL = {
    "images": """
        SELECT 'svg:' || i AS image_id, ['svg'] AS sources, NULL::BIGINT AS coco_id, NULL::BIGINT AS vg_id,
               NULL AS gqa_id, NULL::BIGINT AS psg_id, '/data/svg/' || i || '.jpg' AS file_uri,
               640::BIGINT AS width, 480::BIGINT AS height, NULL AS split, '' AS content_hash
        FROM range($lo, $hi) t(i)""",
    "regions": """
        SELECT 'svg:' || i AS image_id, r::BIGINT AS region_id,
               {'x1': r * 10.0, 'y1': r * 5.0, 'x2': r * 10.0 + 50, 'y2': r * 5.0 + 40} AS bbox,
               2000.0 AS area, 'label' || ((i * 7 + r) % 600) AS label, []::VARCHAR[] AS descriptions,
               []::VARCHAR[] AS attributes, false AS is_crowd,
               [{'dataset': 'svg', 'annotation_id': r::VARCHAR, 'category': NULL, 'split': NULL}] AS sources
        FROM range($lo, $hi) t(i), range(0, $per_image_regions) u(r)""",
    "relations": """
        SELECT md5('svg:' || i || ':' || k) AS relation_id, 'svg:' || i AS image_id,
               (k % $per_image_regions)::BIGINT AS subject_id, ((k + 1) % $per_image_regions)::BIGINT AS object_id,
               'pred' || ((i * 13 + k) % 900) AS predicate, 'pred' || ((i * 13 + k) % 900) AS predicate_raw,
               (['spatial', 'interactional', 'functional', 'social', 'emotional'])[1 + (k % 5)] AS category,
               'edit' AS stage, 'model' AS generator, 'unverified' AS verdict, NULL AS verdict_reason,
               NULL::DOUBLE AS score, 'svg-release' AS model, NULL AS prompt_version, 'bench' AS run_id
        FROM range($lo, $hi) t(i), range(0, $per_image_relations) u(k)""",
}


def _no_masks(mask_type, n: int):
    """A column of null masks (boxes only, as `synthvg import` writes regions without segmentation)."""
    import pyarrow as pa

    children = [
        pa.array([[]] * n, mask_type.field(0).type),
        pa.array([""] * n, mask_type.field(1).type),
    ]
    return pa.StructArray.from_arrays(children, fields=list(mask_type), mask=pa.array([True] * n))


def build_root(root: Path, images: int, regions: int, relations: int, shard_size: int) -> None:
    import duckdb

    from synthvg.schemas import TABLES, schema_of
    from synthvg.storage import Dataset
    from synthvg.storage.dataset import utcnow

    ds = Dataset(str(root))
    ds.init()
    if list(ds.manifests()):
        return
    con = duckdb.connect()
    mask_type = schema_of(TABLES["regions"]).field("mask").type
    t0 = time.perf_counter()
    for shard, lo in enumerate(range(0, images, shard_size)):
        params = {
            "lo": lo,
            "hi": min(lo + shard_size, images),
            "per_image_regions": regions,
            "per_image_relations": relations,
        }
        tables = {
            t: con.sql(
                sql, params={k: v for k, v in params.items() if f"${k}" in sql}
            ).to_arrow_table()
            for t, sql in _SHARD_SQL.items()
        }
        boxes = tables["regions"]
        seeds = {
            "images": tables["images"],
            "regions": boxes.add_column(3, "mask", _no_masks(mask_type, boxes.num_rows)),
        }
        n = params["hi"] - lo
        ds.commit_shard(
            "seeds", shard, "bench", seeds, run_id="bench", image_count=n, started_at=utcnow()
        )
        ds.commit_shard(
            "edit",
            shard,
            "bench",
            {"relations": tables["relations"]},
            run_id="bench",
            image_count=n,
            started_at=utcnow(),
        )
    from synthvg.storage.versions import compact

    compact(ds)  # as `synthvg import` and every build leave it: one commit-log file, checkpoints
    print(f"built {root} in {time.perf_counter() - t0:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--root", default=os.path.join(tempfile.gettempdir(), "synthvg-bench-paper-scale")
    )
    ap.add_argument("--images", type=int, default=146_000)
    ap.add_argument(
        "--regions", type=int, default=20, help="regions per image (2.92M at 146K images)"
    )
    ap.add_argument(
        "--relations", type=int, default=38, help="relations per image (5.55M at 146K images)"
    )
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()

    import duckdb

    from synthvg.storage import Dataset, connect

    root = Path(args.root)
    build_root(root, args.images, args.regions, args.relations, args.shard_size)
    ds = Dataset(str(root))
    files = ds.committed_files()
    listing = {
        t: "[" + ", ".join(f"'{f}'" for f in files.get(t, [])) + "]"
        for t in ("images", "regions", "relations")
    }
    raw = duckdb.connect()
    held = connect(ds)
    times: dict[str, list[float]] = {"connect": []}
    for name, _, _ in QUERIES:
        times[f"{name}|api"], times[f"{name}|raw"] = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        connect(ds).close()
        times["connect"].append(time.perf_counter() - t0)
        for name, view_sql, raw_sql in QUERIES:
            for kind, con, sql in (
                ("api", held, view_sql),
                ("raw", raw, raw_sql.format(**listing)),
            ):
                t0 = time.perf_counter()
                con.execute(sql).fetchall()
                times[f"{name}|{kind}"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    (n_rel,) = held.execute("SELECT count(*) FROM relations").fetchone()
    (n_reg,) = held.execute("SELECT count(*) FROM regions").fetchone()
    (n_img,) = held.execute("SELECT count(*) FROM images").fetchone()
    lines = [
        f"Paper-scale root ({n_img:,} images, {n_reg:,} regions, {n_rel:,} relations, {len(files['relations'])} shards; "
        f"{dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores, DuckDB {duckdb.__version__}, "
        f"median of {args.repeat} interleaved runs)",
        "",
        f"`connect()` (manifests read, views, sandbox): {med['connect']:.3f} s",
        "",
        "| query | views, held connection s | raw DuckDB on the same files s | views / raw |",
        "|---|---|---|---|",
    ]
    for name, _, _ in QUERIES:
        api, rawt = med[f"{name}|api"], med[f"{name}|raw"]
        lines.append(f"| {name} | {api:.3f} | {rawt:.3f} | {api / rawt:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        append_results(table, "Opening and querying a paper-scale root (benchmarks/bench_query.py)")


if __name__ == "__main__":
    main()
