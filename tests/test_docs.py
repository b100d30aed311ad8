"""docs/SCHEMA.md documents every column an analyst can see, and its example queries run."""

from __future__ import annotations

import re

import pytest
from helpers import REPO

from synthvg.storage import Dataset, connect

SCHEMA_MD = (REPO / "docs" / "SCHEMA.md").read_text()
VIEWS = (
    "images",
    "regions",
    "proposals",
    "relations",
    "descriptions",
    "edits",
    "generations",
    "errors",
)


def _section(view: str) -> str:
    m = re.search(rf"^### `{view}`\n(.*?)(?=^### |^## )", SCHEMA_MD, re.S | re.M)
    assert m, f"docs/SCHEMA.md has no section for {view}"
    return m.group(1)


@pytest.mark.parametrize("view", VIEWS)
def test_every_column_is_documented(tmp_path, view):
    ds = Dataset(tmp_path)
    ds.init()
    columns = connect(ds).sql(f"SELECT * FROM {view} LIMIT 0").columns
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", _section(view), re.M)
    assert documented == columns


def test_example_queries_run(tmp_path):
    ds = Dataset(tmp_path)
    ds.init()
    con = connect(ds)
    sql = SCHEMA_MD.split("## Example queries", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    statements = [s for s in sql.split(";") if "SELECT" in s]
    assert len(statements) >= 6
    for st in statements:
        con.sql(st).fetchall()
