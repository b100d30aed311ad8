"""``synthvg sql``'s table drawn without rich is rich's table, character for character, and every
table it cannot draw exactly goes to rich."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table

from synthvg.text_table import plain_output, render


def rich_text(columns: list[str], rows: list[list[str]], width: int) -> str:
    """What ``synthvg sql`` printed with rich (and still does where render() says None)."""
    t = Table(show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*r)
    out = io.StringIO()
    Console(width=width, file=out).print(t)
    return out.getvalue()


CASES = [
    (["1"], [["1"]]),
    (["a", "bb"], []),  # no rows: header and bottom edge only
    (["a", "bb"], [["x  ", " y"], ["", "NULL"]]),  # spaces kept, empty cells
    ([""], [[""]]),
    (["image_id", "n"], [["coco:397133", "12"], ["vg:1", "3"]]),  # one colon is no emoji code
    (["x"], [["a b  c" * 15]]),  # 90 characters: fits 100
    (["category", "count_star()"], [["spatial", "1168000"], ["social", "1022000"]]),
    (["a", "a"], [["1", "2"]]),
]


@pytest.mark.parametrize("columns, rows", CASES)
@pytest.mark.parametrize("width", [100, 160])
def test_plain_tables_are_rich_tables(columns, rows, width):
    text = render(columns, rows, width)
    assert text is not None
    assert text == rich_text(columns, rows, width)


def test_the_width_limit_is_rich_s():
    """At the console width the table still fits; one character more and rich would wrap it."""
    for total in range(150, 171):
        cell = "x" * (total - 4)  # one column: "│ " + cell + " │"
        text = render(["c"], [[cell]], 160)
        if total <= 160:
            assert text == rich_text(["c"], [[cell]], 160)
        else:
            assert text is None
    many = [f"c{i}" for i in range(40)]  # 40 columns of 2: 40 * 5 + 1 = 201 > 160
    assert render(many, [many], 160) is None


@pytest.mark.parametrize(
    "cell",
    [
        "[bold]x[/bold]",  # rich markup: rich would print "x"
        "a :smile: b",  # an emoji code
        "2026-12-03 15:21:00+00:00",  # ":21:" could be one
        "tab\there",
        "line\nbreak",
        "wide 世界",
        "e\u0301",  # a combining accent
        "\x1b[31mred",
    ],
)
def test_cells_rich_could_change_go_to_rich(cell):
    assert render(["c"], [[cell]], 160) is None
    assert render([cell], [], 160) is None


printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.lists(printable, min_size=n, max_size=n),
            st.lists(st.lists(printable, min_size=n, max_size=n), max_size=5),
        )
    ),
    st.sampled_from([100, 160]),
)
def test_any_table_render_draws_is_rich_s(table, width):
    columns, rows = table
    text = render(columns, rows, width)
    if text is not None:
        assert text == rich_text(columns, rows, width)


def test_most_ascii_tables_take_the_fast_path():
    """The fast path is the usual one, not a rare exception (random ids, counts, labels)."""
    rng = random.Random(7)
    words = ["spatial", "coco:17627", "NULL", "person", "on top of", "0.75", "12"]
    drawn = 0
    for _ in range(200):
        n = rng.randint(1, 5)
        columns = [rng.choice(words) for _ in range(n)]
        rows = [[rng.choice(words) for _ in range(n)] for _ in range(rng.randint(0, 20))]
        text = render(columns, rows, 160)
        assert text is not None
        assert text == rich_text(columns, rows, 160)
        drawn += 1
    assert drawn == 200


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_output_is_what_rich_prints_without_styles(monkeypatch):
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert plain_output(io.StringIO())
    assert not plain_output(_Tty())  # a terminal: colours, its width
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert not plain_output(ascii_out)  # rich draws ASCII boxes there
    for var, value in (("FORCE_COLOR", "1"), ("TTY_COMPATIBLE", "1")):
        monkeypatch.setenv(var, value)
        assert not plain_output(io.StringIO())
        assert Console(file=io.StringIO()).is_terminal  # rich agrees: it would style the output
        monkeypatch.delenv(var)
