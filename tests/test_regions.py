"""The regions and depth stages' logic that needs no model: the IoU filter, uncovered regions,
the demo's whole + part merge, precomputed proposals, config and fingerprints, depth maths."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from helpers import REPO, demo_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from synthvg import masks
from synthvg.image_files import to_rgb
from synthvg.models.amg import (
    merge_whole_part,
    point_grid,
    remove_small_regions,
    remove_unions,
    work_size,
)
from synthvg.models.errors import ImageError
from synthvg.models.proposers import Proposal, to_proposals
from synthvg.pipeline import fingerprints, run_build
from synthvg.schemas.config import ConfigError, MergeParams, UncoveredConfig, load_config
from synthvg.stages import ShardSpec
from synthvg.stages.common import per_image
from synthvg.stages.depth import depth_png, depth_stats
from synthvg.stages.regions import check_regions, uncovered
from synthvg.storage import connect


def _rect(h, w, x1, y1, x2, y2) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y1:y2, x1:x2] = True
    return m


def _prop(mask: np.ndarray, score: float | None = None) -> Proposal:
    r = masks.encode(mask)
    return Proposal(r, masks.bbox(r), masks.area(r), score)


# ------------------------------------------------------------------ the IoU filter

_mask_sets = st.integers(1, 12).flatmap(
    lambda h: st.integers(1, 12).flatmap(
        lambda w: st.tuples(
            st.lists(
                st.lists(st.booleans(), min_size=h * w, max_size=h * w), min_size=1, max_size=5
            ),
            st.lists(
                st.lists(st.booleans(), min_size=h * w, max_size=h * w), min_size=0, max_size=6
            ),
            st.just((h, w)),
        )
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mask_sets, st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_iou_filter_equals_brute_force_dense_iou(data, threshold):
    regions, proposals, (h, w) = data
    a = [np.array(m, bool).reshape(h, w) for m in regions]
    b = [np.array(m, bool).reshape(h, w) for m in proposals]
    got = check_regions([masks.encode(m) for m in a], [masks.encode(m) for m in b], threshold)
    for r, (iou, pid, kept) in zip(a, got, strict=True):
        if not b:
            assert (iou, pid, kept) == (None, None, False)
            continue
        dense = [(r & p).sum() / (r | p).sum() if (r | p).any() else 0.0 for p in b]
        assert iou == pytest.approx(max(dense), abs=1e-12)
        assert pid == int(np.argmax(dense))  # ties: the lower proposal id
        assert kept == (max(dense) > threshold)
    if b:  # the packed-bit path gives the same numbers as the RLE path
        ra, rb = [masks.encode(m) for m in a], [masks.encode(m) for m in b]
        np.testing.assert_array_equal(
            masks.iou_matrix(ra, rb, "rle"), masks.iou_matrix(ra, rb, "dense")
        )


def test_iou_picks_the_dense_path_for_fragmented_masks_and_refuses_mixed_sizes():
    rng = np.random.default_rng(0)
    noise = [masks.encode(rng.random((60, 80)) < 0.5) for _ in range(4)]
    np.testing.assert_allclose(
        masks.iou_matrix(noise, noise), masks.iou_matrix(noise, noise, "rle")
    )
    with pytest.raises(ValueError, match="different sizes"):
        check_regions(
            [masks.encode(_rect(10, 10, 0, 0, 5, 5))],
            [masks.encode(_rect(10, 12, 0, 0, 5, 5))],
            0.5,
        )


# ------------------------------------------------------------------ uncovered regions


def test_uncovered_keeps_proposals_no_annotation_covers_merged_by_box_nms():
    h, w = 40, 60
    annotated = [masks.encode(_rect(h, w, 0, 0, 20, 20))]
    props = [
        _prop(_rect(h, w, 0, 0, 20, 20), 0.9),  # the annotation itself: covered
        _prop(_rect(h, w, 30, 10, 50, 30), 0.8),  # uncovered
        _prop(
            _rect(h, w, 31, 10, 50, 30), 0.95
        ),  # near duplicate of the previous: NMS keeps the better
        _prop(_rect(h, w, 0, 30, 3, 33), 0.99),  # uncovered but below min_area
    ]
    assert uncovered(props, annotated, UncoveredConfig(mode="all", min_area=20)) == [2]
    assert uncovered(props, [], UncoveredConfig(mode="all", min_area=20)) == [2, 0]  # best first
    assert uncovered(props, [], UncoveredConfig(mode="all", max_regions=1)) == [3]


# ------------------------------------------------------------------ the demo's merge and clean-up


def test_union_masks_are_dropped_and_parts_added_by_the_demo_rules():
    h, w = 40, 80
    left, right = _rect(h, w, 0, 0, 20, 20), _rect(h, w, 20, 0, 40, 20)
    whole = [
        _prop(left | right, 0.9),
        _prop(left, 0.9),
        _prop(right, 0.9),
        _prop(_rect(h, w, 50, 0, 80, 40), 0.9),
    ]
    kept = remove_unions(whole, MergeParams())
    assert [p.area for p in kept] == [400, 400, 1200]  # the left+right union is gone
    parts = [
        _prop(_rect(h, w, 0, 30, 10, 40), 0.9),  # new ground: added
        _prop(_rect(h, w, 50, 0, 80, 38), 0.9),  # IoU 0.95 with a kept mask: skipped
        _prop(_rect(h, w, 2, 2, 10, 10), 0.9),  # small and inside a kept mask: skipped
    ]
    merged = merge_whole_part(whole, parts, MergeParams())
    assert sorted(p.area for p in merged) == [100, 400, 400, 1200]


def test_small_holes_are_filled_and_small_islands_dropped():
    m = _rect(30, 30, 5, 5, 25, 25)
    m[10:12, 10:12] = False  # a 4-px hole
    m[0:2, 28:30] = True  # a 4-px island
    cleaned, changed = remove_small_regions(m, 10)
    assert changed and cleaned.sum() == 400 and cleaned[10, 10] and not cleaned[0, 29]
    assert (
        remove_small_regions(_rect(30, 30, 0, 0, 3, 3), 100)[0].sum() == 9
    )  # the only island stays


def test_point_grid_and_work_size():
    g = point_grid(4)
    assert g.shape == (16, 2) and g.min() == 0.125 and g.max() == 0.875
    assert work_size(480, 640, 2048) == (480, 640)
    assert work_size(6000, 8000, 2048) == (1536, 2048)


# ------------------------------------------------------------------ precomputed proposals, end to end


def _write_proposals(folder, stem, rles, size=None):
    records = [
        {
            "segmentation": {"size": size or r.size, "counts": r.counts},
            "predicted_iou": 0.9,
            "area": 1,
        }
        for r in rles
    ]
    (folder / f"{stem}.json").write_text(json.dumps({"image": {}, "annotations": records}))


def test_precomputed_proposals_confirm_regions_and_add_uncovered_ones(tmp_path):
    props = tmp_path / "props"
    props.mkdir()
    cfg = demo_config(
        tmp_path / "root",
        limit=3,
        shard_size=3,
        teacher={"backend": "none"},
        filters={"backend": "none"},
    )
    images = [
        r for s in cfg.seeds.sources for r in json.loads(open(s.annotations).read())["images"]
    ]
    anns = [
        a for s in cfg.seeds.sources for a in json.loads(open(s.annotations).read())["annotations"]
    ]
    first3 = sorted(images, key=lambda i: i["id"])[:3]
    (a, b, c) = first3
    for img in (a, b):  # the annotations themselves, plus one region nobody annotated
        rles = [
            masks.segmentation_to_rle(x["segmentation"], img["height"], img["width"])
            for x in anns
            if x["image_id"] == img["id"]
        ]
        extra = masks.encode(_rect(img["height"], img["width"], 0, 0, 7, 7))
        _write_proposals(props, os.path.splitext(img["file_name"])[0], [*rles, extra])
    (props / (os.path.splitext(c["file_name"])[0] + ".json")).write_text("{not json")
    cfg = demo_config(
        tmp_path / "root",
        limit=3,
        shard_size=3,
        teacher={"backend": "none"},
        filters={"backend": "none"},
        regions={
            "proposer": "precomputed",
            "precomputed": {"path": str(props), "name": "semantic-sam"},
            "uncovered": {"mode": "all"},
        },
    )
    assert run_build(cfg).status == "completed"
    con = connect(cfg.out)
    assert con.sql("SELECT DISTINCT proposer FROM proposals").fetchall() == [
        ("precomputed/semantic-sam",)
    ]
    annotated = con.sql(
        "SELECT count(*), count(*) FILTER (WHERE kept) FROM regions WHERE sources[1].dataset = 'coco' AND best_iou IS NOT NULL"
    ).fetchall()[0]
    assert annotated[0] > 0 and annotated[0] == annotated[1]  # every annotation confirms itself
    extra = con.sql(
        "SELECT image_id, area, kept, best_iou FROM regions WHERE sources[1].dataset = 'proposal' ORDER BY image_id"
    ).fetchall()
    assert [(r[1], r[2], r[3]) for r in extra] == [(49.0, True, 1.0)] * 2
    assert con.sql("SELECT kind FROM errors").fetchall() == [("bad_proposals",)]


def test_precomputed_proposals_of_the_wrong_size_are_an_error_for_that_image(tmp_path):
    from synthvg.models.precomputed import PrecomputedProposer
    from synthvg.models.proposers import ImageItem
    from synthvg.schemas.config import PrecomputedConfig

    _write_proposals(tmp_path, "a", [masks.encode(_rect(10, 10, 0, 0, 5, 5))])
    proposer = PrecomputedProposer(PrecomputedConfig(path=str(tmp_path)))
    assert len(proposer.read(ImageItem("x:1", "/imgs/a.jpg", 10, 10))) == 1
    with pytest.raises(ImageError, match="unusable at 12x10"):
        proposer.read(ImageItem("x:1", "/imgs/a.jpg", 12, 10))
    with pytest.raises(ImageError) as e:
        proposer.read(ImageItem("x:2", "/imgs/b.jpg", 10, 10))
    assert e.value.kind == "no_proposals"


# ------------------------------------------------------------------ config and fingerprints


def test_config_names_the_proposer_section_and_resolves_model_paths(tmp_path):
    example = load_config(REPO / "configs" / "models.example.yaml")
    assert example.regions.proposer == "transformers_sam" and os.path.isabs(example.depth.path)
    assert (
        example.regions.transformers_sam.whole.multimask_output == 2
    )  # the preset, under overrides
    bad = tmp_path / "bad.yaml"
    for body, message in [
        ("regions: {proposer: segment_anything}", "needs its section"),
        (
            "regions: {proposer: transformers_sam, transformers_sam: {path: m, whole: {crop_n_layers: 1}}}",
            "crops",
        ),
        (
            "regions: {proposer: segment_anything, segment_anything: {checkpoint: c, chekpoint: d}}",
            "chekpoint: unknown key",
        ),
        ("depth: {backend: depth-anything}", "depth.depth-anything.path"),
    ]:
        bad.write_text(f"out: o\nseeds: {{sources: [{{annotations: a, images: i}}]}}\n{body}\n")
        with pytest.raises(ConfigError, match=message):
            load_config(bad)


def test_fingerprints_follow_the_checkpoint_but_not_batch_size(tmp_path):
    ckpt = tmp_path / "sam.pth"
    ckpt.write_bytes(b"x" * 10)
    shard = ShardSpec(index=0, image_ids=["coco:1"])

    def fp(**sam):
        cfg = demo_config(
            tmp_path / "root",
            regions={
                "proposer": "segment_anything",
                "segment_anything": {"checkpoint": str(ckpt), **sam},
            },
        )
        return fingerprints(cfg, shard)["regions"]

    base = fp()
    assert fp(device="cpu", whole={"points_per_batch": 8}) == base
    assert fp(whole={"pred_iou_thresh": 0.5}) != base
    ckpt.write_bytes(b"y" * 11)
    assert fp() != base


# ------------------------------------------------------------------ depth maths and image modes


def test_depth_statistics_and_16_bit_maps():
    depth = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))
    median, spread = depth_stats(depth, _rect(4, 8, 4, 0, 8, 4))
    q25, q75 = np.percentile(depth[:, 4:], [25, 75])
    assert median == pytest.approx(np.median(depth[:, 4:])) and spread == pytest.approx(q75 - q25)
    assert depth_stats(depth, np.zeros((4, 8), bool)) == (None, None)
    assert depth_stats(depth, _rect(8, 16, 0, 0, 16, 8))[0] == pytest.approx(
        0.5
    )  # mask at another size
    img = Image.open(io.BytesIO(depth_png(depth)))
    assert img.mode.startswith("I;16") or img.mode == "I"
    np.testing.assert_allclose(np.asarray(img, dtype=np.float64) / 65535, depth, atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "F", "CMYK"])
def test_every_image_mode_becomes_rgb(mode):
    base = Image.fromarray((np.arange(12 * 16).reshape(12, 16) % 256).astype(np.uint8))
    img = (
        Image.fromarray(np.asarray(base, np.uint16) * 257).convert(mode)
        if mode == "I;16"
        else base.convert(mode)
    )
    rgb = to_rgb(img)
    assert rgb.shape == (12, 16, 3) and rgb.dtype == np.uint8 and rgb.max() > 100


def test_one_failing_image_costs_only_itself():
    errors = []

    def fn(items):
        if 2 in items:
            raise (
                ImageError("bad_thing", "two is bad")
                if len(items) == 1
                else RuntimeError("batch failed")
            )
        return [i * 10 for i in items]

    assert per_image(fn, [1, 2, 3], lambda i, k, r: errors.append((i, k)), "failed") == [
        10,
        None,
        30,
    ]
    assert errors == [(2, "bad_thing")]
    assert (
        to_proposals([masks.encode(np.zeros((3, 3), bool))], [0.5], 10) == []
    )  # empty masks dropped
