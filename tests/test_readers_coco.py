"""COCO (2017 and 2014 names), LVIS (real v0.5 sample, hand-written v1) and RefCOCO readers."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import TINYCOCO
from pycocotools import mask as mask_utils

from synthvg.readers.coco import CocoReader
from synthvg.readers.join import frame_mask
from synthvg.readers.lvis import LvisReader
from synthvg.readers.refcoco import RefcocoReader

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
TRAIN = TINYCOCO / "annotations" / "instances_train2017.json"


def test_coco_2017_polygons_and_crowd_rle_match_the_file():
    raw = json.loads(TRAIN.read_text())
    reader = CocoReader(str(TRAIN))
    assert sorted(reader.native_ids()) == sorted(i["id"] for i in raw["images"])
    assert not reader.problems
    crowd = next(a for a in raw["annotations"] if a["iscrowd"])
    seeds = reader.read(crowd["image_id"])
    image = seeds.image
    assert (image.width, image.height, image.coco_id) == (
        next(
            (i["width"], i["height"], i["id"])
            for i in raw["images"]
            if i["id"] == crowd["image_id"]
        )
    )
    anns = sorted(
        (a for a in raw["annotations"] if a["image_id"] == crowd["image_id"]), key=lambda a: a["id"]
    )
    assert [r.source.annotation_id for r in seeds.regions] == [str(a["id"]) for a in anns]
    for region, ann in zip(seeds.regions, anns, strict=True):
        x, y, w, h = ann["bbox"]
        assert region.box == (x, y, x + w, y + h)
        assert region.is_crowd == bool(ann["iscrowd"]) and region.link == f"coco-ann:{ann['id']}"
        rle = frame_mask(
            region.segmentation, (image.height, image.width), (1.0, 1.0), image.height, image.width
        )
        seg = ann["segmentation"]
        expected = (
            mask_utils.merge(mask_utils.frPyObjects(seg, image.height, image.width))
            if isinstance(seg, list)
            else mask_utils.frPyObjects(seg, image.height, image.width)
        )
        assert rle.counts.encode() == expected["counts"]


def test_coco_2014_names_give_the_split(tmp_path):
    raw = json.loads(TRAIN.read_text())
    for img in raw["images"]:
        img["file_name"] = f"COCO_val2014_{img['id']:012d}.jpg"
        del img["coco_url"]
    path = tmp_path / "instances_val2014.json"
    path.write_text(json.dumps(raw))
    seeds = CocoReader(str(path)).read(397133)
    assert (
        seeds.image.split == "val2014" and seeds.image.file_name == "COCO_val2014_000000397133.jpg"
    )
    assert len(seeds.regions) == 19


def test_lvis_v05_real_sample():
    path = SEEDS / "lvis_v0.5" / "lvis_val_6.json"
    raw = json.loads(path.read_text())
    reader = LvisReader(str(path))
    assert (
        sorted(reader.native_ids()) == sorted(i["id"] for i in raw["images"])
        and not reader.problems
    )
    total = 0
    cats = {c["id"]: c for c in raw["categories"]}
    for img in raw["images"]:
        seeds = reader.read(img["id"])
        # the file comes from coco_url (a 2017 folder), not from v0.5's COCO-2014 file_name
        assert seeds.image.file_name == "/".join(img["coco_url"].split("/")[-2:])
        assert seeds.image.split == img["coco_url"].split("/")[-2]
        for region in seeds.regions:
            ann = next(a for a in raw["annotations"] if str(a["id"]) == region.source.annotation_id)
            assert region.source.category == cats[ann["category_id"]]["name"]
            assert region.label == cats[ann["category_id"]]["name"].replace("_", " ")
            assert region.link is None  # LVIS ids are not COCO annotation ids
        total += len(seeds.regions)
    assert total == len(raw["annotations"])


def test_lvis_v1_has_no_file_name():
    path = SEEDS / "lvis_v1" / "lvis_v1_val.json"
    assert all("file_name" not in i for i in json.loads(path.read_text())["images"])
    seeds = LvisReader(str(path)).read(397133)
    assert seeds.image.file_name == "val2017/000000397133.jpg" and seeds.image.split == "val2017"
    person = seeds.regions[0]
    assert person.label == "person" and "individual" in person.names and person.segmentation


def test_refcoco_refs_join_instances_by_ann_id():
    reader = RefcocoReader(str(SEEDS / "refcoco" / "refs(unc).p"), dataset="refcoco")
    assert sorted(reader.native_ids()) == [252219, 397133] and not reader.problems
    seeds = reader.read(397133)
    man, table = seeds.regions
    assert man.descriptions == ["Man in white on the right.", "the chef"]
    assert (
        man.source.split == "testA"
        and man.source.annotation_id == "0"
        and man.link == "coco-ann:200887"
    )
    assert man.label == "person" and man.box[0] == 388.66  # the box comes from instances.json
    assert table.source.split == "train" and table.descriptions == ["table on the left"]
    assert seeds.image.split == "train2014" and seeds.image.file_name.startswith("COCO_train2014_")
