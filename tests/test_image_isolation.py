"""One image, however broken or huge, costs only itself: an error row, never a failed shard."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import TINYCOCO, demo_config
from PIL import Image, ImageFile

from synthvg.image_files import PILLOW_LIMIT, ImageFileError, check_image, read_image
from synthvg.models.proposers import FelzenszwalbProposer
from synthvg.pipeline import run_build
from synthvg.readers.join import Joiner
from synthvg.schemas.config import MAX_IMAGE_PIXELS, FelzenszwalbConfig
from synthvg.stages.base import RunContext, StageOutput
from synthvg.stages.common import load_rgb
from synthvg.storage import connect

BIG_ID = 999_000_001
KEEP = 3  # tinycoco val images kept beside the big one


def _huge_png(path: Path, side: int) -> Path:
    """A side x side bilevel PNG: a few MB in memory and a few hundred KB on disk."""
    Image.new("1", (side, side), 1).save(path, optimize=False)
    return path


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, Path, list[int]]:
    """A COCO source of three tinycoco images plus extra entries the tests add files for."""
    raw = json.loads((TINYCOCO / "annotations" / "instances_val2017.json").read_text())
    images = sorted(raw["images"], key=lambda i: i["id"])[:KEEP]
    ids = [i["id"] for i in images]
    folder = tmp_path / "images"
    folder.mkdir()
    for i in images:
        shutil.copy(TINYCOCO / "images" / "val2017" / i["file_name"], folder / i["file_name"])
    raw["images"] = images
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] in ids]
    return tmp_path / "instances.json", folder, ids, raw


def _write(corpus, extra: list[tuple[int, str, int, int]]) -> list[dict]:
    path, folder, _, raw = corpus
    data = {
        **raw,
        "images": raw["images"]
        + [{"id": i, "file_name": name, "width": w, "height": h} for i, name, w, h in extra],
        "annotations": raw["annotations"]
        + [
            {
                "id": 990_000 + k,
                "image_id": i,
                "category_id": 1,
                "iscrowd": 0,
                "area": 100.0,
                "bbox": [1, 1, 10, 10],
                "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]],
            }
            for k, (i, *_rest) in enumerate(extra)
        ],
    }
    path.write_text(json.dumps(data))
    return [{"annotations": str(path), "images": str(folder)}]


def _build(tmp_path: Path, sources: list[dict], regions: bool = False, **seeds):
    cfg = demo_config(
        tmp_path / "root",
        shard_size=8,
        seeds={"sources": sources, **seeds},
        teacher={"backend": "none"},
        filters={"backend": "none"},
        **({} if regions else {"regions": {"proposer": "none"}}),
    )
    run = run_build(cfg)
    return run, connect(cfg.out)


def test_a_14000_pixel_square_png_is_one_error_row_and_its_shard_commits(tmp_path, corpus):
    _huge_png(corpus[1] / "huge.png", 14000)
    run, con = _build(tmp_path, _write(corpus, [(BIG_ID, "huge.png", 14000, 14000)]), regions=True)
    assert run.status == "completed"
    assert all(s.shards_failed == 0 for s in run.stages)
    ((kind, image, reason),) = con.sql("SELECT kind, image_id, reason FROM errors").fetchall()
    assert (kind, image) == ("image_too_large", f"coco:{BIG_ID}")
    assert "huge.png is 196,000,000 pixels, over the limit of 178,956,970" in reason
    # the rest of its shard: every other image, its regions and the regions stage's proposals
    assert sorted(i for (i,) in con.sql("SELECT coco_id FROM images").fetchall()) == corpus[2]
    assert con.sql("SELECT count(DISTINCT image_id) FROM proposals").fetchall() == [(KEEP,)]


def test_the_pixel_limit_is_a_config_key(tmp_path, corpus):
    w, h = Image.open(next(corpus[1].iterdir())).size
    run, con = _build(tmp_path, _write(corpus, []), max_image_pixels=w * h - 1)
    assert run.status == "completed"
    reasons = [
        r for (r,) in con.sql("SELECT reason FROM errors WHERE kind = 'image_too_large'").fetchall()
    ]
    assert any(f"{w}x{h} = {w * h:,} pixels, over the limit of {w * h - 1:,}" in r for r in reasons)
    assert con.sql("SELECT count(*) FROM images").fetchall()[0][0] == KEEP - len(reasons)


def test_the_pixel_limit_cannot_exceed_what_pillow_decodes(tmp_path):
    with pytest.raises(ValueError, match="max_image_pixels"):
        demo_config(tmp_path / "root", seeds={"max_image_pixels": MAX_IMAGE_PIXELS + 1})
    assert PILLOW_LIMIT == MAX_IMAGE_PIXELS  # the config's ceiling is Pillow's own refusal


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty (0 bytes)"), (b"just some text, not a JPEG\n" * 3, "not an image file")],
)
def test_unreadable_files_are_named_without_memory_addresses(tmp_path, corpus, content, expected):
    (corpus[1] / "bad.jpg").write_bytes(content)
    run, con = _build(tmp_path, _write(corpus, [(BIG_ID, "bad.jpg", 64, 48)]))
    assert run.status == "completed"
    ((kind, reason),) = con.sql("SELECT kind, reason FROM errors").fetchall()
    assert kind == "bad_image" and expected in reason and "bad.jpg" in reason
    assert " at 0x" not in reason and "object at" not in reason and "BytesIO" not in reason
    with pytest.raises(ImageFileError) as e:
        read_image(str(corpus[1] / "bad.jpg"))
    assert "0x" not in str(e.value)


def test_a_decoder_fault_is_named_without_memory_addresses(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageFileError, match="corrupt or truncated") as e:
        check_image(str(path), None)
    assert e.value.kind == "bad_image" and " at 0x" not in str(e.value)


def test_out_of_memory_on_one_image_is_its_error_row(tmp_path, corpus, monkeypatch):
    Image.new("RGB", (64, 48), (1, 2, 3)).save(corpus[1] / "oom.png")
    load = ImageFile.ImageFile.load

    def load_or_run_out(self):
        if self.size == (64, 48):
            raise MemoryError
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_or_run_out)
    run, con = _build(tmp_path, _write(corpus, [(BIG_ID, "oom.png", 64, 48)]))
    assert run.status == "completed"
    ((kind, image, reason),) = con.sql("SELECT kind, image_id, reason FROM errors").fetchall()
    assert (
        (kind, image) == ("image_too_large", f"coco:{BIG_ID}")
        and "out of memory" in reason
        and "64x48" in reason
    )
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(KEEP,)]


def test_any_other_fault_of_one_image_costs_only_that_image(tmp_path, corpus, monkeypatch):
    join = Joiner.join

    def join_or_fail(self, image_id, *args, **kwargs):
        if image_id == f"coco:{corpus[2][0]}":
            raise RuntimeError("a bug that only this image triggers")
        return join(self, image_id, *args, **kwargs)

    monkeypatch.setattr(Joiner, "join", join_or_fail)
    run, con = _build(tmp_path, _write(corpus, []))
    assert run.status == "completed"
    ((kind, image, reason),) = con.sql("SELECT kind, image_id, reason FROM errors").fetchall()
    assert (kind, image) == (
        "seed_failed",
        f"coco:{corpus[2][0]}",
    ) and "RuntimeError: a bug" in reason
    assert con.sql("SELECT count(*) FROM images").fetchall() == [(KEEP - 1,)]


def test_pillow_bomb_warnings_turned_into_errors_do_not_stop_a_large_image(tmp_path):
    path = _huge_png(tmp_path / "large.png", 10000)  # 100M pixels: above Pillow's warning threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked = check_image(str(path), MAX_IMAGE_PIXELS)
    assert (checked.width, checked.height) == (10000, 10000)
    with pytest.raises(
        ImageFileError, match="10000x10000 = 100,000,000 pixels, over the limit of 99,999,999"
    ) as e:
        check_image(str(path), 99_999_999)
    assert e.value.kind == "image_too_large"


def test_large_images_decode_downscaled_where_the_stage_allows(tmp_path):
    jpeg = tmp_path / "large.jpg"
    rgb = np.zeros((3000, 4000, 3), np.uint8)
    rgb[1000:2000, 1000:3000] = (200, 30, 30)
    Image.fromarray(rgb).save(jpeg, quality=90)
    _, img = read_image(str(jpeg), max_side=640)
    assert max(img.size) >= 640 and img.size == (1000, 750)  # JPEG DCT scaling: 1/4, no full decode
    png = tmp_path / "large.png"
    Image.fromarray(rgb).save(png)
    _, img = read_image(str(png), max_side=640)
    assert img.size == (667, 500)  # decoded, then reduced by 6
    row = {"image_id": "x:1", "file_uri": str(jpeg), "width": 4000, "height": 3000}
    out = StageOutput()
    small = load_rgb(row, out, RunContext("r", "regions"), 640)
    assert small.shape == (750, 1000, 3) and not out.errors
    # masks still come back at the image's size, from the downscaled pixels
    proposals = FelzenszwalbProposer(FelzenszwalbConfig(max_side=640)).propose(small, (3000, 4000))
    assert proposals and all(p.mask.size == [3000, 4000] for p in proposals)
    square = [p for p in proposals if abs(p.bbox.x1 - 1000) < 12 and abs(p.bbox.x2 - 3000) < 12]
    assert square and abs(square[0].bbox.y1 - 1000) < 12 and abs(square[0].bbox.y2 - 2000) < 12


def test_felzenszwalb_gives_the_same_masks_whether_or_not_the_size_is_given():
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[50:150, 60:200] = 255
    proposer = FelzenszwalbProposer(FelzenszwalbConfig(max_side=100))
    assert proposer.propose(rgb) == proposer.propose(rgb, (200, 300))


def test_a_file_changed_to_another_size_is_refused_before_decoding(tmp_path):
    path = _huge_png(tmp_path / "now_huge.png", 9000)
    row = {"image_id": "x:1", "file_uri": str(path), "width": 64, "height": 48}
    out = StageOutput()
    assert load_rgb(row, out, RunContext("r", "regions")) is None
    (error,) = out.errors
    assert error.kind == "image_size_mismatch" and "9000x9000" in error.reason


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_files_above_the_full_decode_size_are_still_checked_to_the_end(tmp_path, fmt):
    side = 6000  # 36M pixels: above FULL_DECODE_PIXELS, so checked without a full-size buffer
    gray = np.tile(np.arange(side, dtype=np.uint16) % 251, (side, 1)).astype(np.uint8)
    path = tmp_path / f"large.{fmt.lower()}"
    Image.fromarray(gray).save(path, fmt)
    checked = check_image(str(path), None)
    assert (checked.width, checked.height) == (side, side)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(ImageFileError, match="corrupt or truncated") as e:
        check_image(str(path), None)
    assert e.value.kind == "bad_image"
