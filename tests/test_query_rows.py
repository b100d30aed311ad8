"""``query_rows`` (what ``synthvg sql`` prints) gives the values the Arrow path gives, fetching
plain types without pyarrow and the others through it."""

from __future__ import annotations

import duckdb
import pytest

from synthvg.storage.query import PLAIN_TYPES, _plain, run_rows

#: One column of every plain type, each with a NULL row too; nested lists and structs of them.
PLAIN = """
SELECT * FROM (VALUES
 (NULL, true, -1::TINYINT, -2::SMALLINT, -3::INTEGER, -4::BIGINT, 1::UTINYINT, 2::USMALLINT,
  3::UINTEGER, 18446744073709551615::UBIGINT, 0.1::FLOAT, 'nan'::DOUBLE, -12.345::DECIMAL(10, 3),
  123456789012345678.9::DECIMAL(38, 1), 'x''y', 'a\\x00b'::BLOB, 'b'::ENUM('a', 'b'),
  DATE '2026-12-03', TIME '15:21:00.5',
  TIMESTAMP '2026-12-03 15:21:00.123456', TIMESTAMP_S '2026-12-03 15:21:00',
  TIMESTAMP_MS '2026-12-03 15:21:00.5', TIMESTAMPTZ '2026-12-03 15:21:00+05',
  [1, NULL, 3], {'x': 1.5, 'y': ['a', NULL]}, [{'size': [2, 3], 'counts': 'abc'}]),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) t(n, b, i1, i2, i4, i8, u1, u2, u4, u8, f, d, dec, dec38, s, bl, e, dt, tm, ts, ts_s, ts_ms,
    tstz, l, st, nested)
"""

#: Types whose Python values differ from Arrow's: these go through Arrow.
OTHER = [
    "MAP {'a': 1.0}",
    "INTERVAL 3 DAY",
    "12345678901234567890::HUGEINT",
    "1::UHUGEINT",
    "[1, 2]::INTEGER[2]",
    "TIMETZ '01:02:03+05'",
    "'101'::BIT",
    "'6ba7b810-9dad-11d1-80b4-00c04fd430c8'::UUID",  # Arrow gives a str, DuckDB a uuid.UUID
    "[MAP {'k': 1}]",  # a list of a non-plain type
]


def _arrow(con, sql):
    table = con.sql(sql).to_arrow_table()
    return table.column_names, table.to_pylist()


def test_plain_types_are_fetched_without_arrow_with_arrow_s_values():
    con = duckdb.connect()
    rel = con.sql(PLAIN)
    assert all(_plain(t) for t in rel.types)
    ids = {t.id for t in rel.types} | {"null"}
    assert PLAIN_TYPES <= ids, f"untested plain types: {PLAIN_TYPES - ids}"
    names, rows = run_rows(con, PLAIN, None)
    arrow_names, arrow_rows = _arrow(con, PLAIN)
    assert names == arrow_names
    assert repr(rows) == repr(arrow_rows)  # repr: NaN equals itself, types must match too
    assert str(rows) == str(arrow_rows)


def test_a_null_column_and_duplicate_names_match_too():
    con = duckdb.connect()
    sql = "SELECT NULL AS a, 1 AS b, 2 AS b"
    assert run_rows(con, sql, None) == _arrow(con, sql)


@pytest.mark.parametrize("expr", OTHER)
def test_other_types_go_through_arrow(expr):
    con = duckdb.connect()
    sql = f"SELECT {expr} AS v, 1 AS n"
    (kind, _) = con.sql(sql).types
    assert not _plain(kind)
    assert run_rows(con, sql, None) == _arrow(con, sql)
