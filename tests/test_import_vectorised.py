"""The vectorised `synthvg import` writes exactly what the per-row path writes, shard by shard.

The oracle is the per-row path itself (the import as it was, record by record), forced for
every file; the vectorised import of the same files must give the same rows in the same order
in the same shards (run ids and timestamps aside)."""

from __future__ import annotations

import json
import threading

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synthvg import masks
from synthvg.export import svg_import
from synthvg.export.svg_import import import_svg
from synthvg.runs import PLAN_FILE
from synthvg.schemas.records import relation_id
from synthvg.storage import Dataset

RLE = masks.encode(np.pad(np.ones((2, 3), dtype=bool), ((1, 1), (1, 2)))).counts  # 4 x 6 image


def _region(bbox, segmentation=None, area=None):
    return {"bbox": bbox, "segmentation": segmentation, "area": area}


def _graph(objects, relations=None, **extra):
    graph = {"objects": objects, **extra}
    if relations is not None:
        graph["relations"] = relations
    return json.dumps(graph)


def _rows() -> list[dict]:
    box = [0.0, 0.0, 2.0, 2.0]
    seg = {"size": [4, 6], "counts": RLE}
    two = [_region(box, seg, 7.0), _region([1.0, 1.0, 3.0, 2.0])]
    meta = {"width": 6, "height": 4}
    rows = [
        # fine, with masks, a file name, duplicate triples after normalisation
        dict(
            image_id="a.jpg",
            file_name="a.jpg",
            metadata=meta,
            regions=two,
            scene_graph=_graph(
                ["a man", "a kite"],
                [[0, 1, "Holding"], [0, 1, "ÀB"], [0, 1, "holding"], [1, 0, "Under "]],
            ),
        ),
        # no file name (the image file is found by id), no relations key, a kept ':' id
        dict(
            image_id="coco:7",
            file_name=None,
            metadata=meta,
            regions=two,
            scene_graph=_graph(["x", "y"]),
        ),
        dict(  # the same id again
            image_id="a.jpg", file_name="a.jpg", metadata=meta, regions=two, scene_graph="{}"
        ),
        # a Python-literal graph: tuples, a bad relation shown as Python writes it
        dict(
            image_id="lit",
            file_name="",
            metadata=meta,
            regions=two,
            scene_graph="{'objects': ['man', 'kite'], 'relations': [(0, 1, 'on'), (0, 0, 'near'), (1, 0, 'by')]}",
        ),
        dict(image_id="bad-graph", metadata=meta, regions=two, scene_graph="not a graph"),
        dict(image_id="null-graph", metadata=meta, regions=two, scene_graph=None),
        dict(image_id="no-objects", metadata=meta, regions=two, scene_graph='{"relations": []}'),
        dict(image_id="list-graph", metadata=meta, regions=two, scene_graph="[1, 2]"),
        dict(
            image_id="no-width",
            metadata={"width": None, "height": 4},
            regions=two,
            scene_graph=_graph(["a", "b"]),
        ),
        dict(image_id="no-meta", metadata=None, regions=two, scene_graph=_graph(["a", "b"])),
        # three objects, two regions; relations to the third object are bad
        dict(
            image_id="mismatch",
            metadata=meta,
            regions=two,
            scene_graph=_graph(["a", "b", "c"], [[0, 2, "on"], [1, 0, "on"]]),
        ),
        dict(image_id="no-regions", metadata=meta, regions=None, scene_graph=_graph(["a"])),
        # masks that do not fit the image, or whose counts are not ASCII
        dict(
            image_id="bad-masks",
            metadata=meta,
            regions=[
                _region(box, {"size": [5, 6], "counts": RLE}),
                _region(box, {"size": [4, 6], "counts": "é" + RLE}),
                _region([0.0, 0.0, -2.0, 3.0], None, None),
                _region([0.5, 0.25, 1.5, 3.0], None, 0.0),
            ],
            scene_graph=_graph(["a", "b", "c", "d"], [[2, 3, "near"]]),
        ),
        # every kind of bad relation item, and odd ones the per-row path takes
        dict(
            image_id="relations",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": [[0, 0, "on"], [0, 5, "on"], '
            '[-1, 0, "on"], [0.0, 1, "on"], ["0", 1, "on"], [0, 1], {"s": 0, "o": 1, "p": 2}, '
            '[0, 1, "!!!"], 7, null, [0, 1, null, 3], [1e400, 0, "x"], '
            '[18446744073709551616, 0, "x"], [0, 1, "à côté de"], [0, NaN, "on"]]}',
        ),
        dict(
            image_id="odd-predicate",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": [[0, 1, 5], [1, 0, "on"]]}',
        ),
        dict(
            image_id="odd-id",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": [[true, 0, "on"]]}',
        ),
        dict(
            image_id="dict-objects",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": [{"name": "a"}, 3], "relations": [[0, 1, "on"]]}',
        ),
        dict(
            image_id="repeated-key",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a"], "objects": ["b", "c"], "relations": [[0, 1, "on"]]}',
        ),
        dict(
            image_id="falsy-relations",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": ""}',
        ),
        dict(
            image_id="string-relations",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": "ab"}',
        ),
        dict(  # JSON that DuckDB reads but Python does not (a trailing comma): a Python literal
            image_id="trailing-comma",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": [[0, 1, "on"],],}',
        ),
        dict(
            image_id="null-box",
            metadata=meta,
            regions=[_region(box), None],
            scene_graph=_graph(["a"], [[0, 1, "on"]]),
        ),
        # graphs DuckDB reads from their own text (read strictly by orjson, each key once) and
        # ones it must get written again: a repeated or escaped key, a \\u escape
        dict(
            image_id="own-text",
            metadata=meta,
            regions=two,
            scene_graph='{"attributes": {"x": [1, 2]}, "objects": ["a", "b"], '
            '"relations": [[-0, 1, "On "], [1, 0, "under"], [0, 1, "on"]]}',
        ),
        dict(
            image_id="null-relations",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": null}',
        ),
        dict(
            image_id="repeated-relations",
            metadata=meta,
            regions=two,
            scene_graph='{"objects": ["a", "b"], "relations": [[0, 1, "on"]], '
            '"relations": [[1, 0, "by"]]}',
        ),
        dict(
            image_id="escaped-key",
            metadata=meta,
            regions=two,
            scene_graph='{"\\u006fbjects": ["a"], "objects": ["p", "q"], '
            '"relations": [[1, 0, "caf\\u00e9"]]}',
        ),
        dict(
            image_id="emoji 😀",
            metadata=meta,
            regions=two,
            scene_graph=_graph(
                ["😀 face", "b"], [[0, 1, "Next-To"], [1, 0, "next to"], [1, 0, 'back\\slash "q"/']]
            ),
        ),
    ]
    for row in rows:
        row.setdefault("file_name", None)
    return rows


def _write(tmp_path) -> list[str]:
    """A fast-layout file, a file with flat metadata columns and integer ids, and files whose
    segmentations are polygons or uncompressed RLE (those go the per-row way as a whole)."""
    first = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(_rows()), first)
    flat = tmp_path / "flat.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "image_id": i,
                    "metadata/width": 6,
                    "metadata/height": 4 if i != 3 else None,
                    "regions": [{"bbox": [0, 0, 1, i]}, {"bbox": [1, 1, 2, 2]}],
                    "scene_graph": _graph(["p", "q"], [[0, 1, f"pred{i % 3}"]]),
                }
                for i in range(1, 9)
            ]
        ),
        flat,
    )
    polygons = tmp_path / "polygons.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "image_id": "poly",
                    "metadata": {"width": 6, "height": 4},
                    "regions": [
                        {"bbox": [0.0, 0.0, 2.0, 2.0], "segmentation": [[0, 0, 2, 0, 2, 2]]},
                        {"bbox": [0.0, 0.0, 2.0, 2.0], "segmentation": [[0, 0, 2]]},
                    ],
                    "scene_graph": _graph(["a", "b"], [[0, 1, "on"]]),
                },
                {"image_id": "a.jpg", "metadata": {"width": 6, "height": 4}, "scene_graph": "{}"},
            ]
        ),
        polygons,
    )
    counts = tmp_path / "uncompressed.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "image_id": "sam",
                    "metadata": {"width": 6, "height": 4},
                    "regions": [
                        {
                            "bbox": [0.0, 0.0, 2.0, 2.0],
                            "segmentation": {"size": [4, 6], "counts": [2, 3, 19]},
                        }
                    ],
                    "scene_graph": _graph(["a"]),
                }
            ]
        ),
        counts,
    )
    boxes = tmp_path / "boxes.parquet"  # segmentations and areas all None: typed null
    pq.write_table(
        pa.Table.from_pylist(
            [
                {
                    "image_id": f"box{i}",
                    "file_name": None,
                    "metadata": {"width": 6, "height": None if i == 2 else 4},
                    "regions": [_region([0.0, 0.0, 1.0, i]), _region([1.0, 1.0, 2.0, 2.0])],
                    "scene_graph": _graph(["p", "q"], [[1, 0, "on"]]),
                }
                for i in range(4)
            ]
        ),
        boxes,
    )
    assert (
        pq.read_schema(boxes).field("regions").type.value_type.field("segmentation").type
        == pa.null()
    )
    return [str(first), str(flat), str(polygons), str(counts), str(boxes), str(first)]


def _shards(root: str) -> tuple[dict, dict]:
    """Every committed (stage, shard, table)'s rows, run ids and timestamps left out; the plan."""
    dataset = Dataset(root)
    out = {}
    for m in dataset.manifests():
        for f in m.files:
            rows = pq.read_table(dataset.abspath(f.path)).to_pylist()
            for row in rows:
                row.pop("run_id", None)
                row.pop("created_at", None)
            out[(m.stage, m.shard, f.table)] = (m.image_count, rows)
    return out, dataset.read_json(dataset.abspath(PLAN_FILE))


@pytest.mark.parametrize("shard_size,batch_rows", [(1000, 5000), (3, 4)])
def test_vectorised_import_writes_what_the_per_row_import_writes(
    tmp_path, monkeypatch, shard_size, batch_rows
):
    files = _write(tmp_path)
    images = tmp_path / "img"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"jpeg-ish")
    (images / "coco:7").write_bytes(b"another")
    monkeypatch.setattr(svg_import, "BATCH_ROWS", batch_rows)
    for images_dir in (str(images), None):
        tag = "img" if images_dir else "noimg"
        fast = import_svg(
            files, str(tmp_path / f"fast-{tag}"), images_dir=images_dir, shard_size=shard_size
        )
        with monkeypatch.context() as m:
            m.setattr(svg_import, "_fast_layout", lambda schema: False)
            slow = import_svg(
                files, str(tmp_path / f"slow-{tag}"), images_dir=images_dir, shard_size=shard_size
            )
        assert fast == slow.__class__(**{**slow.__dict__, "root": fast.root})
        got, got_plan = _shards(str(tmp_path / f"fast-{tag}"))
        want, want_plan = _shards(str(tmp_path / f"slow-{tag}"))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key][0] == want[key][0], key
            assert len(got[key][1]) == len(want[key][1]), key
            for a, b in zip(got[key][1], want[key][1], strict=True):
                assert a == b, key
        assert got_plan == want_plan
    kinds = {
        r["kind"] for (_, _, table), (_, rows) in want.items() if table == "errors" for r in rows
    }
    assert kinds == {
        "svg_bad_scene_graph",
        "svg_bad_metadata",
        "svg_objects_regions_mismatch",
        "svg_bad_relation",
        "svg_duplicate_image",
        "bad_segmentation",
    }
    assert fast.images > 20 and fast.relations > 10


def test_vectorised_path_takes_the_usual_rows_itself(tmp_path, monkeypatch):
    """The per-row path is the exception: on clean rows it is not called at all."""
    path = tmp_path / "clean.parquet"
    rows = [_rows()[i] for i in (0, 1, 10, 12)]  # fine, fine, mismatched, bad masks
    pq.write_table(pa.Table.from_pylist(rows), path)
    files = [str(path), _write(tmp_path)[4]]  # and a file whose segmentations are all None
    called = []
    original = svg_import._per_row
    monkeypatch.setattr(
        svg_import,
        "_per_row",
        lambda importer, rows: called.append(len(rows)) or original(importer, rows),
    )
    report = import_svg(files, str(tmp_path / "root"))
    assert report.images == 7 and called == []


def test_first_of_each_keeps_the_first_of_every_repeated_triple():
    rng = np.random.default_rng(0)
    for scale in (3, 2**40):  # one packed integer key, and four sort keys
        n = 500
        table = pa.table(
            {
                "idx": rng.integers(0, 5, n) + 7,
                "k": np.arange(n),
                "s": rng.integers(0, 3, n) * scale,
                "o": rng.integers(0, 3, n),
                "pid": rng.integers(0, 3, n) * scale,
            }
        ).sort_by([("idx", "ascending"), ("k", "ascending")])
        seen, want = set(), []
        for row in table.to_pylist():
            key = (row["idx"], row["s"], row["o"], row["pid"])
            if key not in seen:
                seen.add(key)
                want.append(row)
        assert svg_import._first_of_each(table).to_pylist() == want


def test_relation_ids_hashed_on_every_thread_are_relation_id_row_by_row():
    """DuckDB hashes the ids over an Arrow table split across its threads: each row gets its own
    triple's ``relation_id``, whatever order the threads finish in."""
    rng = np.random.default_rng(1)
    n = 60_000
    s, o = rng.integers(0, 40, n), rng.integers(0, 40, n)
    table = pa.table(
        {
            "idx": np.arange(n) // 7,
            "k": np.arange(n) % 7,
            "image_id": [f"svg:{i // 7}" for i in range(n)],
            "xs": [str(v) for v in s],
            "xo": [str(v) for v in o],
            "p": [f"pred {v}" for v in rng.integers(0, 500, n)],
        }
    )
    vectorised = svg_import._Vectorised(svg_import._Importer("run", None))
    try:
        vectorised.con.execute("SET threads = 4")
        vectorised.threads = 4
        got = vectorised._relation_ids(table).to_pylist()
    finally:
        vectorised.close()
    want = [
        relation_id(i, "edit", int(a), int(b), p)
        for i, a, b, p in zip(
            table["image_id"].to_pylist(), s, o, table["p"].to_pylist(), strict=True
        )
    ]
    assert got == want


def _import_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("synthvg-import")]


def test_a_failed_commit_is_raised_and_stops_the_reading(tmp_path, monkeypatch):
    """Shards are committed on a thread of their own and batches are read one ahead on
    another: a commit's failure reaches the caller and neither thread outlives the import."""
    files = _write(tmp_path)
    monkeypatch.setattr(svg_import, "BATCH_ROWS", 2)
    commits = []
    original = Dataset.commit_shard

    def commit_shard(self, stage, shard, *args, **kwargs):
        commits.append(shard)
        if shard == 2:
            raise OSError(28, "No space left on device")
        return original(self, stage, shard, *args, **kwargs)

    monkeypatch.setattr(Dataset, "commit_shard", commit_shard)
    with pytest.raises(OSError, match="No space left"):
        import_svg(files, str(tmp_path / "root"), shard_size=3)
    assert max(commits) == 2 and _import_threads() == []


def test_a_failed_read_is_raised_and_nothing_waits_for_it(tmp_path, monkeypatch):
    files = _write(tmp_path)
    monkeypatch.setattr(svg_import, "BATCH_ROWS", 2)
    calls = []
    original = svg_import._plain

    def plain(graph, text=None):
        calls.append(1)
        if len(calls) == 9:
            raise MemoryError("parsing ran out of memory")
        return original(graph, text)

    monkeypatch.setattr(svg_import, "_plain", plain)
    with pytest.raises(MemoryError, match="ran out"):
        import_svg(files, str(tmp_path / "root"), shard_size=3)
    assert _import_threads() == []


def test_duckdb_reads_a_graph_from_its_own_text_only_when_no_key_can_repeat():
    """Writing each graph again cost 13% of the import's time under the GIL; a graph orjson read
    strictly is handed over as written unless a key could be read twice (DuckDB keeps the first
    of repeated keys, orjson the last)."""
    graphs = {row["image_id"]: row["scene_graph"] for row in _rows()}
    own = graphs["own-text"]
    assert svg_import._plain(orjson.loads(own), own) is own
    for name in ("repeated-key", "repeated-relations", "escaped-key", "null-relations"):
        text = graphs[name]
        graph, how = svg_import._parse(text)
        assert how == "strict"
        assert svg_import._plain(graph, text) == orjson.dumps(
            {"objects": graph["objects"], "relations": graph["relations"] or []}
        ), name
