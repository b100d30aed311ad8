"""``synthvg sql``'s table output without importing rich, for the tables where that is exact.

rich (``rich.table.Table`` printed by a ``Console``) takes a sixth of what ``synthvg sql`` costs
above bare DuckDB to import. For output that is not a terminal, in UTF-8, whose cells are
printable ASCII without rich markup (``[``) or emoji codes (``:name:``) and fit the width, rich's
table is a plain grid that :func:`render` draws the same, character for character; anything
else (a terminal: colours and its width; wrapping; wide or control characters) returns None
and goes to rich. tests/test_text_table.py holds the two equal.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TextIO

#: Characters rich prints as they are: printable ASCII.
_PLAIN = re.compile(r"[\x20-\x7e]*")
#: What rich could read as markup or an emoji code (``:smile:``) and change.
_RICH_SYNTAX = re.compile(r"\[|:[^\s:]*:")


def plain_output(out: TextIO) -> bool:
    """True when rich would print to ``out`` without styles, in UTF-8 box characters: not a
    terminal, nor told to act as one (FORCE_COLOR, TTY_COMPATIBLE), nor under IPython."""
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    if "IPython" in sys.modules:
        return False
    encoding = (getattr(out, "encoding", None) or "utf-8").lower()
    try:
        return encoding.startswith("utf") and not out.isatty()
    except (AttributeError, ValueError):
        return False


def render(columns: list[str], rows: list[list[str]], width: int) -> str | None:
    """rich's default ``Table`` (heavy head, no lines between rows) of these cells, as
    ``Console(width=width)`` prints it to a file that is not a terminal; None when the table is
    not one :func:`render` draws exactly (see the module doc)."""
    widths = [len(c) for c in columns]
    for cells in (columns, *rows):
        for i, cell in enumerate(cells):
            if not _PLAIN.fullmatch(cell) or _RICH_SYNTAX.search(cell):
                return None
            widths[i] = max(widths[i], len(cell))
    if sum(w + 3 for w in widths) + 1 > width:
        return None  # rich would wrap or shrink columns

    def line(left: str, fill: str, middle: str, right: str) -> str:
        return left + middle.join(fill * (w + 2) for w in widths) + right

    def row(edge: str, cells: list[str]) -> str:
        return (
            edge + edge.join(f" {c.ljust(w)} " for c, w in zip(cells, widths, strict=True)) + edge
        )

    lines = [line("┏", "━", "┳", "┓"), row("┃", columns), line("┡", "━", "╇", "┩")]
    lines += [row("│", cells) for cells in rows]
    lines.append(line("└", "─", "┴", "┘"))
    return "\n".join(lines) + "\n"
