"""DuckDB over a dataset root: one view per table, built from committed shards only.

Views are defined over the exact files the shard manifests name, so a shard that a killed
build left half-written is never visible. Tables nobody has written yet are still queryable
(empty, with their full schema), so analysts' SQL never depends on which stages ran.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from synthvg.schemas import TABLES, schema_of
from synthvg.storage.dataset import Dataset

READ_ONLY_STATEMENTS = {"SELECT", "EXPLAIN"}

# The analyst-facing views: physical tables joined into what the schema promises.
_IMAGES_VIEW = """
CREATE OR REPLACE VIEW images AS
SELECT i.*, m.depth_uri
FROM _images i
LEFT JOIN _depth_maps m USING (image_id)
"""

_REGIONS_VIEW = """
CREATE OR REPLACE VIEW regions AS
SELECT r.*,
       c.best_iou, c.best_proposal_id, c.kept,
       d.depth_median, d.depth_spread, d.depth_model
FROM _regions r
LEFT JOIN _region_checks c USING (image_id, region_id)
LEFT JOIN _region_depth d USING (image_id, region_id)
"""


# Relations carry the filters' verdict when the filters have judged them.
_RELATIONS_VIEW = """
CREATE OR REPLACE VIEW relations AS
SELECT r.* REPLACE (coalesce(v.verdict, r.verdict) AS verdict,
                    coalesce(v.verdict_reason, r.verdict_reason) AS verdict_reason),
       v.verdict_score, v.verified_by
FROM _relations r
LEFT JOIN _relation_verdicts v USING (relation_id)
"""

# SVG-RELATIONS: the teacher's relations that the filters kept (unverified ones are not in it).
_SVG_RELATIONS_VIEW = """
CREATE OR REPLACE VIEW svg_relations AS
SELECT * FROM relations WHERE stage = 'teacher' AND verdict = 'kept'
"""

# SVG-FULL: the editor's final graphs (relations a later filter dropped are left out).
_SVG_FULL_VIEW = """
CREATE OR REPLACE VIEW svg_full AS
SELECT * FROM relations WHERE stage = 'edit' AND verdict <> 'dropped'
"""


class ReadOnlyError(PermissionError):
    """A statement that would write was sent to a read-only query."""


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _create_source(con: duckdb.DuckDBPyConnection, name: str, files: list[str], schema: pa.Schema) -> None:
    if files:
        listing = ", ".join(_sql_str(f) for f in files)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
    else:
        con.register(f"{name}__empty", schema.empty_table())
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}__empty")


def connect(root: str | Dataset) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the dataset's views registered.

    Views: ``images`` (with the depth map's ``depth_uri``), ``regions`` (with the regions and
    depth stages' columns joined in),
    ``proposals``, ``relations`` (with the filters' verdicts applied), ``svg_relations``,
    ``svg_full``, ``descriptions``, ``edits``, ``generations``, ``errors``; plus the raw ``region_checks``,
    ``region_depth``, ``depth_maps`` and ``relation_verdicts``.
    """
    dataset = root if isinstance(root, Dataset) else Dataset(root)
    con = duckdb.connect(":memory:")
    if not dataset.is_local:
        con.register_filesystem(dataset.fs)
    for table, model in TABLES.items():
        _create_source(con, f"_{table}", dataset.table_files(table), schema_of(model))
    for table in TABLES:
        if table not in ("images", "regions", "relations"):
            con.execute(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _{table}")
    con.execute(_IMAGES_VIEW)
    con.execute(_REGIONS_VIEW)
    con.execute(_RELATIONS_VIEW)
    con.execute(_SVG_RELATIONS_VIEW)
    con.execute(_SVG_FULL_VIEW)
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse any statement that is not a query (DELETE, CREATE, COPY, ATTACH, SET, ...)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise ValueError(f"SQL does not parse: {e}") from None
    if not statements:
        raise ValueError("no SQL statement given")
    for st in statements:
        kind = st.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise ReadOnlyError(f"refused: {kind} statements are not allowed; the dataset is opened read-only")


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    """Rows of a query as dicts (column name -> value)."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def query(root: str | Dataset, sql: str) -> pa.Table:
    """Run a read-only query and return its result as an Arrow table."""
    con = connect(root)
    try:
        check_read_only(con, sql)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()
