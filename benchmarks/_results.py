"""What every benchmark's ``--write`` does: append its table to benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def append_results(table: str, heading: str | None = None) -> None:
    """Append ``table`` (markdown) under ``## heading`` when one is given."""
    with open(RESULTS, "a") as f:
        f.write("\n" + (f"## {heading}\n\n" if heading else "") + table + "\n")
