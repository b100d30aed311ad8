"""Mask helpers: RLE conversion from COCO shapes, the one-pass label-map encoder, IoU."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from synthvg import masks
from synthvg.schemas import Box


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.int32, st.tuples(st.integers(1, 23), st.integers(1, 19)), elements=st.integers(0, 6))
)
def test_label_map_encoding_matches_per_label_encoding(labels):
    rles = masks.label_map_to_rles(labels)
    assert sorted(rles) == sorted(np.unique(labels).tolist())
    for label, rle in rles.items():
        assert rle == masks.encode(labels == label)


def test_polygon_to_rle_area_and_box():
    rle = masks.segmentation_to_rle([[10, 10, 30, 10, 30, 20, 10, 20]], 40, 50)
    assert rle.size == [40, 50]
    assert 180 <= masks.area(rle) <= 231
    b = masks.bbox(rle)
    assert (b.x1, b.y1) == (10, 10)


def test_uncompressed_crowd_rle_is_converted():
    dense = np.zeros((6, 5), dtype=bool)
    dense[1:4, 2:4] = True
    flat = dense.ravel(order="F").astype(int)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    rle = masks.segmentation_to_rle({"counts": counts, "size": [6, 5]}, 6, 5)
    assert (masks.decode(rle) == dense).all()


def test_bad_segmentations_raise_value_error():
    import pytest

    with pytest.raises(ValueError):
        masks.segmentation_to_rle([[1, 2]], 10, 10)
    with pytest.raises(ValueError):
        masks.segmentation_to_rle({"counts": "abc", "size": [5, 5]}, 10, 10)
    with pytest.raises(ValueError):
        masks.segmentation_to_rle("nonsense", 10, 10)


def test_iou_and_coverage():
    a = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True
    b = np.zeros((20, 20), bool)
    b[0:10, 0:20] = True
    ra, rb = masks.encode(a), masks.encode(b)
    assert masks.iou_matrix([ra], [rb])[0, 0] == 0.5
    assert masks.coverage_matrix([ra], [rb])[0, 0] == 1.0
    assert masks.coverage_matrix([rb], [ra])[0, 0] == 0.5
    assert masks.iou_matrix([], [rb]).shape == (0, 1)


def test_box_rle_and_clip():
    rle = masks.box_to_rle(Box(x1=2, y1=3, x2=7, y2=9), 12, 10)
    assert masks.area(rle) == 30
    assert masks.clip_box(Box(x1=-5, y1=2, x2=50, y2=8), 10, 12) == Box(x1=0, y1=2, x2=10, y2=8)


def test_areas_in_one_call_match_area_one_by_one():
    """pycocotools' batched area breaks past 255 masks: areas() splits the calls."""
    rng = np.random.default_rng(1)
    rles = [masks.encode(rng.random((7, 9)) > 0.5) for _ in range(600)]
    got = masks.areas([masks.to_coco(r) for r in rles])
    assert got.tolist() == [masks.area(r) for r in rles]
