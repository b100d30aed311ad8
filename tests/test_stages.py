"""Each stage function on its own (no Prefect), on real demo data and on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TINYCOCO, demo_config
from PIL import Image

from synthvg import masks
from synthvg.models.rule_teacher import RegionGeom, RuleTeacher, spatial_predicate
from synthvg.pipeline import run_build
from synthvg.schemas import Box
from synthvg.schemas.config import BuildConfig, RuleTeacherConfig
from synthvg.stages import plan_build
from synthvg.stages.regions import check_regions
from synthvg.storage import connect


def _coco(tmp_path, images, annotations, name="instances_x.json"):
    data = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "square", "supercategory": "shape"}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _square_image(path, size=(64, 48), box=(16, 12, 40, 36)):
    a = np.zeros((size[1], size[0], 3), np.uint8)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = 255
    Image.fromarray(a).save(path)


def _config(tmp_path, sources, **extra) -> BuildConfig:
    return BuildConfig.model_validate(
        {
            "out": str(tmp_path / "root"),
            "shard_size": 2,
            "seeds": {"sources": sources},
            "regions": {"felzenszwalb": {"scale": 100, "min_size": 20}, "feed": "all"},
            **extra,
        }
    )


def _ann(id_, image_id, bbox, seg=None):
    x, y, w, h = bbox
    return {
        "id": id_,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "area": w * h,
        "bbox": bbox,
        "segmentation": seg if seg is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


@pytest.fixture
def messy_source(tmp_path):
    """A COCO source with one good image and every kind of fault the issue lists."""
    imgs = tmp_path / "images"
    imgs.mkdir()
    _square_image(imgs / "good.png")
    (imgs / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    _square_image(imgs / "whole.jpg")
    (imgs / "truncated.jpg").write_bytes((imgs / "whole.jpg").read_bytes()[:200])
    images = [
        {"id": 1, "file_name": "good.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "missing.png", "width": 64, "height": 48},
        {"id": 3, "file_name": "corrupt.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "truncated.jpg", "width": 64, "height": 48},
        {"id": 5, "file_name": "good.png", "width": 99, "height": 48},
        {"file_name": "no-id.png"},
    ]
    anns = [
        _ann(10, 1, [16, 12, 24, 24]),
        _ann(11, 1, [100, 100, 10, 10]),  # entirely outside the 64x48 image
        _ann(12, 1, [5, 5, 0, 7]),  # zero width
        _ann(13, 1, [50, 30, 30, 30]),  # partly outside: clipped
        _ann(14, 77, [1, 1, 5, 5]),  # unknown image
        _ann(15, 1, [1, 1, 5, 5], seg=[[1, 2]]),  # unusable polygon: kept with its box
        {"id": 16, "image_id": 1, "bbox": "wide"},
    ]
    path = _coco(tmp_path, images, anns)
    truncated = tmp_path / "instances_truncated.json"
    truncated.write_text(path.read_text()[: len(path.read_text()) // 2])
    return [
        {"annotations": str(path), "images": str(imgs)},
        {"annotations": str(truncated), "images": str(imgs), "allow_empty": True},
    ]


def test_seeds_read_the_demo_annotations_exactly(tmp_path):
    cfg = demo_config(tmp_path / "root", teacher={"backend": "none"}, regions={"proposer": "none"})
    run = run_build(cfg)
    assert run.status == "completed"
    con = connect(cfg.out)
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(38,)]
    # 288 + 136 annotations in the two tinycoco files, every one usable
    assert con.sql("SELECT count(*) FROM regions").fetchall() == [(424,)]
    assert con.sql("SELECT count(*) FROM regions WHERE is_crowd").fetchall() == [(5,)]
    assert con.sql("SELECT count(*) FROM errors").fetchall() == [(0,)]
    # the true split comes from coco_url, not from the folder the file sits in
    split = con.sql("SELECT split FROM images WHERE coco_id = 397133").fetchall()
    assert split == [("val2017",)]
    row = con.sql(
        "SELECT bbox, area, label FROM regions r JOIN images i USING (image_id) WHERE i.coco_id = 37777 ORDER BY region_id LIMIT 1"
    ).fetchall()[0]
    raw = json.loads((TINYCOCO / "annotations" / "instances_train2017.json").read_text())
    ann = min((a for a in raw["annotations"] if a["image_id"] == 37777), key=lambda a: a["id"])
    x, y, w, h = ann["bbox"]
    assert row[0] == {"x1": x, "y1": y, "x2": x + w, "y2": y + h}
    assert abs(row[1] - ann["area"]) / ann["area"] < 0.05


def test_bad_input_lands_in_errors_and_the_build_goes_on(tmp_path, messy_source):
    cfg = _config(tmp_path, messy_source)
    run = run_build(cfg)
    assert run.status == "completed"
    con = connect(cfg.out)
    kinds = {k for (k,) in con.sql("SELECT DISTINCT kind FROM errors").fetchall()}
    assert {
        "bad_annotation_file",
        "bad_image_entry",
        "bad_annotation",
        "unknown_image",
        "bad_image",
        "image_size_mismatch",
        "box_outside_image",
        "zero_area",
        "box_clipped",
        "bad_segmentation",
    } <= kinds
    bad = dict(
        con.sql(
            "SELECT source, reason FROM errors WHERE kind = 'bad_image' ORDER BY source"
        ).fetchall()
    )
    assert any("missing.png" in s and "not found" in r for s, r in bad.items())
    assert any("corrupt.jpg" in s for s in bad)
    assert any("truncated.jpg" in s for s in bad)
    assert con.sql("SELECT image_id FROM images").fetchall() == [("coco:1",)]
    # good square + clipped box + box-only region survive; outside / zero-area are gone
    assert con.sql("SELECT count(*) FROM regions").fetchall() == [(3,)]
    assert con.sql("SELECT count(*) FROM regions WHERE mask IS NULL").fetchall() == [(1,)]
    truncated = con.sql("SELECT reason FROM errors WHERE kind = 'bad_annotation_file'").fetchall()[
        0
    ][0]
    assert "not valid JSON" in truncated


def test_regions_stage_keeps_a_region_a_proposal_confirms(tmp_path):
    imgs = tmp_path / "images"
    imgs.mkdir()
    _square_image(imgs / "sq.png")
    src = _coco(
        tmp_path,
        [{"id": 1, "file_name": "sq.png", "width": 64, "height": 48}],
        [_ann(1, 1, [16, 12, 24, 24]), _ann(2, 1, [0, 0, 64, 6])],
    )
    cfg = _config(tmp_path, [{"annotations": str(src), "images": str(imgs)}])
    run_build(cfg)
    rows = (
        connect(cfg.out)
        .sql("SELECT region_id, best_iou, kept FROM regions ORDER BY region_id")
        .fetchall()
    )
    assert rows[0][1] > 0.5 and rows[0][2] is True
    assert rows[1][1] < 0.5 and rows[1][2] is False
    (proposer,) = connect(cfg.out).sql("SELECT DISTINCT proposer FROM proposals").fetchall()[0]
    assert proposer == "felzenszwalb-cpu"


def test_check_regions_threshold_is_strict():
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, :10] = True
    ((iou, pid, kept),) = check_regions([masks.encode(a)], [masks.encode(b)], 0.5)
    assert iou == 0.5 and pid == 0 and kept is False  # IoU must exceed the threshold
    assert check_regions([masks.encode(a)], [], 0.5) == [(None, None, False)]


def _geom(rid, x1, y1, x2, y2, h=100, w=100):
    box = Box(x1=x1, y1=y1, x2=x2, y2=y2)
    return RegionGeom(rid, box, masks.box_to_rle(box, h, w), box.area)


@pytest.mark.parametrize(
    ("s", "o", "expected"),
    [
        ((10, 40, 30, 60), (60, 40, 80, 60), "left of"),
        ((60, 40, 80, 60), (10, 40, 30, 60), "right of"),
        ((40, 5, 50, 15), (30, 40, 60, 60), "above"),
        ((30, 40, 60, 60), (40, 5, 50, 15), "below"),
        ((40, 20, 50, 42), (20, 40, 80, 90), "on"),
        ((40, 60, 50, 70), (20, 30, 80, 90), "inside"),
        ((20, 30, 80, 90), (40, 60, 50, 70), "contains"),
        ((10, 40, 30, 60), (32, 40, 52, 60), "next to"),
    ],
)
def test_rule_teacher_predicates(s, o, expected):
    gs, go = _geom(0, *s), _geom(1, *o)
    cover = masks.coverage_matrix([gs.mask, go.mask], [gs.mask, go.mask])
    pred, score = spatial_predicate(gs, go, float(cover[0, 1]), float(cover[1, 0]))
    assert pred == expected
    assert 0.0 <= score <= 1.0


def test_rule_teacher_picks_subjects_and_never_self_relates():
    regions = [_geom(i, 10 * i, 10, 10 * i + 8, 20) for i in range(8)]
    triples = RuleTeacher(
        RuleTeacherConfig(max_subjects=3, min_subjects=2, objects_per_subject=2)
    ).relate(regions)
    assert {t.subject_id for t in triples} <= {0, 1, 2, 3, 4, 5, 6, 7}
    assert len({t.subject_id for t in triples}) <= 3
    assert all(t.subject_id != t.object_id for t in triples)
    assert RuleTeacher(RuleTeacherConfig()).relate(regions[:1]) == []


def test_plan_cuts_sorted_shards_and_honours_limit(tmp_path):
    cfg = demo_config(tmp_path / "root", shard_size=5, limit=12)
    plan = plan_build(cfg, "run")
    assert [len(s.image_ids) for s in plan.shards] == [5, 5, 2]
    ids = [i for s in plan.shards for i in s.image_ids]
    assert ids == sorted(ids, key=lambda i: int(i.split(":")[1]))
