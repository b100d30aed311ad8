"""`synthvg sql` and `connect()` cannot write, reconfigure or read outside the dataset root.

A regression corpus of every write and escape attempt seen so far, and more of the same
families. Each attempt must be refused (or fail) and leave every file of the root unchanged.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from synthvg.schemas import ImageRecord, RelationRecord, to_table
from synthvg.storage import Dataset, QueryTimeout, ReadOnlyError, SqlLimits, connect, query
from synthvg.storage.dataset import utcnow


def _relation(i: int) -> RelationRecord:
    return RelationRecord(
        relation_id=f"r{i}",
        image_id="coco:1",
        subject_id=1,
        object_id=2,
        predicate="on",
        predicate_raw="on",
        category="spatial",
        stage="teacher",
        generator="rules",
        model="rules",
        run_id="run",
    )


@pytest.fixture()
def root(tmp_path) -> Path:
    ds = Dataset(tmp_path / "root")
    ds.init()
    images = to_table(
        ImageRecord,
        [
            ImageRecord(
                image_id="coco:1",
                sources=["coco"],
                file_uri="/x/1.jpg",
                width=4,
                height=3,
                content_hash="h",
            )
        ],
    )
    ds.commit_shard(
        "seeds", 0, "fp", {"images": images}, run_id="r", image_count=1, started_at=utcnow()
    )
    ds.commit_shard(
        "teacher",
        0,
        "fp",
        {"relations": to_table(RelationRecord, [_relation(i) for i in range(5)])},
        run_id="r",
        image_count=1,
        started_at=utcnow(),
    )
    return tmp_path / "root"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _part_file(root: Path) -> str:
    return str(next((root / "tables" / "relations").glob("_stage=teacher/*/*/part-*.parquet")))


# Each entry: an attempt, with {root} and {part} standing for the dataset root and a committed file.
REFUSED = [
    # statements that write or reconfigure
    "DELETE FROM relations",
    "INSERT INTO relations SELECT * FROM relations",
    "UPDATE _relations SET predicate = 'x'",
    "CREATE TABLE t AS SELECT 1",
    "CREATE VIEW relations2 AS SELECT 1",
    "DROP VIEW relations",
    "ALTER VIEW relations RENAME TO r",
    "COPY (SELECT 1) TO '{root}/synthvg.json' (FORMAT csv)",
    "COPY relations TO '/tmp/synthvg-escape.csv'",
    "EXPORT DATABASE '{root}/export'",
    "IMPORT DATABASE '{root}'",
    "ATTACH '{root}/x.duckdb' AS x",
    "DETACH memory",
    "USE memory",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling",
    "CALL enable_profiling()",
    "CHECKPOINT",
    "VACUUM",
    "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "BEGIN TRANSACTION",
    # several statements at once
    "SELECT 1; DROP VIEW relations",
    "SELECT 1; SELECT 2",
    # EXPLAIN ANALYZE runs what it explains
    "EXPLAIN ANALYZE COPY (SELECT * FROM _relations WHERE stage='teacher' LIMIT 0) TO '{part}' (FORMAT parquet)",
    "EXPLAIN COPY (SELECT 1) TO '{root}/x.csv'",
    "EXPLAIN (FORMAT json) COPY (SELECT 1) TO '{root}/x.csv'",
    "explain   analyze   DELETE FROM relations",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    # functions that write files or change settings
    "SELECT * FROM enable_profiling(save_location='{root}/synthvg.json')",
    "SELECT * FROM enable_logging(storage='file', storage_path='{root}/log')",
    "SELECT * FROM relations, enable_logging(storage='file')",
    "SELECT count(*) FROM (SELECT * FROM disable_logging())",
    "SELECT * FROM checkpoint()",
]

# Reads outside the root: refused by DuckDB's sandbox (a permission or input error).
ESCAPES = [
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM read_text('{root}/../../../../etc/passwd')",
    "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "SELECT * FROM read_parquet('https://example.invalid/x.parquet')",
    "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    "SELECT * FROM read_json('/proc/self/environ')",
    "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{root}/q.csv''')",
    "SELECT * FROM parquet_metadata('/etc/passwd')",
]


@pytest.mark.parametrize("attempt", REFUSED)
def test_write_and_reconfigure_attempts_are_refused(root, attempt):
    before = _snapshot(root)
    with pytest.raises((ReadOnlyError, ValueError)):
        query(str(root), attempt.format(root=root, part=_part_file(root)))
    assert _snapshot(root) == before
    assert query(str(root), "SELECT count(*) AS n FROM relations").to_pylist() == [{"n": 5}]


@pytest.mark.parametrize("attempt", ESCAPES)
def test_reads_outside_the_root_fail(root, attempt):
    before = _snapshot(root)
    with pytest.raises((ReadOnlyError, ValueError, duckdb.Error)):
        query(str(root), attempt.format(root=root))
    assert _snapshot(root) == before


def test_a_connection_is_locked_even_for_statements_it_runs(root):
    """`connect()` for Python users: settings are locked, files outside the root unreadable."""
    con = connect(str(root))
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error, match="locked"):
        con.execute("SELECT * FROM enable_profiling(save_location='x')")
    with pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_text('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error):
        con.execute("INSTALL httpfs")
    assert con.execute("SELECT count(*) FROM relations").fetchall() == [(5,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT predicate, count(*) FROM relations GROUP BY 1",
        "WITH a AS (SELECT * FROM relations) SELECT count(*) FROM a",
        "FROM relations LIMIT 1",
        "DESCRIBE relations",
        "SUMMARIZE images",
        "SHOW TABLES",
        "EXPLAIN SELECT * FROM relations",
        "EXPLAIN ANALYZE SELECT count(*) FROM relations",
        "SELECT * FROM relations;",
        f"SELECT count(*) FROM read_parquet('{'{part}'}')",
    ],
)
def test_queries_still_run(root, sql):
    assert query(str(root), sql.format(part=_part_file(root))).num_rows >= 1


def test_limits_apply_and_a_slow_query_is_cancelled(root):
    con = connect(str(root), limits=SqlLimits(memory_limit="300MB", threads=1))
    assert con.execute("SELECT current_setting('threads')").fetchall() == [(1,)]
    assert con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].startswith("286")
    slow = "SELECT count(*) FROM range(1000000000) a, range(1000) b WHERE a.range % 7 = b.range"
    with pytest.raises(QueryTimeout, match="time limit of 0.5 s"):
        query(str(root), slow, limits=SqlLimits(timeout_s=0.5))


@pytest.mark.parametrize(
    "bad",
    [{"threads": 0}, {"threads": 1.5}, {"timeout_s": 0}, {"timeout_s": -1.0}, {"memory_limit": 2}],
)
def test_limits_refuse_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SqlLimits(**bad)


def test_the_cli_refuses_in_one_line(root):
    cmd = [
        sys.executable,
        "-m",
        "synthvg.cli",
        "sql",
        "--root",
        str(root),
        f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{root}/x.parquet'",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "PREFECT_HOME": str(root.parent / "ph")},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "refused: EXPLAIN of COPY statements are not allowed; the dataset is opened read-only"
    ]
    assert not (root / "x.parquet").exists()
