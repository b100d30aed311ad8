"""DuckDB over a dataset root: one view per table, built from committed shards only.

Views are defined over the exact files the shard manifests name, so a shard that a killed
build left half-written is never visible. Tables nobody has written yet are still queryable
(empty, with their full schema), so analysts' SQL never depends on which stages ran.

Every connection is a sandbox once its views exist: files outside the dataset root cannot be
read, nothing can be written through DuckDB's configuration (profiling, logging), extensions
are neither installed nor loaded, and the configuration is locked. User SQL goes through
:func:`check_read_only` as well, which admits exactly one query (or ``EXPLAIN`` of one), since
DuckDB could still ``COPY`` into the dataset root itself.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import duckdb

from synthvg.storage.columns import COLUMNS
from synthvg.storage.snapshot import Snapshot

if TYPE_CHECKING:
    import pyarrow as pa

    from synthvg.storage.dataset import Dataset

T = TypeVar("T")

#: Functions refused in user SQL even inside a query: they change settings or write files.
#: (The locked configuration refuses them too; this names them in the error.)
REFUSED_FUNCTIONS = frozenset(
    {
        "enable_profiling",
        "disable_profiling",
        "enable_logging",
        "disable_logging",
        "truncate_duckdb_logs",
        "checkpoint",
        "force_checkpoint",
    }
)

_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?", re.IGNORECASE)

# The analyst-facing views that join physical tables: view -> (alias of its base table, joins);
# a join is (table, alias, USING columns, [(column, expression)]). A join is left out when its
# table has no files (its columns are NULL then): even an empty join costs a hash join per query.
_JOINED_VIEWS: dict[str, tuple[str, list[tuple[str, str, str, list[tuple[str, str]]]]]] = {
    "images": ("i", [("depth_maps", "m", "image_id", [("depth_uri", "m.depth_uri")])]),
    "regions": (
        "r",
        [
            (
                "region_checks",
                "c",
                "image_id, region_id",
                [
                    ("best_iou", "c.best_iou"),
                    ("best_proposal_id", "c.best_proposal_id"),
                    ("kept", "c.kept"),
                ],
            ),
            (
                "region_depth",
                "d",
                "image_id, region_id",
                [
                    ("depth_median", "d.depth_median"),
                    ("depth_spread", "d.depth_spread"),
                    ("depth_model", "d.depth_model"),
                ],
            ),
        ],
    ),
}

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


class QueryTimeout(RuntimeError):
    """A query ran past its time limit and was cancelled."""


@dataclass(frozen=True)
class SqlLimits:
    """Resources one query connection may take (None: DuckDB's default).

    A dataclass, not a pydantic model: building a model class costs ``synthvg sql`` about 10 ms
    of start-up (3% of its budget), for three fields checked here."""

    #: DuckDB memory_limit, e.g. '2GB'
    memory_limit: str | None = None
    #: DuckDB threads (at least 1)
    threads: int | None = None
    #: cancel a query that runs longer (seconds, more than 0)
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.memory_limit is not None and not isinstance(self.memory_limit, str):
            raise ValueError(f"memory_limit must be a string like '2GB', not {self.memory_limit!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1
        ):
            raise ValueError(f"threads must be an integer of at least 1, not {self.threads!r}")
        if self.timeout_s is not None and (
            isinstance(self.timeout_s, bool)
            or not isinstance(self.timeout_s, int | float)
            or not self.timeout_s > 0
        ):
            raise ValueError(
                f"timeout_s must be a number of seconds above 0, not {self.timeout_s!r}"
            )


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _source(
    name: str, files: list[tuple[str, str | None]], columns: tuple[tuple[str, str], ...]
) -> list[str]:
    """The statements of a view over a table's files. Files that all record one schema id are
    read as they are; otherwise (files written by an older synthvg, or before schema ids were
    recorded) DuckDB unifies their columns by name, which reads every file's footer whenever a
    query binds. A table without files is an empty table of its columns (``columns``)."""
    if files:
        listing = ", ".join(_sql_str(f) for f, _ in files)
        ids = {i for _, i in files}
        union = "" if len(ids) == 1 and None not in ids else "union_by_name = true, "
        return [
            f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet([{listing}], {union}hive_partitioning = false)"
        ]
    # a table in the database (cursors see it too), typed as the table's files read
    ddl = ", ".join(f'"{column}" {kind}' for column, kind in columns)
    return [
        f"CREATE OR REPLACE TABLE {name}__empty ({ddl})",
        f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {name}__empty",
    ]


def _null_as(table: str, column: str) -> str:
    """``CAST(NULL AS <column's type>) AS column``: the column of a table without files (so
    without a join), typed as if joined."""
    return f"CAST(NULL AS {dict(COLUMNS[table])[column]}) AS {column}"


def _joined_view(view: str, present: set[str]) -> str:
    alias, joins = _JOINED_VIEWS[view]
    columns, clauses = [f"{alias}.*"], [f"FROM _{view} {alias}"]
    for table, j, using, cols in joins:
        if table in present:
            clauses.append(f"LEFT JOIN _{table} {j} USING ({using})")
            columns += [f"{expr} AS {name}" for name, expr in cols]
        else:
            columns += [_null_as(table, name) for name, _ in cols]
    return f"CREATE OR REPLACE VIEW {view} AS SELECT {', '.join(columns)} {' '.join(clauses)}"


def _lock_down(
    con: duckdb.DuckDBPyConnection, dataset: Dataset | Snapshot, limits: SqlLimits
) -> None:
    """No file outside the root, no extension, no further configuration (see the module doc)."""
    root = dataset.uri("").rstrip("/") + "/"
    # DuckDB spells a registered filesystem's URL with three slashes (memory:///root/...).
    allowed = [root] + ([root.replace("://", ":///", 1)] if "://" in root else [])
    settings = [
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        f"SET allowed_directories = [{', '.join(_sql_str(a) for a in allowed)}]",
        "SET enable_external_access = false",
    ]
    if limits.memory_limit:
        settings.append(f"SET memory_limit = {_sql_str(limits.memory_limit)}")
    if limits.threads:
        settings.append(f"SET threads = {int(limits.threads)}")
    con.execute(";\n".join([*settings, "SET lock_configuration = true"]))


def connect(
    root: str | os.PathLike | Dataset | Snapshot, *, limits: SqlLimits | None = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the dataset's views registered, locked down.

    Views: ``images`` (with the depth map's ``depth_uri``), ``regions`` (with the regions and
    depth stages' columns joined in),
    ``proposals``, ``relations`` (with the filters' verdicts applied), ``svg_relations``,
    ``svg_full``, ``descriptions``, ``edits``, ``generations``, ``errors``; plus the raw ``region_checks``,
    ``region_depth``, ``depth_maps`` and ``relation_verdicts``.

    The connection reads only files under the dataset root and cannot change its settings
    (``limits`` apply before the lock). It still runs whatever statement it is given, so send
    untrusted SQL through :func:`query` (or :func:`check_read_only` first).

    ``root`` is a path or URL (the latest version), a :class:`~synthvg.storage.snapshot.Snapshot`
    or a :class:`~synthvg.storage.dataset.Dataset` (either one at its ``as_of`` version). A path
    is read through a Snapshot: a local root's commit log is read without pyarrow or deltalake.
    """
    dataset = Snapshot(root) if isinstance(root, str | os.PathLike) else root
    files = dataset.committed_file_schemas()
    # A Snapshot read its log through a DuckDB connection: the views take it over (a second
    # database would cost as much CPU as binding all the views).
    con = dataset.take_connection() if isinstance(dataset, Snapshot) else None
    if con is None:
        con = duckdb.connect(":memory:")
    # Committed files never change (each commit writes new names), so their Parquet footers are
    # read once per connection: binding the views and every later query reuse them.
    statements = ["SET parquet_metadata_cache = true"]
    if not dataset.is_local:
        con.register_filesystem(dataset.fs)
    for table, columns in COLUMNS.items():
        statements += _source(f"_{table}", files.get(table, []), columns)
    for table in COLUMNS:
        if table not in ("images", "regions", "relations"):
            statements.append(f"CREATE OR REPLACE VIEW {table} AS SELECT * FROM _{table}")
    present = {t for t, f in files.items() if f}
    statements += [_joined_view(view, present) for view in _JOINED_VIEWS]
    if "relation_verdicts" in present:
        statements.append(_RELATIONS_VIEW)
    else:
        nulls = ", ".join(
            _null_as("relation_verdicts", c) for c in ("verdict_score", "verified_by")
        )
        statements.append(
            f"CREATE OR REPLACE VIEW relations AS SELECT r.*, {nulls} FROM _relations r"
        )
    statements += [_SVG_RELATIONS_VIEW, _SVG_FULL_VIEW]
    con.execute(";\n".join(s.strip().rstrip(";") for s in statements))
    _lock_down(con, dataset, limits or SqlLimits())
    return con


def _called_functions(con: duckdb.DuckDBPyConnection, sql: str) -> set[str]:
    """Names of every function a query calls (scalar or table), from DuckDB's own parse tree."""
    (tree,) = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0]
    names: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("function_name"), str):
                names.add(node["function_name"].lower())
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json.loads(tree))
    return names


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Admit exactly one query, or EXPLAIN [ANALYZE] of one; refuse everything else.

    Refused: every statement that is not a query (DELETE, CREATE, COPY, ATTACH, SET, PRAGMA,
    ...), several statements at once, EXPLAIN of anything but a query (``EXPLAIN ANALYZE`` runs
    what it explains), and queries calling functions that write or reconfigure (profiling, logging).
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise ValueError(f"SQL does not parse: {e}") from None
    if not statements:
        raise ValueError("no SQL statement given")
    if len(statements) > 1:
        raise ReadOnlyError(f"refused: one statement per query ({len(statements)} given)")
    (st,) = statements
    inner = st
    if st.type.name == "EXPLAIN":
        explained = _EXPLAIN_PREFIX.sub("", st.query, count=1)
        inner_statements = con.extract_statements(explained) if explained.strip() else []
        if len(inner_statements) != 1:
            raise ReadOnlyError("refused: EXPLAIN takes exactly one query")
        inner = inner_statements[0]
    if inner.type.name != "SELECT":
        what = f"EXPLAIN of {inner.type.name}" if inner is not st else inner.type.name
        raise ReadOnlyError(
            f"refused: {what} statements are not allowed; the dataset is opened read-only"
        )
    try:
        refused = _called_functions(con, inner.query) & REFUSED_FUNCTIONS
    except (
        duckdb.Error,
        ValueError,
    ):  # statements json_serialize_sql cannot express (DESCRIBE, SHOW, ...)
        refused = set()
    if refused:
        raise ReadOnlyError(
            f"refused: {', '.join(f'{f}()' for f in sorted(refused))} changes settings or writes files"
        )


def _with_timeout(
    con: duckdb.DuckDBPyConnection, timeout_s: float | None, run: Callable[[], T]
) -> T:
    """``run()``, cancelled (:class:`QueryTimeout`) after ``timeout_s`` seconds."""
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        return run()
    except duckdb.InterruptException:
        raise QueryTimeout(f"query cancelled at its time limit of {timeout_s:g} s") from None
    finally:
        if timer:
            timer.cancel()


def run_with_timeout(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    timeout_s: float | None,
    params: list | dict | None = None,
    max_rows: int | None = None,
) -> pa.Table:
    """Run ``sql`` to an Arrow table, cancelling it after ``timeout_s`` seconds; with
    ``max_rows``, only that many rows are produced (the query stops there)."""

    def run() -> pa.Table:
        rel = con.sql(sql, params=params)
        if max_rows is not None:
            rel = rel.limit(max_rows)
        return rel.to_arrow_table()

    return _with_timeout(con, timeout_s, run)


#: DuckDB types whose Python values (``fetchall``) are the values Arrow gives (``to_pylist`` of
#: the same result); lists and structs of them too. Others (MAP, INTERVAL, HUGEINT, UUID,
#: fixed-size ARRAY, BIT, TIMETZ, ...) convert differently, so their results go through Arrow.
#: tests/test_query_rows.py holds the two conversions equal.
PLAIN_TYPES = frozenset(
    {
        "null",
        "boolean",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "float",
        "double",
        "decimal",
        "varchar",
        "blob",
        "enum",
        "date",
        "time",
        "timestamp",
        "timestamp_s",
        "timestamp_ms",
        "timestamp with time zone",
    }
)


def _plain(kind: duckdb.sqltypes.DuckDBPyType) -> bool:
    if kind.id in ("list", "struct"):
        return all(
            isinstance(child, duckdb.sqltypes.DuckDBPyType) and _plain(child)
            for _, child in kind.children
        )
    return kind.id in PLAIN_TYPES


def run_rows(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    timeout_s: float | None,
    params: list | dict | None = None,
    max_rows: int | None = None,
) -> tuple[list[str], list[dict]]:
    """:func:`run_with_timeout`'s result as (column names, rows as dicts), with the values Arrow
    gives, but fetched without Arrow (pyarrow is not imported) when every column is of a
    :data:`PLAIN_TYPES` type."""

    def run() -> tuple[list[str], list[dict]]:
        rel = con.sql(sql, params=params)
        if max_rows is not None:
            rel = rel.limit(max_rows)
        names = list(rel.columns)
        if all(_plain(kind) for kind in rel.types):
            return names, [dict(zip(names, row, strict=True)) for row in rel.fetchall()]
        table = rel.to_arrow_table()
        return table.column_names, table.to_pylist()

    return _with_timeout(con, timeout_s, run)


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict]:
    """Rows of a query as dicts (column name -> value)."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _sandboxed(
    root: str | os.PathLike | Dataset | Snapshot,
    sql: str,
    limits: SqlLimits | None,
    run: Callable[[duckdb.DuckDBPyConnection, str, float | None], T],
) -> T:
    """Open ``root``, refuse a statement that could write (:func:`check_read_only`), run it."""
    limits = limits or SqlLimits()
    con = connect(root, limits=limits)
    try:
        check_read_only(con, sql)
        return run(con, sql, limits.timeout_s)
    finally:
        con.close()


def query(
    root: str | os.PathLike | Dataset | Snapshot, sql: str, *, limits: SqlLimits | None = None
) -> pa.Table:
    """Run one read-only query (see :func:`check_read_only`) and return its result as Arrow."""
    return _sandboxed(root, sql, limits, run_with_timeout)


def query_rows(
    root: str | os.PathLike | Dataset | Snapshot, sql: str, *, limits: SqlLimits | None = None
) -> tuple[list[str], list[dict]]:
    """:func:`query`, returning (column names, rows as dicts) as :func:`run_rows` does."""
    return _sandboxed(root, sql, limits, run_rows)
