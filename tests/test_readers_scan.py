"""The streaming JSON scanner: records and byte spans equal a whole-file parse, in any chunking."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthvg.readers.jsonscan import JsonFault, SpanFile, scan

_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(_json, max_size=8), chunk=st.integers(1, 64), indent=st.sampled_from([None, 1])
)
def test_top_level_list_round_trips_in_any_chunking(tmp_path_factory, records, chunk, indent):
    path = tmp_path_factory.mktemp("scan") / "x.json"
    path.write_text(json.dumps(records, indent=indent, ensure_ascii=False), encoding="utf-8")
    items = list(scan(path, chunk=chunk))
    assert [i.index for i in items] == list(range(len(records)))
    f = SpanFile(str(path))
    assert [f.load(i.start, i.end) for i in items] == records


def test_object_members_and_descended_lists(tmp_path):
    data = {
        "info": {"name": "é"},
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [],
        "categories": [{"id": 1, "name": "ñandú"}],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    items = list(scan(path, descend={"images", "annotations"}, chunk=3))
    assert [(i.key, i.index) for i in items] == [
        ("info", -1),
        ("images", 0),
        ("images", 1),
        ("categories", -1),
    ]
    cats = next(i for i in items if i.key == "categories")
    assert (
        SpanFile(str(path)).load(cats.start, cats.end) == data["categories"]
    )  # UTF-8 text comes back exact


@pytest.mark.parametrize(
    ("text", "kept", "message"),
    [
        ('[{"a": 1}, {"a": 2}, {"a": 3', [{"a": 1}, {"a": 2}], "truncated"),
        ('[{"a": 1}, {"a": "unterminated', [{"a": 1}], "truncated"),
        ('[{"a": 1}, junk, {"a": 3}]', [{"a": 1}], "Expecting value"),
        ('[{"a": 1} {"a": 2}]', [{"a": 1}], "expected ',' or ']'"),
        ("[1, 2] 3", [1, 2], "extra data"),
    ],
)
def test_faults_keep_the_records_before_them(tmp_path, text, kept, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    got = []
    with pytest.raises(JsonFault, match=message) as err:
        for item in scan(path, chunk=4):
            got.append(item.value)
    assert got == kept
    assert err.value.offset <= len(text)


def test_numbers_split_across_blocks_and_big_records(tmp_path):
    path = tmp_path / "n.json"
    big = {"counts": "x" * 100_000}
    path.write_text(json.dumps([123456.789e3, -0.5, big, 7]))
    assert [i.value for i in scan(path, chunk=2)] == [123456.789e3, -0.5, big, 7]


@pytest.mark.parametrize(
    ("text", "message"), [("", "empty"), ('"a string"', "list or object"), ("42", "list or object")]
)
def test_top_level_must_be_a_container(tmp_path, text, message):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        list(scan(path))
