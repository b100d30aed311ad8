"""What the explorer's pages show, read from one locked-down DuckDB database (no web code here).

:class:`Explorer` opens the dataset once (pinned to the version current at start, or
``as_of``) through :func:`synthvg.storage.connect`, the same sandbox ``synthvg sql`` uses: no
file outside the root, no extension, configuration locked. It holds a few cursors of that
database, one per request at a time.

Two things make pages fast on a dataset of the paper's size (146K images, 5.6M relations in
hundreds of files), where every query over a view opens every file:

- ``_x_images``: one row per image with its position and counts, built once at start; the
  gallery pages and counts read it instead of the views.
- a per-image file index: which committed files of each table hold an image's rows. An image's
  page runs each view's own definition (read back from DuckDB) with its sources narrowed to
  those files, so it opens a handful of files and still applies the views' joins (verdicts,
  region checks) exactly as ``synthvg sql`` does.
"""

from __future__ import annotations

import contextlib
import queue
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from synthvg.explorer.config import ExplorerConfig
from synthvg.schemas import TABLES, schema_of
from synthvg.schemas.vocabulary import CATEGORIES, RelationStage
from synthvg.storage import Dataset, SqlLimits, check_read_only, connect
from synthvg.storage.query import QueryTimeout, run_with_timeout

STAGES: tuple[str, ...] = typing.get_args(RelationStage)  # seed, teacher, robin, edit
VERDICTS = ("kept", "dropped", "unverified")
#: The views an image's page reads, each narrowed to the image's files.
IMAGE_VIEWS = ("images", "regions", "relations", "descriptions", "edits", "generations", "errors")

_VIEW_DEF = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+\S+\s+AS\s+(.*?);?\s*$", re.S | re.I
)
#: Image ids come from datasets ('<dataset>:<native id>'); never a path.
_BAD_ID = re.compile(r"(^[/\\~])|(\.\.)|(^[A-Za-z]:[/\\])|[\x00-\x1f]")


class NotFound(LookupError):
    """No such image (or an id that is a path, refused before any lookup)."""


@dataclass
class GalleryFilters:
    """The gallery's filters; every value is bound as a parameter, ``where`` runs sandboxed."""

    predicate: str | None = None
    category: str | None = None
    stage: str | None = None
    verdict: str | None = None
    label: str | None = None
    has_errors: bool | None = None
    where: str | None = None


@dataclass
class GalleryPage:
    images: list[dict]
    matched: int
    total: int
    regions: int
    relations: int
    page: int
    pages: int
    error: str | None = None


@dataclass
class ImageView:
    image: dict
    regions: list[dict]
    relations: dict[str, list[dict]]  # stage -> rows
    descriptions: dict[str, dict[int, list[str]]]  # stage -> region_id -> texts
    edits: list[dict]
    generations: list[dict]
    errors: list[dict]
    prev_id: str | None
    next_id: str | None
    position: int
    total: int
    names: dict[int, str] = field(default_factory=dict)


def check_image_id(image_id: str) -> str:
    """An id as the dataset writes them; paths (``../``, absolute, drive letters) are refused."""
    if not image_id or len(image_id) > 512 or _BAD_ID.search(image_id):
        raise NotFound(f"not an image id: {image_id[:80]!r}")
    return image_id


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _rows(cur: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> list[dict]:
    res = cur.execute(sql, params or [])
    names = [d[0] for d in res.description]
    return [dict(zip(names, row, strict=True)) for row in res.fetchall()]


class Explorer:
    """The dataset, opened once for the lifetime of a server; every method is read-only."""

    def __init__(self, config: ExplorerConfig):
        self.config = config
        latest = Dataset(config.root)
        latest.check_layout()
        self.version = config.as_of if config.as_of is not None else latest.version()
        self.dataset = Dataset(config.root, as_of=self.version)
        self.runs = latest.runs()
        self.limits = SqlLimits(
            memory_limit=config.memory_limit, threads=config.threads, timeout_s=config.sql_timeout_s
        )
        self._con = connect(self.dataset, limits=self.limits)
        self._files = {t: f for t, f in self.dataset.committed_files().items() if f}
        self._view_body = {
            name: _view_body(sql)
            for name, sql in self._con.execute(
                "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal"
            ).fetchall()
            if name in IMAGE_VIEWS
        }
        self._build_index()
        self._pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        for _ in range(config.connections):
            self._pool.put(self._con.cursor())

    # ------------------------------------------------------------------ setup
    def _build_index(self) -> None:
        """``_x_images``, empty typed copies of every source, and the per-image file index."""
        con = self._con
        for table in TABLES:  # typed, empty: what a source narrowed to no file reads
            con.execute(f"CREATE TABLE _x_empty_{table} AS SELECT * FROM _{table} LIMIT 0")
        self._file_ids: list[str] = []
        self._unindexed: set[str] = set()
        file_no: dict[str, int] = {}
        per_image: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for table, files in sorted(self._files.items()):
            if "image_id" not in schema_of(TABLES[table]).names:
                continue
            for f in files:
                file_no.setdefault(f, len(file_no))
            listing = ", ".join(_sql_str(f) for f in files)
            rows = con.execute(
                f"SELECT image_id, list(DISTINCT filename) FROM read_parquet([{listing}], "
                "filename = true, union_by_name = true, hive_partitioning = false) "
                "WHERE image_id IS NOT NULL GROUP BY 1"
            ).fetchall()
            if any(n not in file_no for _, names in rows for n in names):
                # DuckDB spelled a file otherwise than the commit record: read the whole table.
                self._unindexed.add(table)
                continue
            for image_id, names in rows:
                per_image.setdefault(image_id, []).append(
                    (table, tuple(sorted(file_no[n] for n in names)))
                )
        self._file_ids = [f for f, _ in sorted(file_no.items(), key=lambda kv: kv[1])]
        # Images of one shard share their files: keep each distinct set once.
        groups: dict[tuple, int] = {}
        self._group_of: dict[str, int] = {}
        for image_id, entries in per_image.items():
            key = tuple(entries)
            self._group_of[image_id] = groups.setdefault(key, len(groups))
        self._groups: list[dict[str, tuple[int, ...]]] = [dict(k) for k in groups]

        # Every column of the images view (the gallery's WHERE runs on this copy), plus the
        # image's position and counts.
        con.execute(
            """
            CREATE TABLE _x_images AS
            WITH g AS (SELECT image_id, count(*) AS n FROM _regions GROUP BY 1),
                 r AS (SELECT image_id, count(*) AS n FROM _relations GROUP BY 1),
                 e AS (SELECT image_id, count(*) AS n FROM _errors WHERE image_id IS NOT NULL GROUP BY 1)
            SELECT (row_number() OVER (ORDER BY i.image_id) - 1)::INTEGER AS pos, i.*,
                   coalesce(g.n, 0)::INTEGER AS n_regions, coalesce(r.n, 0)::INTEGER AS n_relations,
                   coalesce(e.n, 0)::INTEGER AS n_errors
            FROM images i LEFT JOIN g USING (image_id) LEFT JOIN r USING (image_id)
                 LEFT JOIN e USING (image_id)
            ORDER BY pos
            """
        )
        self.total_images: int = con.execute("SELECT count(*) FROM _x_images").fetchall()[0][0]
        # The gallery's filters, in memory and small: one row per relation (its image's
        # position and four enum columns, verdicts applied) and per distinct (image, label).
        self._facets: dict[str, set[str]] = {}
        self._facet_order: dict[str, list[str]] = {}
        types: dict[str, str] = {}  # the column's type in the facet tables
        for col, source in (
            ("predicate", "_relations"),
            ("category", "_relations"),
            ("stage", "_relations"),
            ("verdict", "relations"),
            ("label", "_regions"),
        ):
            values = [
                r[0]
                for r in con.execute(
                    f"SELECT DISTINCT {col} FROM {source} WHERE {col} IS NOT NULL ORDER BY 1"
                ).fetchall()
            ]
            self._facets[col] = set(values)
            self._facet_order[col] = values  # the enum's order: enum_code() is the index
            kind = "VARCHAR"
            if values:
                kind = f"_x_{col}"
                con.execute(f"CREATE TYPE {kind} AS ENUM ({', '.join(map(_sql_str, values))})")
            types[col] = kind
        con.execute(
            f"""
            CREATE TABLE _x_relations AS
            SELECT x.pos, r.predicate::{types["predicate"]} AS predicate,
                   r.category::{types["category"]} AS category, r.stage::{types["stage"]} AS stage,
                   r.verdict::{types["verdict"]} AS verdict
            FROM relations r JOIN _x_images x USING (image_id)
            ORDER BY predicate, pos  -- sorted: a predicate's rows are a few row groups (zone maps)
            """
        )
        # Without a predicate, the kinds of relation an image has are enough (far fewer rows).
        con.execute(
            "CREATE TABLE _x_kinds AS SELECT DISTINCT pos, category, stage, verdict FROM _x_relations"
        )
        # ... and, as the enums are small (6 x 4 x 3 kinds), a bit per kind in each image's row:
        # a category/stage/verdict filter is then one AND over the images.
        sizes = [len(self._facets[c]) for c in ("category", "stage", "verdict")]
        self._kind_bits = 0 < sizes[0] * sizes[1] * sizes[2] <= 127
        con.execute("ALTER TABLE _x_images ADD COLUMN kinds HUGEINT DEFAULT 0")
        if self._kind_bits:
            _, nst, nver = sizes
            con.execute(
                f"""
                UPDATE _x_images SET kinds = k.bits FROM (
                    SELECT pos, bit_or(1::HUGEINT << (enum_code(category) * {nst * nver}
                        + enum_code(stage) * {nver} + enum_code(verdict))::INTEGER) AS bits
                    FROM _x_kinds GROUP BY 1) k
                WHERE _x_images.pos = k.pos
                """
            )
        con.execute(
            f"""
            CREATE TABLE _x_labels AS
            SELECT DISTINCT x.pos, g.label::{types["label"]} AS label
            FROM _regions g JOIN _x_images x USING (image_id) WHERE g.label IS NOT NULL
            ORDER BY label, pos
            """
        )
        self.options = {
            "categories": list(CATEGORIES),
            "stages": list(STAGES),
            "verdicts": list(VERDICTS),
            "predicates": [
                r[0]
                for r in con.execute(
                    "SELECT predicate::VARCHAR FROM _x_relations GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 200"
                ).fetchall()
            ],
            "labels": [
                r[0]
                for r in con.execute(
                    "SELECT label::VARCHAR FROM _x_labels GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 200"
                ).fetchall()
            ],
        }

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One of the server's cursors, for one request (DuckDB cursors are not shared)."""
        cur = self._pool.get()
        try:
            yield cur
        finally:
            self._pool.put(cur)

    def close(self) -> None:
        while not self._pool.empty():
            self._pool.get_nowait().close()
        self._con.close()

    # ------------------------------------------------------------------ gallery
    def gallery(self, filters: GalleryFilters, page: int = 1) -> GalleryPage:
        """One page of images matching every filter, with the counts over all that match."""
        conds, params = [], []
        rel = []
        for col in ("predicate", "category", "stage", "verdict", "label"):
            value = getattr(filters, col)
            if value and value not in self._facets[col]:
                conds.append("false")  # no such value: nothing matches (and no enum cast fails)
            elif value and col == "label":
                conds.append("pos IN (SELECT pos FROM _x_labels WHERE label = ?)")
                params.append(value)
            elif value:
                rel.append(f"{col} = ?")
                params.insert(len(rel) - 1, value)
        if rel and not filters.predicate and self._kind_bits and "false" not in conds:
            conds.insert(0, "(kinds & ?::HUGEINT) <> 0")
            params[: len(rel)] = [str(self._kind_mask(filters))]
        elif rel:  # images with one relation meeting all of them
            table = "_x_relations" if filters.predicate else "_x_kinds"
            conds.insert(0, f"pos IN (SELECT pos FROM {table} WHERE {' AND '.join(rel)})")
        if filters.has_errors is not None:
            conds.append("n_errors > 0" if filters.has_errors else "n_errors = 0")
        with_ = ""
        with self.cursor() as cur:
            if filters.where and filters.where.strip():
                inner = f"SELECT image_id FROM images WHERE (\n{filters.where}\n)"
                try:
                    check_read_only(cur, inner)
                except (ValueError, PermissionError) as e:
                    return GalleryPage([], 0, self.total_images, 0, 0, 1, 1, error=_one_line(e))
                # Top-level CTEs: `images` is the in-memory copy of the view, and the WHERE's
                # columns resolve against it only, never against the outer query.
                with_ = (
                    "WITH images AS (SELECT * EXCLUDE (pos, n_regions, n_relations, n_errors, kinds) "
                    f"FROM _x_images), _where AS ({inner}) "
                )
                conds.append("image_id IN (SELECT image_id FROM _where)")
            where = " AND ".join(conds) or "true"
            size = self.config.page_size
            try:
                counts = run_with_timeout(
                    cur,
                    f"{with_}SELECT count(*) AS n, coalesce(sum(n_regions), 0) AS g, "
                    f"coalesce(sum(n_relations), 0) AS r FROM _x_images WHERE {where}",
                    self.limits.timeout_s,
                    params,
                ).to_pylist()[0]
                pages = max(1, -(-counts["n"] // size))
                page = min(max(page, 1), pages)
                rows = run_with_timeout(
                    cur,
                    f"{with_}SELECT pos, image_id, file_uri, width, height, n_regions, n_relations, "
                    f"n_errors FROM _x_images WHERE {where} ORDER BY pos LIMIT {size} OFFSET {(page - 1) * size}",
                    self.limits.timeout_s,
                    params,
                ).to_pylist()
            except (QueryTimeout, duckdb.Error) as e:
                return GalleryPage([], 0, self.total_images, 0, 0, 1, 1, error=_one_line(e))
        return GalleryPage(
            rows, counts["n"], self.total_images, counts["g"], counts["r"], page, pages
        )

    def _kind_mask(self, filters: GalleryFilters) -> int:
        """The bits of every (category, stage, verdict) kind the filters admit."""
        axes = [self._facet_order[c] for c in ("category", "stage", "verdict")]
        wanted = [filters.category, filters.stage, filters.verdict]
        nst, nver = len(axes[1]), len(axes[2])
        mask = 0
        for c, cat in enumerate(axes[0]):
            for st, stage in enumerate(axes[1]):
                for v, verdict in enumerate(axes[2]):
                    if all(
                        w in (None, x) for w, x in zip(wanted, (cat, stage, verdict), strict=True)
                    ):
                        mask |= 1 << (c * nst * nver + st * nver + v)
        return mask

    # ------------------------------------------------------------------ one image
    def _narrowed(self, view: str, files: dict[str, tuple[int, ...]]) -> str:
        """``view``'s definition with each source it reads narrowed to the image's files."""
        body = self._view_body[view]
        ctes = []
        for table in TABLES:
            if (
                not re.search(rf"\b_{table}\b", body)
                or table not in self._files
                or table in self._unindexed
            ):
                continue  # not read, no file at all (its source is already empty), or unindexed
            mine = files.get(table, ())
            source = f"SELECT * FROM _x_empty_{table}"
            if mine:
                listing = ", ".join(_sql_str(self._file_ids[i]) for i in mine)
                source += (
                    f" UNION ALL BY NAME SELECT * FROM read_parquet([{listing}], union_by_name = true, "
                    "hive_partitioning = false) WHERE image_id = $id"
                )
            ctes.append(f"_{table} AS ({source})")
        with_ = f"WITH {', '.join(ctes)} " if ctes else ""
        return f"{with_}SELECT * FROM ({body}) v WHERE image_id = $id"

    def view_rows(self, view: str, image_id: str, order: str = "") -> list[dict]:
        """The rows of ``view`` for one image, as ``SELECT * FROM view WHERE image_id = ?``."""
        group = self._group_of.get(image_id)
        files = self._groups[group] if group is not None else {}
        sql = self._narrowed(view, files) + (f" ORDER BY {order}" if order else "")
        with self.cursor() as cur:
            return _rows(cur, sql, {"id": image_id})

    def image(self, image_id: str) -> ImageView:
        check_image_id(image_id)
        with self.cursor() as cur:
            found = _rows(cur, "SELECT * FROM _x_images WHERE image_id = ?", [image_id])
            if not found:
                raise NotFound(f"no image {image_id!r} in this dataset")
            pos = found[0]["pos"]
            neighbours = dict(
                cur.execute(
                    "SELECT pos, image_id FROM _x_images WHERE pos IN (?, ?)", [pos - 1, pos + 1]
                ).fetchall()
            )
        image = found[0]  # every column of the images view, kept in memory
        regions = self.view_rows("regions", image_id, "region_id")
        relations: dict[str, list[dict]] = {s: [] for s in STAGES}
        for r in self.view_rows("relations", image_id, "stage, subject_id, object_id, predicate"):
            relations.setdefault(r["stage"], []).append(r)
        descriptions: dict[str, dict[int, list[str]]] = {}
        for d in self.view_rows("descriptions", image_id, "stage, region_id"):
            descriptions.setdefault(d["stage"], {}).setdefault(d["region_id"], []).append(
                d["description"]
            )
        names = {r["region_id"]: r.get("label") or "region" for r in regions}
        return ImageView(
            image=image,
            regions=regions,
            relations=relations,
            descriptions=descriptions,
            edits=self.view_rows("edits", image_id, "action, region_id, object_id"),
            generations=self.view_rows("generations", image_id, "stage, turn, subject_id"),
            errors=self.view_rows("errors", image_id, "created_at, stage, kind"),
            prev_id=neighbours.get(pos - 1),
            next_id=neighbours.get(pos + 1),
            position=pos + 1,
            total=self.total_images,
            names=names,
        )

    def is_image_id(self, value) -> bool:
        return isinstance(value, str) and value in self._group_of

    def image_row(self, image_id: str) -> dict:
        """The gallery row of an image (file, size), for the file and thumbnail routes."""
        check_image_id(image_id)
        with self.cursor() as cur:
            found = _rows(
                cur,
                "SELECT image_id, file_uri, width, height FROM _x_images WHERE image_id = ?",
                [image_id],
            )
        if not found:
            raise NotFound(f"no image {image_id!r} in this dataset")
        return found[0]

    # ------------------------------------------------------------------ SQL
    def sql(self, query: str, max_rows: int) -> tuple[pa.Table, bool]:
        """One read-only query (the rules of ``synthvg sql``): at most ``max_rows`` rows, and
        whether there were more. Raises ReadOnlyError, QueryTimeout, ValueError, duckdb.Error."""
        with self.cursor() as cur:
            check_read_only(cur, query)
            table = run_with_timeout(cur, query, self.limits.timeout_s, max_rows=max_rows + 1)
        return table.slice(0, max_rows), table.num_rows > max_rows

    # ------------------------------------------------------------------ dataset
    def dataset_info(self) -> dict:
        from synthvg.stats import compute_stats
        from synthvg.storage.versions import list_versions

        stats = compute_stats(self.dataset)
        error: str | None = None
        try:
            versions = list_versions(Dataset(self.config.root))
        except Exception as e:  # a damaged log: the page says so, the rest still shows
            versions, error = [], _one_line(e)
        cost = {r.run_id: sum(s.metrics.get("cost_usd", 0.0) for s in r.stages) for r in self.runs}
        flow_runs = {r.run_id: r.prefect_flow_run_id for r in self.runs}
        return {
            "stats": stats,
            "versions": versions,
            "versions_error": error,
            "runs": self.runs,
            "cost": cost,
            "flow_runs": {k: v for k, v in flow_runs.items() if v},
        }


def _view_body(sql: str) -> str:
    """The query of a ``CREATE VIEW name AS query`` statement."""
    match = _VIEW_DEF.match(sql)
    if match is None:
        raise ValueError(f"not a view definition: {sql[:80]!r}")
    return match.group(1)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]
