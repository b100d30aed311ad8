"""The generated SQL columns (synthvg/storage/columns.py) are the record models' columns: a
record changed without running scripts/gen_sql_columns.py fails here."""

from __future__ import annotations

import sys

import duckdb
from helpers import REPO

from synthvg.schemas import TABLES
from synthvg.storage import connect
from synthvg.storage.columns import COLUMNS

sys.path.insert(0, str(REPO / "scripts"))
from gen_sql_columns import duckdb_columns, render  # noqa: E402


def test_generated_columns_are_the_records_columns():
    assert list(COLUMNS) == list(TABLES)
    assert COLUMNS == duckdb_columns(), "run scripts/gen_sql_columns.py"


def test_the_generated_module_is_what_the_script_writes():
    assert (REPO / "src/synthvg/storage/columns.py").read_text() == render()


def test_each_table_s_ddl_reads_back_as_its_columns():
    con = duckdb.connect()
    for table, columns in COLUMNS.items():
        ddl = ", ".join(f'"{c}" {kind}' for c, kind in columns)
        con.execute(f"CREATE TABLE {table} ({ddl})")
        described = con.execute(f"DESCRIBE {table}").fetchall()
        assert tuple((name, kind) for name, kind, *_ in described) == columns


def test_an_empty_root_s_views_have_the_record_types(tmp_path):
    """Every table without files is queryable with its full, typed columns."""
    con = connect(str(tmp_path / "nothing-here"))
    expected = duckdb_columns()
    for table in ("proposals", "region_checks", "descriptions", "edits", "generations", "errors"):
        described = con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()
        assert tuple((name, kind) for name, kind, *_ in described) == expected[table]
    described = dict(
        (name, kind) for name, kind, *_ in con.execute("DESCRIBE SELECT * FROM regions").fetchall()
    )
    assert described["best_iou"] == "DOUBLE" and described["kept"] == "BOOLEAN"
