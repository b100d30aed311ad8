"""Bad input, per the issue: each fault is an error row with file, record and reason; the rest
of the file is still read; a file that cannot be read at all stops only its own source."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import TINYCOCO
from PIL import Image

from synthvg.pipeline import run_build
from synthvg.schemas.config import BuildConfig
from synthvg.storage import connect

SEEDS = Path(__file__).parent / "fixtures" / "seeds"


def _build(tmp_path: Path, sources: list[dict]):
    cfg = BuildConfig.model_validate(
        {
            "out": str(tmp_path / "root"),
            "shard_size": 4,
            "seeds": {"sources": sources},
            "regions": {"proposer": "none"},
            "teacher": {"backend": "none"},
        }
    )
    assert run_build(cfg).status == "completed"
    return connect(cfg.out)


def _errors(con, kind: str) -> list[tuple]:
    return con.sql(
        f"SELECT image_id, source, reason FROM errors WHERE kind = '{kind}' ORDER BY source"
    ).fetchall()


def _copy(tmp_path: Path, name: str) -> Path:
    shutil.copytree(SEEDS / name, tmp_path / name)
    return tmp_path / name


def test_truncated_vg_file_keeps_the_records_before_the_cut(tmp_path):
    vg = _copy(tmp_path, "vg")
    rels = vg / "relationships.json"
    text = rels.read_text()
    rels.write_text(text[: text.index('"image_id": 1003')])  # cut inside the last image's record
    con = _build(tmp_path, [{"kind": "vg", "root": str(vg)}])
    ((_, source, reason),) = _errors(con, "truncated_file")
    assert (
        source == str(rels)
        and "truncated" in reason
        and "2 image records before it are kept" in reason
    )
    per_image = dict(con.sql("SELECT image_id, count(*) FROM relations GROUP BY 1").fetchall())
    assert per_image == {
        "coco:397133": 4,
        "coco:252219": 2,
    }  # vg:1003's relationships were after the cut
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(3,)]


def test_unreadable_file_stops_only_its_source(tmp_path):
    truncated = tmp_path / "instances_val2017.json"
    text = (TINYCOCO / "annotations" / "instances_val2017.json").read_text()
    truncated.write_text(text[: len(text) // 3])
    empty = tmp_path / "val_sceneGraphs.json"
    empty.write_text("")
    con = _build(
        tmp_path,
        [  # allowed to be empty: else the build stops (below)
            {"annotations": str(truncated), "allow_empty": True},
            {"kind": "gqa", "annotations": str(empty), "allow_empty": True},
            {"kind": "lvis", "annotations": str(tmp_path / "missing.json"), "allow_empty": True},
            {"kind": "vg", "root": str(SEEDS / "vg")},
        ],
    )
    errors = {source: reason for _, source, reason in _errors(con, "bad_annotation_file")}
    assert "not valid JSON" in errors[str(truncated)] and "never reached" in errors[str(truncated)]
    assert "empty" in errors[str(empty)]
    assert "not found" in errors[str(tmp_path / "missing.json")]
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(3,)]  # VG still read


def test_missing_keys_and_wrong_types_skip_only_their_record(tmp_path):
    vg = _copy(tmp_path, "vg")
    objects = json.loads((vg / "objects.json").read_text())
    del objects[0]["objects"][1]["x"]  # the bottle
    objects[2]["objects"] = {"not": "a list"}
    (vg / "objects.json").write_text(json.dumps(objects))
    gqa = _copy(tmp_path, "gqa") / "val_sceneGraphs.json"
    graphs = json.loads(gqa.read_text())
    graphs["1001"]["objects"]["2001"]["relations"] = {
        "r1": {"name": "holding", "object": "2002"}
    }  # the doc's dict form
    del graphs["1003"]["width"]
    gqa.write_text(json.dumps(graphs))
    con = _build(
        tmp_path, [{"kind": "vg", "root": str(vg)}, {"kind": "gqa", "annotations": str(gqa)}]
    )
    ((image, source, reason),) = _errors(con, "bad_annotation")
    assert (
        image == "coco:397133"
        and source.endswith("#objects:image=1001/objects[1]")
        and "x, y, w, h" in reason
    )
    ((image, source, reason),) = _errors(con, "bad_record")
    assert image == "vg:1003" and "'objects' must be a list" in reason
    ((image, source, reason),) = _errors(con, "bad_relation")
    assert (
        image == "coco:397133"
        and source.endswith("#image=1001/object=2001")
        and "must be a list" in reason
    )
    ((image, _, reason),) = _errors(con, "bad_image_entry")
    assert image == "vg:1003" and "width" in reason
    # the bottle survives through relationships.json's endpoint and GQA: nothing else was lost
    labels = [
        r
        for (r,) in con.sql(
            "SELECT label FROM regions WHERE image_id = 'coco:397133' ORDER BY region_id"
        ).fetchall()
    ]
    assert labels.count("bottle") == 1 and "man" in labels


def test_unknown_category_and_predicate_indices(tmp_path):
    psg = _copy(tmp_path, "psg") / "psg.json"
    data = json.loads(psg.read_text())
    data["data"][0]["segments_info"][2]["category_id"] = 500
    data["data"][0]["relations"] += [[0, 14, 56], [0, 99, 3]]
    psg.write_text(json.dumps(data))
    con = _build(
        tmp_path, [{"kind": "psg", "annotations": str(psg), "panoptic": str(SEEDS / "panopticapi")}]
    )
    ((_, source, reason),) = _errors(con, "unknown_category")
    assert source.endswith("#coco_image_id=142238/segment[2]") and "500" in reason
    ((_, source, reason),) = _errors(con, "unknown_predicate")
    assert source.endswith("relations[2]") and "56" in reason
    ((_, source, _),) = _errors(con, "unknown_object")
    assert source.endswith("relations[3]")
    assert con.sql(
        "SELECT count(*) FROM regions WHERE image_id = 'coco:142238' AND label IS NULL"
    ).fetchall() == [(1,)]
    assert con.sql("SELECT count(*) FROM relations").fetchall() == [(4,)]


def test_ids_that_point_nowhere(tmp_path):
    ref = _copy(tmp_path, "refcoco")
    refs = pickle.loads((ref / "refs(unc).p").read_bytes())
    refs[1]["ann_id"] = 1  # no such annotation
    refs.append({**refs[2], "ref_id": 9, "image_id": 424242})  # no such image
    (ref / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    vg = _copy(tmp_path, "vg")
    (vg / "relationships.json").unlink()  # relations come from scene_graphs.json: ids only
    graphs = json.loads((vg / "scene_graphs.json").read_text())
    graphs[2]["relationships"][0]["object_id"] = 777
    (vg / "scene_graphs.json").write_text(json.dumps(graphs))
    con = _build(
        tmp_path,
        [{"kind": "refcoco", "refs": str(ref / "refs(unc).p")}, {"kind": "vg", "root": str(vg)}],
    )
    ((image, source, reason),) = _errors(con, "unknown_annotation")
    assert image == "coco:397133" and source.endswith("#ref=1") and "ann_id 1" in reason
    ((image, source, _),) = _errors(con, "unknown_image")
    assert image == "coco:424242" and source.endswith("#ref=9")
    # scene_graphs.json names objects by id only: endpoints its objects lack are skipped
    unknown = sorted(
        (i, r.split("_id ")[1].split(" ")[0]) for i, _, r in _errors(con, "unknown_object")
    )
    assert unknown == [("coco:252219", "6003"), ("coco:397133", "5006"), ("vg:1003", "777")]


def test_masks_that_do_not_decode_keep_the_box(tmp_path):
    raw = json.loads((TINYCOCO / "annotations" / "instances_val2017.json").read_text())
    crowd = next(a for a in raw["annotations"] if a["iscrowd"])
    crowd["segmentation"] = {"size": crowd["segmentation"]["size"], "counts": "PPYo0"}
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(raw))
    con = _build(tmp_path, [{"annotations": str(path)}])
    ((image, source, reason),) = _errors(con, "bad_segmentation")
    assert (
        image == f"coco:{crowd['image_id']}"
        and source.endswith(f"#annotation={crowd['id']}")
        and "box only" in reason
    )
    assert con.sql(
        f"SELECT mask IS NULL, is_crowd FROM regions r, unnest(r.sources) s WHERE s.unnest.annotation_id = '{crowd['id']}'"
    ).fetchall() == [(True, True)]
    assert con.sql("SELECT count(*) FROM regions").fetchall() == [(136,)]


def test_png_of_the_wrong_size(tmp_path):
    pan = _copy(tmp_path, "panopticapi")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(
        pan / "panoptic_val2017" / "000000142238.png"
    )
    ade = _copy(tmp_path, "ade20k")
    seg = next(ade.rglob("*_seg.png"))
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(seg)
    con = _build(
        tmp_path,
        [
            {"kind": "psg", "annotations": str(SEEDS / "psg" / "psg.json"), "panoptic": str(pan)},
            {"kind": "ade20k", "root": str(ade)},
        ],
    )
    reasons = {image: reason for image, _, reason in _errors(con, "png_size_mismatch")}
    assert (
        set(reasons) == {"coco:142238", "ade20k:ADE_train_00000001"}
        and "10x10" in reasons["coco:142238"]
    )
    # PSG regions keep their boxes; the other image still has its masks
    assert con.sql(
        "SELECT image_id, count(*), count(mask) FROM regions GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("coco:142238", 18, 0), ("coco:439180", 32, 32)]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"refs": []}, "not a refs list (the pickle holds a dict"),
        (Path("x"), "refused global"),
        (b"not a pickle at all", "not a readable refs pickle"),
    ],
)
def test_a_pickle_that_is_not_a_refs_list(tmp_path, payload, message):
    ref = _copy(tmp_path, "refcoco")
    refs = ref / "refs(unc).p"
    refs.write_bytes(payload if isinstance(payload, bytes) else pickle.dumps(payload, protocol=2))
    con = _build(
        tmp_path,
        [
            {"kind": "refcoco", "refs": str(refs), "allow_empty": True},
            {"kind": "lvis", "annotations": str(SEEDS / "lvis_v1" / "lvis_v1_val.json")},
        ],
    )
    ((_, source, reason),) = _errors(con, "bad_annotation_file")
    assert source == str(refs) and message in reason
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(2,)]  # LVIS still read


def test_refs_list_with_a_bad_entry_keeps_the_others(tmp_path):
    ref = _copy(tmp_path, "refcoco")
    refs = pickle.loads((ref / "refs(unc).p").read_bytes())
    (ref / "refs(unc).p").write_bytes(pickle.dumps([*refs, "not a ref", {"ref_id": 5}], protocol=2))
    con = _build(tmp_path, [{"kind": "refcoco", "refs": str(ref / "refs(unc).p")}])
    assert [s.split("#")[1] for _, s, _ in _errors(con, "bad_ref")] == ["refs[3]", "refs[4]"]
    assert con.sql("SELECT count(*) FROM regions").fetchall() == [(3,)]


def test_bad_values_cost_only_their_annotation(tmp_path):
    raw = json.loads((TINYCOCO / "annotations" / "instances_val2017.json").read_text())
    per_image: dict[int, list[dict]] = {}
    for a in raw["annotations"]:
        if not a["iscrowd"]:
            per_image.setdefault(a["image_id"], []).append(a)
    image, anns = max(per_image.items(), key=lambda kv: len(kv[1]))
    total = sum(a["image_id"] == image for a in raw["annotations"])
    odd, crowd, nan_box, inf_poly = anns[:4]
    odd["segmentation"][0].append(17.0)
    crowd["iscrowd"] = "no"
    nan_box["bbox"][1] = float("nan")
    inf_poly["segmentation"][0][2] = float("inf")
    path = tmp_path / "instances_val2017.json"
    path.write_text(
        json.dumps(raw)
    )  # NaN and Infinity, as Python's (and numpy users') writers put them
    con = _build(tmp_path, [{"annotations": str(path)}])
    rows = {
        s.split("#")[1]: (k, image_id, r)
        for k, image_id, s, r in con.sql(
            "SELECT kind, image_id, source, reason FROM errors"
        ).fetchall()
    }
    assert set(rows) == {f"annotation={a['id']}" for a in (odd, crowd, nan_box, inf_poly)}
    assert all(image_id == f"coco:{image}" for _, image_id, _ in rows.values())
    n = len(odd["segmentation"][0])
    assert rows[f"annotation={odd['id']}"][::2] == (
        "bad_segmentation",
        f"segmentation polygon 0 has an odd number of coordinates ({n}), not x, y pairs; region kept with its box only",
    )
    assert rows[f"annotation={crowd['id']}"][::2] == (
        "bad_annotation",
        "iscrowd must be 0 or 1, got 'no'; annotation skipped",
    )
    kind, _, reason = rows[f"annotation={nan_box['id']}"]
    assert (
        kind == "bad_annotation"
        and reason.startswith("bbox must be 4 finite numbers, got [")
        and "nan" in reason
    )
    kind, _, reason = rows[f"annotation={inf_poly['id']}"]
    assert kind == "bad_segmentation" and "not finite" in reason
    # the image keeps every other annotation; the two bad masks keep their boxes
    regions = con.sql(
        f"SELECT s.unnest.annotation_id, mask IS NULL, is_crowd FROM regions r, unnest(r.sources) s WHERE image_id = 'coco:{image}'"
    ).fetchall()
    assert len(regions) == total - 2
    assert {a: m for a, m, _ in regions if m} == {str(odd["id"]): True, str(inf_poly["id"]): True}
    assert str(crowd["id"]) not in {a for a, _, _ in regions} and not any(
        c for a, _, c in regions if a == str(nan_box["id"])
    )


def test_a_nan_in_a_vg_object_costs_only_that_object(tmp_path):
    vg = _copy(tmp_path, "vg")
    objects = json.loads((vg / "objects.json").read_text())
    objects[0]["objects"][0]["w"] = float("nan")
    (vg / "objects.json").write_text(json.dumps(objects))
    before = (
        _build(tmp_path / "before", [{"kind": "vg", "root": str(SEEDS / "vg")}])
        .sql("SELECT count(*) FROM regions WHERE image_id = 'coco:397133'")
        .fetchall()[0][0]
    )
    con = _build(tmp_path, [{"kind": "vg", "root": str(vg)}])
    ((image, source, reason),) = _errors(con, "bad_annotation")
    assert (
        image == "coco:397133"
        and source.endswith("objects[0]")
        and "finite numeric x, y, w, h" in reason
    )
    assert not _errors(con, "image_vanished") and not _errors(con, "bad_record")
    assert (
        con.sql("SELECT count(*) FROM regions WHERE image_id = 'coco:397133'").fetchall()[0][0]
        >= before - 1
        > 0
    )


def _empty_source(tmp_path: Path, case: str) -> dict:
    val = TINYCOCO / "annotations" / "instances_val2017.json"
    images = str(TINYCOCO / "images" / "val2017")
    path = tmp_path / "instances.json"
    if case == "empty file":
        path.write_text("")
    elif case == "truncated file":
        path.write_text(val.read_text()[:3000])
    elif case == "no usable images":
        path.write_text(
            json.dumps(
                {  # its one image entry lacks a size
                    "images": [{"id": 1, "file_name": "a.jpg"}],
                    "categories": [{"id": 1, "name": "cat"}],
                    "annotations": [
                        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}
                    ],
                }
            )
        )
    elif case == "mistyped images folder":
        shutil.copy(val, path)
        images += "x"
    return {
        "annotations": str(
            path if case != "mistyped annotation path" else tmp_path / "instancs.json"
        ),
        "images": images,
    }


CASES = [
    "empty file",
    "truncated file",
    "no usable images",
    "mistyped annotation path",
    "mistyped images folder",
]


@pytest.mark.parametrize("case", CASES)
def test_a_source_without_images_stops_the_build(tmp_path, case):
    from typer.testing import CliRunner

    from synthvg.cli import app
    from synthvg.stages.seeds import EmptySource

    source = _empty_source(tmp_path, case)
    cfg = BuildConfig.model_validate(
        {
            "out": str(tmp_path / "root"),
            "seeds": {"sources": [source]},
            "regions": {"proposer": "none"},
        }
    )
    with pytest.raises(EmptySource, match="allow_empty: true"):
        run_build(cfg)
    config = tmp_path / "build.yaml"
    config.write_text(
        json.dumps({"out": str(tmp_path / "cli-root"), "seeds": {"sources": [source]}})
    )
    result = CliRunner().invoke(app, ["build", "--config", str(config)])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "\n" not in message and "Traceback" not in message
    assert (
        source["images"] if case == "mistyped images folder" else source["annotations"]
    ) in message
    assert case != "no usable images" or "lists no images" in message
    assert not (tmp_path / "cli-root").exists()  # refused before anything was written


@pytest.mark.parametrize("case", CASES)
def test_a_source_allowed_to_be_empty_stops_only_itself(tmp_path, case):
    con = _build(
        tmp_path,
        [
            {**_empty_source(tmp_path, case), "allow_empty": True},
            {"kind": "vg", "root": str(SEEDS / "vg")},
        ],
    )
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(3,)]  # VG's
    if case == "mistyped images folder":
        assert {r.split(":")[0] for (_, _, r) in _errors(con, "bad_image")} == {
            "image file not found"
        }


def test_a_huge_panoptic_png_costs_only_its_masks(tmp_path):
    pan = _copy(tmp_path, "panopticapi")
    Image.new("1", (14000, 14000)).save(
        pan / "panoptic_val2017" / "000000142238.png"
    )  # 196M pixels, 600 KB
    con = _build(
        tmp_path,
        [{"kind": "psg", "annotations": str(SEEDS / "psg" / "psg.json"), "panoptic": str(pan)}],
    )
    ((image, _, reason),) = _errors(con, "bad_segmentation")
    assert image == "coco:142238" and "196000000 pixels" in reason and "boxes only" in reason
    assert con.sql(
        "SELECT image_id, count(*), count(mask) FROM regions GROUP BY 1 ORDER BY 1"
    ).fetchall() == [("coco:142238", 18, 0), ("coco:439180", 32, 32)]


def test_a_record_that_does_not_parse_costs_only_itself(tmp_path):
    """Bytes that are not UTF-8 pass the index (which scans as latin-1) but not the re-read."""
    raw = json.loads((TINYCOCO / "annotations" / "instances_val2017.json").read_text())
    first, second = sorted(raw["images"], key=lambda i: i["id"])[:2]
    ann = next(a for a in raw["annotations"] if a["image_id"] == first["id"])
    ann["note"] = "MARK-A"
    second["note"] = "MARK-B"
    path = tmp_path / "instances_val2017.json"
    path.write_bytes(
        json.dumps(raw).encode().replace(b"MARK-A", b"\xff").replace(b"MARK-B", b"\xfe")
    )
    con = _build(tmp_path, [{"annotations": str(path)}])
    rows = {image: (source, reason) for image, source, reason in _errors(con, "bad_annotation")}
    assert rows.keys() == {f"coco:{first['id']}", f"coco:{second['id']}"}
    assert (
        rows[f"coco:{first['id']}"][0] == f"{path}#annotation={ann['id']}"
    )  # that annotation only
    assert rows[f"coco:{second['id']}"][0] == str(path)  # its image entry: the whole image
    assert all("utf-8" in reason.lower() for _, reason in rows.values())
    assert not _errors(
        con, "image_vanished"
    )  # the second image's only record is unusable: said once, truly
    n = sum(a["image_id"] == first["id"] for a in raw["annotations"])
    assert con.sql(
        f"SELECT count(*) FROM regions WHERE image_id = 'coco:{first['id']}'"
    ).fetchall() == [(n - 1,)]
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(len(raw["images"]) - 1,)]
