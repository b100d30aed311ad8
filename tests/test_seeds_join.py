"""Sources joined per image: one record per real image, nothing lost or duplicated; the merge
rule; the selection rule; deterministic shards; fingerprints that follow the files."""

from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers import TINYCOCO

from synthvg.pipeline import run_build
from synthvg.readers.base import SourceRegion
from synthvg.readers.merge import Member, Merger
from synthvg.readers.names import NameMatcher
from synthvg.schemas import RegionSource
from synthvg.schemas.config import BuildConfig
from synthvg.stages import plan_build
from synthvg.stages.seeds import SeedsStage
from synthvg.storage import connect

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
ALL = ["coco", "lvis", "refcoco", "vg", "gqa"]


def _sources() -> list[dict]:
    ann = TINYCOCO / "annotations"
    return [
        {
            "kind": "coco",
            "annotations": str(ann / "instances_train2017.json"),
            "images": str(TINYCOCO / "images" / "train2017"),
        },
        {
            "kind": "coco",
            "annotations": str(ann / "instances_val2017.json"),
            "images": str(TINYCOCO / "images" / "val2017"),
        },
        {"kind": "lvis", "annotations": str(SEEDS / "lvis_v1" / "lvis_v1_val.json")},
        {"kind": "refcoco", "refs": str(SEEDS / "refcoco" / "refs(unc).p")},
        {"kind": "vg", "root": str(SEEDS / "vg")},
        {"kind": "gqa", "annotations": str(SEEDS / "gqa" / "val_sceneGraphs.json")},
    ]


def _config(out: Path, sources=None, **seeds) -> BuildConfig:
    return BuildConfig.model_validate(
        {
            "out": str(out),
            "shard_size": 8,
            "seeds": {"sources": sources or _sources(), **seeds},
            "regions": {"proposer": "none"},
            "teacher": {"backend": "none"},
        }
    )


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("joined") / "root")
    assert run_build(cfg).status == "completed"
    return connect(cfg.out)


def _expected_annotations() -> Counter:
    """Every annotation the input files hold, as (dataset, annotation id)."""
    out: Counter = Counter()
    for name in ("instances_train2017.json", "instances_val2017.json"):
        out.update(
            ("coco", str(a["id"]))
            for a in json.loads((TINYCOCO / "annotations" / name).read_text())["annotations"]
        )
    out.update(
        ("lvis", str(a["id"]))
        for a in json.loads((SEEDS / "lvis_v1" / "lvis_v1_val.json").read_text())["annotations"]
    )
    out.update(
        ("refcoco", str(r["ref_id"]))
        for r in pickle.loads((SEEDS / "refcoco" / "refs(unc).p").read_bytes())
    )
    vg_objects = {
        o["object_id"]
        for rec in json.loads((SEEDS / "vg" / "objects.json").read_text())
        for o in rec["objects"]
    }
    vg_objects |= {
        e["object_id"]
        for rec in json.loads((SEEDS / "vg" / "relationships.json").read_text())
        for rel in rec["relationships"]
        for e in (rel["subject"], rel["object"])
    }
    vg_objects -= {
        m
        for rec in json.loads((SEEDS / "vg" / "objects.json").read_text())
        for o in rec["objects"]
        for m in o.get("merged_object_ids", [])
    }
    out.update(("vg", f"object:{i}") for i in vg_objects)
    out.update(
        ("vg", f"region:{r['region_id']}")
        for rec in json.loads((SEEDS / "vg" / "region_descriptions.json").read_text())
        for r in rec["regions"]
    )
    out.update(
        ("gqa", oid)
        for g in json.loads((SEEDS / "gqa" / "val_sceneGraphs.json").read_text()).values()
        for oid in g["objects"]
    )
    return out


def test_one_record_per_real_image_with_every_native_id(joined):
    assert joined.sql("SELECT count(*), count(DISTINCT image_id) FROM images").fetchall() == [
        (39, 39)
    ]
    rows = joined.sql("""SELECT image_id, sources, coco_id, vg_id, gqa_id, width, height, split, content_hash <> ''
                         FROM images WHERE len(sources) > 1 ORDER BY image_id""").fetchall()
    assert rows == [
        (
            "coco:252219",
            ["coco", "lvis", "refcoco", "vg"],
            252219,
            1002,
            None,
            640,
            428,
            "val2017",
            True,
        ),
        (
            "coco:397133",
            ["coco", "gqa", "lvis", "refcoco", "vg"],
            397133,
            1001,
            "1001",
            640,
            427,
            "val2017",
            True,
        ),
        ("vg:1003", ["gqa", "vg"], None, 1003, "1003", 500, 375, "val", False),
    ]
    assert joined.sql("SELECT count(*) FROM errors").fetchall() == [(0,)]


def test_no_region_lost_or_duplicated(joined):
    got = Counter(
        (s["dataset"], s["annotation_id"])
        for (sources,) in joined.sql("SELECT sources FROM regions").fetchall()
        for s in sources
    )
    assert got == _expected_annotations()
    assert max(got.values()) == 1
    counts = dict(
        joined.sql(
            "SELECT image_id, count(*) FROM regions WHERE image_id IN ('coco:397133', 'coco:252219', 'vg:1003') GROUP BY 1"
        ).fetchall()
    )
    # 19 COCO regions + LVIS apron + VG shirt, wall, hat (a relation endpoint) and one unmatched phrase
    assert counts == {"coco:397133": 24, "coco:252219": 7, "vg:1003": 3}


def test_one_object_from_five_sources_is_one_region(joined):
    ((label, descriptions, attributes, sources, bbox),) = joined.sql("""
        SELECT label, descriptions, attributes, sources, bbox FROM regions
        WHERE image_id = 'coco:397133' AND list_contains(list_transform(sources, lambda s: s.annotation_id), '200887')""").fetchall()
    assert label == "person"  # COCO's name wins over VG's 'man'
    assert descriptions == ["Man in white on the right.", "the chef", "a man standing in a kitchen"]
    assert attributes == ["standing"]
    assert [(s["dataset"], s["annotation_id"], s["split"]) for s in sources] == [
        ("coco", "200887", None),
        ("lvis", "1", None),
        ("refcoco", "0", "testA"),
        ("vg", "object:5000", None),
        ("gqa", "2001", None),
        ("vg", "region:7000", None),
    ]
    assert bbox == {
        "x1": 388.66,
        "y1": 69.92,
        "x2": 388.66 + 109.41,
        "y2": 69.92 + 277.62,
    }  # COCO's geometry


def test_vg_boxes_are_scaled_to_the_coco_image(joined):
    ((bbox,),) = joined.sql(
        "SELECT bbox FROM regions WHERE image_id = 'coco:397133' AND label = 'shirt'"
    ).fetchall()
    assert bbox["x1"] == pytest.approx(500 * 640 / 800) and bbox["y2"] == pytest.approx(
        270 * 427 / 534
    )


def test_seed_relations_between_merged_regions(joined):
    rows = joined.sql("""
        SELECT r.image_id, s.label, r.predicate, o.label, r.predicate_raw, r.category, r.stage, r.generator, r.model
        FROM relations r JOIN regions s ON s.image_id = r.image_id AND s.region_id = r.subject_id
        JOIN regions o ON o.image_id = r.image_id AND o.region_id = r.object_id ORDER BY 1, 2, 3, 4""").fetchall()
    assert rows == [
        (
            "coco:252219",
            "person",
            "carrying",
            "handbag",
            "carrying",
            "interactional",
            "seed",
            "human",
            "visual-genome-1.4",
        ),
        (
            "coco:252219",
            "umbrella",
            "above",
            "person",
            "above",
            "spatial",
            "seed",
            "human",
            "visual-genome-1.4",
        ),
        (
            "coco:397133",
            "bottle",
            "left of",
            "person",
            "to the left of",
            "spatial",
            "seed",
            "human",
            "gqa-1.1",
        ),
        (
            "coco:397133",
            "bottle",
            "on",
            "dining table",
            " ON ",
            "spatial",
            "seed",
            "human",
            "visual-genome-1.4",
        ),
        (
            "coco:397133",
            "hat",
            "on",
            "person",
            "on",
            "spatial",
            "seed",
            "human",
            "visual-genome-1.4",
        ),
        (
            "coco:397133",
            "person",
            "holding",
            "bottle",
            "HOLDING",
            "interactional",
            "seed",
            "human",
            "visual-genome-1.4+gqa-1.1",
        ),
        (
            "coco:397133",
            "person",
            "wearing",
            "shirt",
            "wearing",
            "interactional",
            "seed",
            "human",
            "visual-genome-1.4",
        ),
        (
            "vg:1003",
            "dog",
            "catching",
            "frisbee",
            "catching",
            "interactional",
            "seed",
            "human",
            "visual-genome-1.4+gqa-1.1",
        ),
    ]
    # 7 VG + 3 GQA relationships in the files: each is in exactly one row
    assert (
        sum(len(m.split("+")) for (m,) in joined.sql("SELECT model FROM relations").fetchall())
        == 10
    )
    assert joined.sql("SELECT count(DISTINCT relation_id) FROM relations").fetchall() == [(8,)]


def _member(view, dataset, box, label=None, link=None, phrase=False) -> Member:
    xyxy = tuple(float(v) for v in box)
    region = SourceRegion(
        key=f"{dataset}{view}{box}",
        box=xyxy,
        source=RegionSource(dataset=dataset, annotation_id="1"),
        label=label,
        link=link,
        phrase=phrase,
    )
    return Member(view, dataset, region, xyxy, None, (xyxy[2] - xyxy[0]) * (xyxy[3] - xyxy[1]))


def _merge(members, **kw):
    merger = Merger(
        kw.get("iou", 0.7),
        kw.get("phrase_iou", 0.5),
        kw.get("names", "compatible"),
        NameMatcher(kw.get("aliases")),
    )
    return [[(m.dataset, m.region.label) for m in c.members] for c in merger.merge(members)]


def test_merge_rule():
    box = (0, 0, 100, 100)
    # two annotations of one dataset never merge, however much they overlap
    assert _merge([_member(0, "vg", box, "man"), _member(0, "vg", box, "man")]) == [
        [("vg", "man")],
        [("vg", "man")],
    ]
    # compatible names (alias group person ~ man) merge; incompatible ones do not, unless names: any
    assert _merge(
        [_member(0, "coco", box, "person"), _member(1, "vg", (2, 2, 100, 100), "man")]
    ) == [[("coco", "person"), ("vg", "man")]]
    assert len(_merge([_member(0, "coco", box, "person"), _member(1, "vg", box, "shirt")])) == 2
    assert (
        len(
            _merge([_member(0, "coco", box, "person"), _member(1, "vg", box, "shirt")], names="any")
        )
        == 1
    )
    assert (
        len(
            _merge(
                [_member(0, "coco", box, "person"), _member(1, "vg", box, "pedestrian")],
                aliases={"person": ["pedestrian"]},
            )
        )
        == 1
    )
    # below the IoU threshold: separate
    assert (
        len(_merge([_member(0, "coco", box, "dog"), _member(1, "vg", (0, 0, 100, 60), "dog")])) == 2
    )
    # greedy by IoU: each region takes its best partner
    got = _merge(
        [
            _member(0, "coco", box, "dog"),
            _member(0, "coco", (5, 0, 105, 100), "dog"),
            _member(1, "vg", (5, 0, 104, 100), "dog"),
        ]
    )
    assert got == [[("coco", "dog")], [("coco", "dog"), ("vg", "dog")]]
    # a link joins whatever the geometry; phrases join the region they overlap most, or stand alone
    linked = _merge(
        [
            _member(0, "coco", box, "cat", link="coco-ann:1"),
            _member(1, "refcoco", (50, 50, 60, 60), "cat", link="coco-ann:1"),
        ]
    )
    assert linked == [[("coco", "cat"), ("refcoco", "cat")]]
    phrases = _merge(
        [
            _member(0, "coco", box, "cat"),
            _member(1, "vg", (0, 0, 100, 80), phrase=True),
            _member(1, "vg", (300, 300, 310, 310), phrase=True),
        ]
    )
    assert phrases == [[("coco", "cat"), ("vg", None)], [("vg", None)]]


def test_selection_rule_limit_and_deterministic_shards(tmp_path):
    every = plan_build(_config(tmp_path / "a", select={"require": ALL}), "run")
    assert [s.image_ids for s in every.shards] == [["coco:397133"]]
    picked = plan_build(
        _config(tmp_path / "b", select={"ids": ["vg:1003", "coco:252219", "coco:1"]}), "run"
    )
    assert [i for s in picked.shards for i in s.image_ids] == ["coco:252219", "vg:1003"]
    assert [(e.kind, e.image_id) for e in picked.errors] == [("unknown_image", "coco:1")]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# one per line\nvg:1003\n")
    assert plan_build(_config(tmp_path / "c", select={"ids_file": str(ids_file)}), "run").shards[
        0
    ].image_ids == ["vg:1003"]
    plan = plan_build(_config(tmp_path / "d"), "run")
    again = plan_build(_config(tmp_path / "e", sources=list(reversed(_sources()))), "run")
    assert [s.image_ids for s in plan.shards] == [s.image_ids for s in again.shards]
    ids = [i for s in plan.shards for i in s.image_ids]
    assert (
        ids[-1] == "vg:1003"
        and ids[:3] == ["coco:6818", "coco:17627", "coco:37777"]
        and len(ids) == 39
    )
    limited = plan_build(_config(tmp_path / "f").model_copy(update={"limit": 3}), "run")
    assert [i for s in limited.shards for i in s.image_ids] == ids[:3]


def test_require_names_a_configured_dataset(tmp_path):
    with pytest.raises(ValueError, match="no source of that dataset"):
        _config(tmp_path, sources=_sources()[:2], select={"require": ["vg"]})


def test_gqa_alone_is_vg_images_until_image_data_maps_them(tmp_path):
    gqa = {"kind": "gqa", "annotations": str(SEEDS / "gqa" / "val_sceneGraphs.json")}
    alone = plan_build(_config(tmp_path / "a", sources=[gqa]), "run")
    assert alone.shards[0].image_ids == ["vg:1001", "vg:1003"]
    mapped = plan_build(
        _config(
            tmp_path / "b", sources=[{**gqa, "image_data": str(SEEDS / "vg" / "image_data.json")}]
        ),
        "run",
    )
    assert mapped.shards[0].image_ids == ["coco:397133", "vg:1003"]


def test_seeds_fingerprint_follows_file_content_and_merge_rule(tmp_path):
    shutil.copytree(SEEDS / "vg", tmp_path / "vg")
    cfg = _config(tmp_path / "root", sources=[{"kind": "vg", "root": str(tmp_path / "vg")}])
    before = SeedsStage.fingerprint_payload(cfg)
    assert SeedsStage.fingerprint_payload(cfg) == before
    assert (
        SeedsStage.fingerprint_payload(
            _config(
                tmp_path / "root", sources=cfg.model_dump()["seeds"]["sources"], merge={"iou": 0.8}
            )
        )
        != before
    )
    rels = tmp_path / "vg" / "relationships.json"
    rels.write_text(rels.read_text().replace("carrying", "holding"))
    assert SeedsStage.fingerprint_payload(cfg) != before


def test_predicates_normalised_and_categorised():
    from synthvg.predicates import _CATEGORY_WORDS, CATEGORY, category_of, normalise

    assert sum(len(w.split("|")) for w in _CATEGORY_WORDS.values()) == len(
        CATEGORY
    )  # no predicate in two categories
    assert normalise("  Sitting   ON ") == "sitting on"
    assert normalise("To the left of") == "left of"
    assert [
        category_of(p)
        for p in ("sitting on", "has a", "holding", "talking to", "smiling at", "says hi")
    ] == [
        "spatial",
        "functional",
        "interactional",
        "social",
        "emotional",
        "other",
    ]


def test_name_keys():
    m = NameMatcher()
    assert m.compatible(m.keys(["dining table"]), m.keys(["Tables"]))  # head noun, plural
    assert m.compatible(m.keys(["person"]), m.keys(["skier"]))  # alias group
    assert m.compatible(m.keys(["baseball_bat"]), m.keys(["bat.n.01"]))  # underscores, synset lemma
    assert not m.compatible(m.keys(["person"]), m.keys(["shirt"]))
    assert m.compatible(frozenset(), m.keys(["shirt"]))  # a side without a name matches
