"""Robin's scene-graph text parser: the release format, the release parser's failure cases
(commas in predicates, duplicates, self-loops, bad ids), per-region turns, and properties
(render/parse round trip, never raising, invalid additions changing nothing but problems)."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synthvg.models.robin.parse import (
    ParsedGraph,
    ParsedRelation,
    parse_description,
    parse_relationships,
    parse_scene_graph,
    render_scene_graph,
)

R = ParsedRelation

RELEASE_EXAMPLE = """Objects:
region1: a man in a blue jacket
region2: a wooden bench
region3: a brown dog
region4: green grass
region5: a tree

Relations:
region1: region2 sitting on, region5 in front of
region3: region1 next to
region2: region4 on
"""
RELEASE_OBJECTS = {
    1: "a man in a blue jacket",
    2: "a wooden bench",
    3: "a brown dog",
    4: "green grass",
    5: "a tree",
}
RELEASE_RELATIONS = [
    R(1, 2, "sitting on"),
    R(1, 5, "in front of"),
    R(3, 1, "next to"),
    R(2, 4, "on"),
]


def _has(problems: list[str], *words: str) -> bool:
    """Some problem line mentions every word."""
    return any(all(w in p for w in words) for p in problems)


# --- the release format -----------------------------------------------------------------


def test_release_example():
    g = parse_scene_graph(RELEASE_EXAMPLE, 5)
    assert g.objects == RELEASE_OBJECTS
    assert g.relations == RELEASE_RELATIONS
    assert g.problems == []
    assert g.raw is RELEASE_EXAMPLE


def test_render_release_format():
    text = render_scene_graph(RELEASE_OBJECTS, RELEASE_RELATIONS)
    # Same lines as the release, relations grouped by subject in first-appearance order.
    assert text == RELEASE_EXAMPLE.rstrip("\n")


def test_render_orders_objects_by_key_groups_relations_and_collapses_whitespace():
    objects = {3: "a  dog\non grass", 1: "a man"}
    rels = [R(2, 1, "near"), R(1, 3, "walking"), R(2, 3, "left of"), R(1, 2, " holding \t up ")]
    assert render_scene_graph(objects, rels) == (
        "Objects:\n"
        "region1: a man\n"
        "region3: a dog on grass\n"
        "\n"
        "Relations:\n"
        "region2: region1 near, region3 left of\n"
        "region1: region3 walking, region2 holding up"
    )
    assert render_scene_graph({}, []) == "Objects:\n\nRelations:"


# --- the release parser's failure cases ---------------------------------------------------


def test_commas_inside_predicates_survive():
    text = (
        "Relations:\n"
        "region1: region2 sitting on, and leaning against, region4 next to, region3 near\n"
        "region2: region1 under, partly, region3 left of;region4 behind"
    )
    g = parse_scene_graph(text, 4)
    assert g.relations == [
        R(1, 2, "sitting on, and leaning against"),
        R(1, 4, "next to"),
        R(1, 3, "near"),
        R(2, 1, "under, partly"),
        R(2, 3, "left of"),
        R(2, 4, "behind"),
    ]
    assert g.problems == []


def test_duplicates_keep_first_case_and_whitespace_insensitive():
    text = (
        "Relations:\n"
        "region1: region2 on top of, region2 ON  top of., region3 near\n"
        "region1: region2 On top of, region2 beside\n"
        "region2: region1 on top of"
    )
    g = parse_scene_graph(text, 3)
    assert g.relations == [
        R(1, 2, "on top of"),
        R(1, 3, "near"),
        R(1, 2, "beside"),
        R(2, 1, "on top of"),
    ]
    dups = [p for p in g.problems if "duplicate" in p]
    assert len(dups) == 2 and len(g.problems) == 2
    assert _has(
        g.problems, "relation line 2", "duplicate relation region1 -> region2", "'ON top of'"
    )
    assert _has(g.problems, "relation line 3", "'On top of'")


def test_self_loops_dropped():
    g = parse_scene_graph("Relations:\nregion2: region2 is, region1 near\nregion1: <region1> on", 2)
    assert g.relations == [R(2, 1, "near")]
    assert len(g.problems) == 2
    assert _has(g.problems, "relation line 2", "self-loop region2 -> region2", "'is'")
    assert _has(g.problems, "relation line 3", "self-loop region1 -> region1")


def test_invalid_ids_dropped():
    text = (
        "Objects:\n"
        "region1: a cup\n"
        "region0: nothing\n"
        "region7: too far\n"
        "Relations:\n"
        "region1: region2 on, region0 under, region6 near, region9999999999999999999999999 by\n"
        "region9: region1 on\n"
        "region2: region1 under"
    )
    g = parse_scene_graph(text, 5)
    assert g.objects == {1: "a cup"}
    assert g.relations == [R(1, 2, "on"), R(2, 1, "under")]
    assert _has(g.problems, "object line 3", "region0 is not one of region1..region5")
    assert _has(g.problems, "object line 4", "region7 is not one of region1..region5")
    assert _has(g.problems, "relation line 6", "region0 is not")
    assert _has(g.problems, "relation line 6", "region6 is not")
    assert _has(g.problems, "relation line 6", "region99999999999999999...")
    assert _has(g.problems, "relation line 7", "region9 is not", "line dropped")
    assert len(g.problems) == 6


def test_out_of_order_ids():
    text = (
        "Objects:\nregion3: a dog\nregion1: a man\nregion2: a ball\n\n"
        "Relations:\nregion3: region2 chasing\nregion1: region3 walking\nregion3: region1 near"
    )
    g = parse_scene_graph(text, 3)
    assert list(g.objects) == [3, 1, 2]
    assert g.objects == {1: "a man", 2: "a ball", 3: "a dog"}
    assert g.relations == [R(3, 2, "chasing"), R(1, 3, "walking"), R(3, 1, "near")]
    assert g.problems == []


@pytest.mark.parametrize("n", [0, -3])
def test_no_regions_drops_everything(n):
    g = parse_scene_graph(RELEASE_EXAMPLE, n)
    assert g.objects == {} and g.relations == []
    # 5 object lines and 3 relation lines, each one problem.
    assert len(g.problems) == 8
    assert all("there are no regions" in p for p in g.problems)
    r = parse_relationships("region1 on, region2 near", 1, n)
    assert r.relations == [] and len(r.problems) == 1 and "all relations dropped" in r.problems[0]


# --- tolerated spellings ---------------------------------------------------------------------


def test_markdown_bullets_spellings_crlf():
    text = (
        "Sure! Here is the scene graph.\r\n"
        "**Objects:**\r\n"
        "- region1: a man\r\n"
        "* Region 2: a dog\r\n"
        '1. <region3>: "a red ball"\r\n'
        "**region4:** a tree\r\n"
        "\r\n"
        "### Relations\r\n"
        "- REGION1: region 2 walking, <region3> holding.\r\n"
        "2) **region2**: < region1 > following\r"
    )
    g = parse_scene_graph(text, 4)
    assert g.objects == {1: "a man", 2: "a dog", 3: "a red ball", 4: "a tree"}
    assert g.relations == [R(1, 2, "walking"), R(1, 3, "holding"), R(2, 1, "following")]
    assert g.problems == ["line 1 not understood: 'Sure! Here is the scene graph.'"]
    assert g.raw == text


def test_no_headers_uses_line_shape():
    text = "region1: a man\nregion2: a horse\nregion1: region2 riding, region3 near\nregion3: a hat"
    g = parse_scene_graph(text, 3)
    assert g.objects == {1: "a man", 2: "a horse", 3: "a hat"}
    assert g.relations == [R(1, 2, "riding"), R(1, 3, "near")]
    assert g.problems == []


def test_objects_header_without_relations_header_uses_line_shape():
    g = parse_scene_graph("Objects:\nregion1: a man\nregion2: a horse\nregion1: region2 riding", 2)
    assert g.objects == {1: "a man", 2: "a horse"}
    assert g.relations == [R(1, 2, "riding")]
    assert g.problems == []


def test_before_relations_header_lines_are_objects():
    # Looks like a relation list, but comes before the Relations header: an object line.
    g = parse_scene_graph("region1: region2 on\nRelations:\nregion1: region2 on", 2)
    assert g.objects == {1: "region2 on"}
    assert g.relations == [R(1, 2, "on")]
    assert g.problems == []


def test_object_problems_duplicate_and_empty():
    g = parse_scene_graph('Objects:\nregion1: a cat\nregion1: a kitten\nregion2:\nregion2: ""', 2)
    assert g.objects == {1: "a cat"}
    assert _has(g.problems, "object line 3", "region1 described again", "'a kitten'")
    assert _has(g.problems, "object line 4", "region2 has an empty description")
    assert _has(g.problems, "object line 5", "region2 has an empty description")
    assert len(g.problems) == 3


def test_relation_items_not_understood_or_without_predicate():
    text = "Relations:\nregion1: next to region2, region2, region3 .\nregion2:\nregion3a: region1 on\nfoo bar"
    g = parse_scene_graph(text, 3)
    assert g.relations == []
    assert _has(g.problems, "relation line 2", "'next to region2'", "not 'regionJ predicate'")
    assert _has(g.problems, "relation line 2", "region1 -> region2 has no predicate")
    assert _has(g.problems, "relation line 2", "region1 -> region3 has no predicate")
    assert _has(g.problems, "line 4 not understood", "'region3a: region1 on'")
    assert _has(g.problems, "line 5 not understood", "'foo bar'")
    # "region2:" with nothing after it just has no relations.
    assert len(g.problems) == 5


def test_quoted_fragments_are_clipped():
    long = "x" * 500
    g = parse_scene_graph(f"Objects:\nregion1: a\nregion1: {long}\n{long}", 1)
    assert len(g.problems) == 2
    # The 500-character fragment is quoted as at most 80 characters ending in "...".
    assert all(70 <= p.count("x") <= 80 and "xxx...'" in p for p in g.problems)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "\x00\x01\xff\ufffe",
        "region",
        "region:",
        "Relations:",
        ":::,,,",
        "region" + "9" * 5000 + ": x",  # int() refuses > 4300 digits: must not be reached
        "Relations:\nregion1: region" + "9" * 5000 + " on",
        "Objects:\nregion1: 漢字 🐕\u2028ok\nRelations:\nregion1: region2 上",
    ],
)
def test_odd_input_does_not_raise(text):
    for n in (0, 2):
        g = parse_scene_graph(text, n)
        assert isinstance(g, ParsedGraph) and g.raw == text
        parse_relationships(text, 1, n)
    parse_description(text, 1)


def test_unicode_kept():
    g = parse_scene_graph("Objects:\nregion1: 漢字 🐕\u2028ok\nRelations:\nregion1: region2 上", 2)
    assert g.objects == {1: "漢字 🐕 ok"}
    assert g.relations == [R(1, 2, "上")]


# --- per-region turns ---------------------------------------------------------------------------


def test_parse_relationships_plain_and_prefixed():
    g = parse_relationships("region1 holding, region4 next to, and touching, region2 on.", 3, 5)
    assert g.relations == [R(3, 1, "holding"), R(3, 4, "next to, and touching"), R(3, 2, "on")]
    assert g.problems == [] and g.objects == {}
    p = parse_relationships(
        "region3: region1 holding, region4 next to, and touching, region2 on.", 3, 5
    )
    assert p.relations == g.relations and p.problems == []
    assert parse_relationships("**Region 3:** region1 holding", 3, 5).relations == [
        R(3, 1, "holding")
    ]


def test_parse_relationships_problems():
    g = parse_relationships(
        "region3: region3 is, region1 on, region1 ON, region8 near\n"
        "region2: region1 under\n"
        "- region2 beside\n"
        "nothing else",
        3,
        5,
    )
    assert g.relations == [R(3, 1, "on"), R(3, 2, "beside")]
    assert _has(g.problems, "relation line 1", "self-loop region3 -> region3")
    assert _has(g.problems, "relation line 1", "duplicate relation region3 -> region1", "'ON'")
    assert _has(g.problems, "relation line 1", "region8 is not one of region1..region5")
    assert _has(g.problems, "relation line 2", "prefix region2: does not name region3")
    assert _has(g.problems, "relation line 4", "'nothing else'")
    assert len(g.problems) == 5
    assert parse_relationships("region1 on", 6, 5).problems == [
        "subject: region6 is not one of region1..region5, all relations dropped"
    ]


@pytest.mark.parametrize(
    ("text", "region", "want"),
    [
        ("  A man  in a\n blue jacket. ", None, "A man in a blue jacket."),
        ("region3: a brown dog", 3, "a brown dog"),
        ("Region 3 : a brown dog", 3, "a brown dog"),
        ("**region3:** a brown dog", 3, "a brown dog"),
        ("region3: a brown dog", None, "a brown dog"),
        ("region4: a brown dog", 3, "region4: a brown dog"),  # names another region: kept
        ('"a brown dog"', 3, "a brown dog"),
        ("region3: ' “a brown dog” '", 3, "a brown dog"),
        ('"a brown dog', 3, '"a brown dog'),  # unmatched quote kept
        ("the region3: part", 3, "the region3: part"),  # not leading
        ("region3:", 3, ""),
        ('  ""  ', None, ""),
        ("", None, ""),
    ],
)
def test_parse_description(text, region, want):
    assert parse_description(text, region) == want


# --- speed -------------------------------------------------------------------------------------

N = 200_000
ADVERSARIAL = {
    "spaces": " " * N + "x",
    "region": "region" * (N // 6),
    "region_space": "Region " * (N // 7),
    "angles": "< " * (N // 2),
    "stars": "*" * N,
    "digits": "region" + "9" * N + ":",
    "items": "region1: " + "region2 on, " * (N // 12),
    "commas": "Relations:\nregion1: region2 " + ", " * (N // 2),
    "comma_region": "Relations:\nregion1: region2 " + ",region" * (N // 7),
    "colons": "region1" + " :" * (N // 2),
    "quotes": '"' * N,
    "lines": "region1: x\n" * (N // 11),
    "gt": "Relations:\nregion1: region2" + " >" * (N // 2),
    "mixed": "Objects:\nregion1:\nRelations:\nregion1: region2 on, region1 x,\n" * (N // 55),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_input_is_fast(name):
    text = ADVERSARIAL[name]
    assert len(text) >= N * 0.95
    t0 = time.perf_counter()
    parse_scene_graph(text, 5)
    parse_relationships(text, 1, 5)
    parse_description(text, 1)
    assert time.perf_counter() - t0 < 2.0


# --- properties --------------------------------------------------------------------------------

SAFE_WORD = st.text(alphabet=string.ascii_letters + "éüßÅ漢字", min_size=1, max_size=8)
DESC_WORD = st.text(
    alphabet=string.ascii_letters + string.digits + "éü漢字🐕.-()!?/:;&", min_size=1, max_size=10
)
DESCRIPTION = st.lists(DESC_WORD, min_size=1, max_size=6).map(" ".join)


@st.composite
def predicates(draw) -> str:
    words = draw(st.lists(SAFE_WORD, min_size=1, max_size=4))
    out = words[0]
    for w in words[1:]:
        out += draw(st.sampled_from([" ", ", "])) + w
    return out


@st.composite
def graphs(draw) -> tuple[int, dict[int, str], list[ParsedRelation]]:
    """A valid graph: ids in 1..n, no self-loops or duplicates, relations grouped by subject."""
    n = draw(st.integers(1, 12))
    keys = draw(st.sets(st.integers(1, n)))
    objects = {k: draw(DESCRIPTION) for k in keys}
    raw = draw(st.lists(st.tuples(st.integers(1, n), st.integers(1, n), predicates()), max_size=15))
    seen: set[tuple[int, int, str]] = set()
    rels = []
    for s, o, p in raw:
        if s != o and (s, o, p.casefold()) not in seen:
            seen.add((s, o, p.casefold()))
            rels.append(R(s, o, p))
    first: dict[int, int] = {}
    for r in rels:
        first.setdefault(r.subject, len(first))
    rels.sort(key=lambda r: first[r.subject])  # stable: the render/parse order
    return n, objects, rels


FRAGMENTS = [
    "region",
    "Region ",
    "<region",
    ">",
    "0",
    "1",
    "2",
    "3",
    "7",
    "12",
    "99999999999999",
    ":",
    ",",
    ", ",
    ";",
    ".",
    " ",
    "\n",
    "\r\n",
    "\r",
    "Objects:",
    "Relations:",
    "**",
    "### ",
    "- ",
    "1. ",
    "on",
    "next to",
    '"',
    "'",
    "漢",
    "\x00",
]
FRAGMENT_TEXT = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=60
).map("".join)


def _check_graph(g: ParsedGraph, text: str, n: int) -> None:
    assert g.raw is text
    assert all(isinstance(p, str) and p for p in g.problems)
    flat = " ".join(text.split())
    keys = set()
    for r in g.relations:
        assert 1 <= r.subject <= n and 1 <= r.object <= n
        assert r.subject != r.object
        key = (r.subject, r.object, r.predicate.casefold())
        assert key not in keys
        keys.add(key)
        assert r.predicate and r.predicate == " ".join(r.predicate.split())
        assert r.predicate[-1] not in ".;,"
        assert r.predicate in flat  # taken from the text, not made up
    for k, v in g.objects.items():
        assert 1 <= k <= n
        assert v and v == " ".join(v.split()) and v in flat


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_render_parse_round_trip(graph):
    n, objects, rels = graph
    text = render_scene_graph(objects, rels)
    g = parse_scene_graph(text, n)
    assert g.objects == objects
    assert list(g.objects) == sorted(objects)
    assert g.relations == rels
    assert g.problems == []
    # Each subject's line is also a valid per-region answer, with or without its prefix.
    lines = text.split("\n")
    for line in lines[lines.index("Relations:") + 1 :]:
        subject = int(line.split(":", 1)[0].removeprefix("region"))
        want = [r for r in rels if r.subject == subject]
        assert parse_relationships(line, subject, n).relations == want
        assert parse_relationships(line.split(": ", 1)[1], subject, n).relations == want
    for k, d in objects.items():
        assert parse_description(f"region{k}: {d}", k) == d


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), FRAGMENT_TEXT), st.integers(-2, 8))
def test_parse_never_raises_and_output_is_valid(text, n):
    g = parse_scene_graph(text, n)
    _check_graph(g, text, n)
    assert g.objects == {} or n >= 1
    for subject in (1, 2):
        r = parse_relationships(text, subject, n)
        _check_graph(r, text, n)
        assert r.objects == {}
        assert all(x.subject == subject for x in r.relations)
    d = parse_description(text, 1)
    assert d == " ".join(d.split()) and (d == "" or d in " ".join(text.split()))


BAD_KINDS = [
    "duplicate_line",
    "duplicate_item",
    "self_loop_line",
    "self_loop_item",
    "out_of_range_line",
    "out_of_range_item",
    "zero_item",
    "bad_subject",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.sampled_from(BAD_KINDS), st.data())
def test_invalid_additions_only_add_problems(graph, kind, data):
    n, objects, rels = graph
    if kind.startswith("duplicate") and not rels:
        n, rels = max(n, 2), [R(1, 2, "on")]
    lines = render_scene_graph(objects, rels).split("\n")
    first_rel = lines.index("Relations:") + 1
    s = data.draw(st.integers(1, n), label="subject")
    pred = data.draw(predicates(), label="predicate")
    big = data.draw(st.sampled_from([n + 1, n + 7, 10**12]), label="out of range id")
    if kind == "duplicate_line":  # after the original, so "first one wins" keeps the order
        r = data.draw(st.sampled_from(rels))
        p = data.draw(st.sampled_from([r.predicate, r.predicate.upper(), r.predicate.lower()]))
        lines.append(f"region{r.subject}: region{r.object} {p.replace(' ', '  ')}.")
        word = "duplicate"
    elif kind == "duplicate_item":
        r = data.draw(st.sampled_from(rels))
        i = next(
            i for i in range(first_rel, len(lines)) if lines[i].startswith(f"region{r.subject}:")
        )
        lines[i] += f", region{r.object} {r.predicate.swapcase()}"
        word = "duplicate"
    elif kind == "self_loop_line":
        lines.insert(data.draw(st.integers(first_rel, len(lines))), f"region{s}: region{s} {pred}")
        word = "self-loop"
    elif kind in ("self_loop_item", "out_of_range_item", "zero_item") and len(lines) > first_rel:
        i = data.draw(st.integers(first_rel, len(lines) - 1))
        subject = int(lines[i].split(":")[0].removeprefix("region"))
        target = {"self_loop_item": subject, "out_of_range_item": big, "zero_item": 0}[kind]
        pos = data.draw(st.sampled_from(["start", "end"]))
        head, body = lines[i].split(": ", 1)
        item = f"region{target} {pred}"
        lines[i] = f"{head}: {item}, {body}" if pos == "start" else f"{head}: {body}, {item}"
        word = "self-loop" if kind == "self_loop_item" else "is not one of"
    elif kind == "bad_subject":
        lines.insert(
            data.draw(st.integers(first_rel, len(lines))), f"region{big}: region{s} {pred}"
        )
        word = "line dropped"
    else:  # out-of-range line (also the item kinds when there is no relation line yet)
        lines.insert(
            data.draw(st.integers(first_rel, len(lines))), f"region{s}: region{big} {pred}"
        )
        word = "is not one of"
    g = parse_scene_graph("\n".join(lines), n)
    assert g.objects == objects
    assert g.relations == rels
    assert len(g.problems) == 1 and word in g.problems[0]
