"""Export to the released SVG format and import from it: columns, graphs, round trip, CLI."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.export import export_svg, import_svg
from synthvg.export.svg import pick_stage
from synthvg.storage import Dataset, connect, fetch_dicts


def _read(folder) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])


def _invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_export_writes_svg_full_in_the_released_format(edit_build, tmp_path):
    cfg, _, _ = edit_build
    out = tmp_path / "svg"
    assert "of the edit graphs" in _invoke(
        "export", "--root", cfg.out, "--format", "svg", "--out", out, "--images-per-file", 2
    )
    table = _read(out)
    assert table.column_names == ["image_id", "file_name", "metadata", "regions", "scene_graph"]
    assert table.schema.field("metadata").type == pa.struct(
        [("width", pa.int64()), ("height", pa.int64())]
    )
    con = connect(cfg.out)
    full = fetch_dicts(con, "SELECT image_id, subject_id, object_id, predicate FROM svg_full")
    names = {
        (r["image_id"], r["region_id"]): r["description"]
        for r in fetch_dicts(con, "SELECT * FROM descriptions WHERE stage = 'edit'")
    }
    edited = {i for i, _ in names}
    assert (
        set(table["image_id"].to_pylist()) == edited
    )  # the image the editor failed on is not SVG-FULL
    exported = set()
    for row in table.to_pylist():
        graph = json.loads(row["scene_graph"])
        ids = sorted(
            r for i, r in names if i == row["image_id"]
        )  # objects[k] is the k-th edited object
        assert graph["objects"] == [names[(row["image_id"], r)] for r in ids] and len(
            row["regions"]
        ) == len(ids)
        regions = {
            r["region_id"]: r
            for r in fetch_dicts(con, "SELECT * FROM regions WHERE image_id = ?", [row["image_id"]])
        }
        for k, region in enumerate(row["regions"]):
            b = regions[ids[k]]["bbox"]
            assert region["bbox"] == [
                round(b["x1"], 3),
                round(b["y1"], 3),
                round(b["x2"] - b["x1"], 3),
                round(b["y2"] - b["y1"], 3),
            ]
            assert region["segmentation"] == regions[ids[k]]["mask"]
        exported |= {(row["image_id"], ids[s], ids[o], p) for s, o, p in graph["relations"]}
    assert exported == {
        (r["image_id"], r["subject_id"], r["object_id"], r["predicate"]) for r in full
    }


def test_export_import_export_round_trips(edit_build, tmp_path):
    cfg, _, _ = edit_build
    first = export_svg(cfg.out, tmp_path / "a")
    assert "imported 3 images" in _invoke(
        "import", "--format", "svg", *first.files, "--out", tmp_path / "root", "--shard-size", 2
    )
    again = export_svg(str(tmp_path / "root"), tmp_path / "b")
    assert again.stage == "edit" and (again.images, again.relations) == (
        first.images,
        first.relations,
    )
    assert _read(tmp_path / "b").equals(_read(tmp_path / "a"))
    # released data is queryable by SQL like any build
    output = _invoke(
        "sql",
        "--root",
        tmp_path / "root",
        "--format",
        "json",
        "SELECT count(*) AS n, any_value(model) AS model FROM svg_full",
    )
    assert json.loads(output) == [{"n": first.relations, "model": "svg-release"}]


def test_export_of_another_stage_and_the_auto_choice(edit_build, tmp_path):
    cfg, _, _ = edit_build
    con = connect(cfg.out)
    assert pick_stage(con, "auto") == "edit"
    Dataset(tmp_path / "empty").init()
    assert pick_stage(connect(str(tmp_path / "empty")), "auto") == "seed"
    report = export_svg(cfg.out, tmp_path / "teacher", stage="teacher")
    teacher = con.sql("SELECT count(*) FROM relations WHERE stage = 'teacher'").fetchall()[0][0]
    assert report.images == 4 and report.relations == teacher
    labels = [
        r[0] for r in con.sql("SELECT label FROM regions ORDER BY image_id, region_id").fetchall()
    ]
    assert [
        o
        for g in _read(tmp_path / "teacher")["scene_graph"].to_pylist()
        for o in json.loads(g)["objects"]
    ] == labels
    result = CliRunner().invoke(
        app, ["export", "--root", cfg.out, "--out", str(tmp_path / "x"), "--stage", "gpt"]
    )
    assert result.exit_code == 2 and "unknown stage 'gpt'" in result.output


def test_import_reads_the_released_layout_and_logs_bad_rows(tmp_path):
    """Flat metadata/width columns, file-name ids, a Python-repr graph, bad and duplicate relations."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "1.jpg").write_bytes(b"not really a jpeg")
    rle = {"size": [4, 6], "counts": [2, 3, 19]}  # uncompressed counts, as SAM writes them
    rows = [
        {
            "image_id": "1.jpg",
            "metadata/width": 6,
            "metadata/height": 4,
            "regions": [
                {"bbox": [0.0, 0.0, 2.0, 2.0], "segmentation": rle},
                {"bbox": [1.0, 1.0, 3.0, 2.0], "segmentation": None},
            ],
            "scene_graph": "{'objects': ['a man', 'a red kite'], 'relations': [(0, 1, 'Holding'), [0, 1, 'holding'], [0, 0, 'on'], [0, 7, 'near']]}",
        },
        {
            "image_id": "1.jpg",
            "metadata/width": 6,
            "metadata/height": 4,
            "regions": [],
            "scene_graph": "{}",
        },
        {
            "image_id": "2.jpg",
            "metadata/width": 6,
            "metadata/height": 4,
            "regions": [],
            "scene_graph": "not a graph",
        },
    ]
    path = tmp_path / "released.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = import_svg([str(path)], str(tmp_path / "root"), images_dir=str(tmp_path / "img"))
    assert (report.images, report.regions, report.relations) == (1, 2, 1)
    con = connect(str(tmp_path / "root"))
    assert fetch_dicts(con, "SELECT predicate, predicate_raw, stage FROM svg_full") == [
        {"predicate": "holding", "predicate_raw": "Holding", "stage": "edit"}
    ]
    image = fetch_dicts(con, "SELECT * FROM images")[0]
    assert (
        image["image_id"] == "svg:1.jpg"
        and (image["width"], image["height"]) == (6, 4)
        and len(image["content_hash"]) == 64
    )
    regions = fetch_dicts(
        con, "SELECT region_id, label, area, mask FROM regions ORDER BY region_id"
    )
    assert [(r["label"], r["area"]) for r in regions] == [
        ("a man", 3.0),
        ("a red kite", 6.0),
    ] and regions[1]["mask"] is None
    kinds = sorted(r["kind"] for r in fetch_dicts(con, "SELECT kind FROM errors"))
    assert kinds == [
        "svg_bad_relation",
        "svg_bad_relation",
        "svg_bad_scene_graph",
        "svg_duplicate_image",
    ]
    result = CliRunner().invoke(app, ["import", str(path), "--out", str(tmp_path / "root")])
    assert result.exit_code == 2 and "already holds a dataset" in result.output
