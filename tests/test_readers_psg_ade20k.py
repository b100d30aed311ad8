"""PSG (built from the real COCO panoptic sample) and ADE20K 2021 (hand-written) readers."""

from __future__ import annotations

import json
from pathlib import Path

from synthvg import masks
from synthvg.readers.ade20k import Ade20kReader
from synthvg.readers.psg import PsgReader

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
PSG = SEEDS / "psg" / "psg.json"
PANOPTIC = SEEDS / "panopticapi"
ADE = SEEDS / "ade20k" / "images" / "ADE"


def test_psg_masks_from_rgb2id_boxes_xyxy_and_zero_based_indices():
    raw = json.loads(PSG.read_text())
    pan = json.loads((PANOPTIC / "panoptic_examples.json").read_text())
    reader = PsgReader(str(PSG), panoptic=str(PANOPTIC))
    assert sorted(reader.native_ids()) == [142238, 439180] and not reader.problems
    seeds = reader.read(142238)
    image = seeds.image
    assert (image.width, image.height, image.coco_id, image.psg_id, image.split) == (
        640,
        427,
        142238,
        142238,
        "val2017",
    )
    segments = next(a for a in pan["annotations"] if a["image_id"] == 142238)["segments_info"]
    assert len(seeds.regions) == len(segments) and seeds.problems == []
    classes = raw["thing_classes"] + raw["stuff_classes"]
    for region, seg in zip(seeds.regions, segments, strict=True):
        # the real panoptic area of each segment is the area of the mask read from the PNG
        assert masks.area(region.segmentation) == seg["area"]
        x, y, w, h = seg["bbox"]
        assert region.box == (x, y, x + w, y + h)
        assert region.source.annotation_id == str(seg["id"]) and region.source.split == "train"
    assert (
        seeds.regions[14].label
        == "sports ball"
        == classes[raw["data"][0]["segments_info"][14]["category_id"]]
    )
    assert {(r.subject, r.predicate, r.object) for r in seeds.relations} == {
        ("0", "looking at", "14"),
        ("1", "standing on", "17"),
    }
    assert reader.read(439180).regions[0].source.split == "test"  # its PSG id is in test_image_ids


def test_ade20k_instances_from_the_seg_png_named_by_the_json():
    reader = Ade20kReader(str(ADE))
    assert reader.native_ids() == ["ADE_train_00000001"]
    seeds = reader.read("ADE_train_00000001")
    assert (seeds.image.width, seeds.image.height, seeds.image.split) == (40, 30, "training")
    assert seeds.image.file_name == "training/urban/street/ADE_train_00000001.jpg"
    assert seeds.problems == []
    sky, car, car2 = seeds.regions  # the windshield is a part (part_level 1): not a region
    assert (sky.label, car.label, car2.label) == ("sky", "car", "car")
    assert [masks.area(r.segmentation) for r in seeds.regions] == [400, 140, 160]
    assert car.box == (2, 15, 16, 25)
    assert (
        car.source.annotation_id == "2"
        and car.attributes == ["parked"]
        and "automobile" in car.names
    )
    assert car2.source.annotation_id == "3"  # the second car is told apart by its polygon
