"""Helpers the tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from synthvg.schemas.config import BuildConfig, load_config

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
TINYCOCO = REPO / "data" / "tinycoco"


def demo_config(out: Path, **overrides) -> BuildConfig:
    """The demo config, written to ``out``; overrides are top-level keys or nested dicts."""
    cfg = load_config(DEMO_CONFIG, out=str(out))
    data = cfg.model_dump()
    for key, value in overrides.items():
        if isinstance(value, dict) and value.get("backend", data[key].get("backend")) == data[
            key
        ].get("backend"):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return BuildConfig.model_validate(data)


VOLATILE = {"run_id", "created_at"}


def table_rows(root: str, table: str) -> list[tuple]:
    """A table's rows as sorted tuples, without the columns that differ between runs."""
    from synthvg.storage import connect

    con = connect(root)
    cols = [c for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns if c not in VOLATILE]
    rows = con.sql(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
    return sorted(rows, key=repr)


def dataset_rows(root: str) -> dict[str, list[tuple]]:
    return {
        t: table_rows(root, t) for t in ("images", "regions", "proposals", "relations", "errors")
    }
