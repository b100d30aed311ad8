"""Visual Genome (every release file, with its quirks) and GQA scene graphs, on hand-written files."""

from __future__ import annotations

import json
from pathlib import Path

from synthvg.readers.gqa import GqaReader
from synthvg.readers.vg import VgReader, release_files

VG = Path(__file__).parent / "fixtures" / "seeds" / "vg"
GQA = Path(__file__).parent / "fixtures" / "seeds" / "gqa" / "val_sceneGraphs.json"


def _by_key(seeds):
    return {r.key: r for r in seeds.regions}


def test_vg_release_files_and_their_quirks():
    reader = VgReader(release_files(str(VG)))
    assert set(reader.files) == {
        "image_data",
        "objects",
        "attributes",
        "relationships",
        "region_descriptions",
        "scene_graphs",
    }
    assert reader.native_ids() == [1001, 1002, 1003] and not reader.problems
    assert reader.coco_ids == {1001: 397133, 1002: 252219}
    seeds = reader.read(1001)
    assert (seeds.image.width, seeds.image.height, seeds.image.coco_id, seeds.image.vg_id) == (
        800,
        534,
        397133,
        1001,
    )
    assert seeds.image.file_name == "VG_100K/1001.jpg"
    regions = _by_key(seeds)
    man = regions["o5000"]
    assert (
        man.label == "man" and man.attributes == ["standing"] and "man" in man.names
    )  # synset lemma
    assert man.box == (486, 87, 623, 434)  # xywh ints -> xyxy
    assert regions["o5004"].attributes == ["white"]  # attributes.json, stripped and de-duplicated
    # the hat is in no objects list: the relationship's endpoint adds it
    assert (
        regions["o5006"].label == "hat" and regions["o5006"].source.annotation_id == "object:5006"
    )
    # region descriptions are keyed by `id`; each phrase is a description-only region
    phrases = [r for r in seeds.regions if r.phrase]
    assert [p.descriptions for p in phrases] == [
        ["a man standing in a kitchen"],
        ["white wall behind the man"],
        ["a window with blinds"],
    ]
    rels = {(r.key, r.subject, r.predicate, r.object) for r in seeds.relations}
    assert rels == {
        ("9000", "o5000", "HOLDING", "o5002"),  # subject 5001 was merged into 5000; named by `name`
        ("9001", "o5000", "wearing", "o5004"),
        ("9002", "o5006", "on", "o5000"),
        ("9003", "o5002", " ON ", "o5003"),
    }
    assert seeds.problems == []


def test_vg_scene_graphs_alone_skip_endpoints_that_name_no_object():
    files = {
        "image_data": str(VG / "image_data.json"),
        "scene_graphs": str(VG / "scene_graphs.json"),
    }
    seeds = VgReader(files, version="1.2").read(1001)
    assert {r.key for r in seeds.regions} == {"o5000", "o5002", "o5003", "o5004", "o5005"}
    assert _by_key(seeds)["o5004"].attributes == ["white"]
    assert {(r.subject, r.predicate, r.object) for r in seeds.relations} == {
        ("o5000", "HOLDING", "o5002"),
        ("o5000", "wearing", "o5004"),
        ("o5002", " ON ", "o5003"),
    }
    (problem,) = seeds.problems
    assert (
        problem.kind == "unknown_object"
        and "5006" in problem.reason
        and "scene_graphs" in problem.source
    )


def test_vg_v10_image_data_uses_id(tmp_path):
    old = [
        {"id": r["image_id"], **{k: v for k, v in r.items() if k != "image_id"}}
        for r in json.loads((VG / "image_data.json").read_text())
    ]
    (tmp_path / "image_data.json").write_text(json.dumps(old))
    reader = VgReader(
        {"image_data": str(tmp_path / "image_data.json"), "objects": str(VG / "objects.json")}
    )
    assert reader.native_ids() == [1001, 1002, 1003] and reader.coco_ids[1001] == 397133
    assert len(reader.read(1003).regions) == 2


def test_gqa_relations_are_lists_of_name_and_object():
    reader = GqaReader(str(GQA))
    assert reader.native_ids() == ["1001", "1003"] and reader.split == "val" and not reader.problems
    seeds = reader.read("1001")
    assert (seeds.image.width, seeds.image.height, seeds.image.gqa_id, seeds.image.vg_id) == (
        800,
        534,
        "1001",
        1001,
    )
    regions = _by_key(seeds)
    assert regions["2001"].label == "man" and regions["2001"].attributes == ["standing"]
    assert regions["2003"].box[2:] == (432, 533)
    assert {(r.subject, r.predicate, r.object) for r in seeds.relations} == {
        ("2001", "holding", "2002"),
        ("2002", "to the left of", "2001"),
    }


def test_gqa_ids_map_to_coco_through_vg_image_data():
    reader = GqaReader(str(GQA), image_data=str(VG / "image_data.json"))
    assert reader.coco_ids == {1001: 397133, 1002: 252219}
