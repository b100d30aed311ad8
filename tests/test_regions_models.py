"""The model backends with tiny random models saved to disk and loaded the way real
checkpoints are: shapes, dtypes, batching equivalence, errors, and builds end to end.

Random weights give meaningless masks and depth: these tests check structure and plumbing,
never quality. Few grid points and small inputs keep them fast on two CPU cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
segment_anything = pytest.importorskip("segment_anything")

from helpers import TINYCOCO, demo_config, save_tiny_sam  # noqa: E402
from PIL import Image  # noqa: E402

from synthvg.models.depth_anything import DepthAnything  # noqa: E402
from synthvg.models.errors import ModelLoadError  # noqa: E402
from synthvg.models.proposers import ImageItem  # noqa: E402
from synthvg.models.runtime import AdaptiveBatcher  # noqa: E402
from synthvg.models.sam_package import SegmentAnythingProposer, build_custom  # noqa: E402
from synthvg.models.sam_transformers import TransformersSamProposer  # noqa: E402
from synthvg.pipeline import run_build  # noqa: E402
from synthvg.schemas.config import (  # noqa: E402
    DepthAnythingConfig,
    SamEncoderSpec,
    SegmentAnythingConfig,
    TransformersSamConfig,
)
from synthvg.stages.regions import RegionsStage  # noqa: E402
from synthvg.storage import connect  # noqa: E402

FEW = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
TINY_ENCODER = {
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "global_attn_indexes": [1],
    "img_size": 128,
}


def _rgb(seed: int, h: int = 120, w: int = 160) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


# ------------------------------------------------------------------ tiny models on disk


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny SAM (transformers), SAM 2, segment-anything SAM and Depth-Anything v1/v2, saved."""
    from transformers import (
        DepthAnythingConfig as HFDepthConfig,
    )
    from transformers import (
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    save_tiny_sam(root / "sam")
    decoder = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_dim": 64,
        "iou_head_hidden_dim": 32,
    }
    prompt = {"hidden_size": 32, "image_size": 256, "patch_size": 16, "mask_input_channels": 4}
    hiera = Sam2HieraDetConfig(
        hidden_size=16,
        num_attention_heads=1,
        image_size=[256, 256],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[8, 4, 4, 2],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    sam2 = Sam2Config(
        vision_config=Sam2VisionConfig(
            backbone_config=hiera,
            backbone_channel_list=[128, 64, 32, 16],
            backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=Sam2PromptEncoderConfig(**prompt),
        mask_decoder_config=Sam2MaskDecoderConfig(**decoder),
    )
    Sam2Model(sam2).save_pretrained(root / "sam2")
    Sam2ImageProcessor(size={"height": 256, "width": 256}).save_pretrained(root / "sam2")
    torch.save(build_custom(SamEncoderSpec(**TINY_ENCODER)).state_dict(), root / "sam_tiny.pth")
    for name, layers, out in (
        ("da1", 4, [1, 2, 3, 4]),
        ("da2", 8, [2, 4, 6, 8]),
    ):  # v1: last four, v2: spread out
        backbone = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=70,
            patch_size=14,
            out_indices=out,
            reshape_hidden_states=False,
        )
        cfg = HFDepthConfig(
            backbone_config=backbone,
            reassemble_hidden_size=32,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
            patch_size=14,
        )
        DepthAnythingForDepthEstimation(cfg).save_pretrained(root / name)
        DPTImageProcessor(
            size={"height": 70, "width": 70},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            resample=3,
            do_pad=False,
        ).save_pretrained(root / name)
    return {k: str(root / k) for k in ("sam", "sam2", "sam_tiny.pth", "da1", "da2")}


def _sam_package(models, **extra) -> SegmentAnythingConfig:
    return SegmentAnythingConfig(
        **{
            "checkpoint": models["sam_tiny.pth"],
            "model_type": "custom",
            "encoder": TINY_ENCODER,
            "whole": FEW,
            "part": FEW,
            **extra,
        }
    )


# ------------------------------------------------------------------ transformers SAM / SAM 2


@pytest.mark.parametrize("kind", ["sam", "sam2"])
def test_transformers_sam_batch_of_n_equals_n_singles(models, kind):
    p = TransformersSamProposer(TransformersSamConfig(path=models[kind], whole=FEW, part=FEW))
    rgbs = [_rgb(0), _rgb(1, 90, 200), _rgb(2, 200, 90)]
    with torch.inference_mode():
        emb, frames = p.encode(rgbs)
        first = emb if kind == "sam" else emb[-1]
        assert first.shape[0] == 3 and first.dtype == torch.float32
        singles = [p.encode([r]) for r in rgbs]
        for b, (e1, f1) in enumerate(singles):
            e1 = e1 if kind == "sam" else e1[-1]
            torch.testing.assert_close(first[b : b + 1], e1, atol=1e-4, rtol=1e-4)
            assert frames[b] == f1[0]
        points = torch.rand(3, 5, 2) * 200
        logits, iou = p.decode(emb, points)
        assert (
            logits.shape == (3, 5, 3, 64, 64)
            and iou.shape == (3, 5, 3)
            and logits.dtype == torch.float32
        )
        for b, (e1, _) in enumerate(singles):
            l1, i1 = p.decode(e1, points[b : b + 1])
            torch.testing.assert_close(logits[b : b + 1], l1, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou[b : b + 1], i1, atol=1e-4, rtol=1e-4)
    items = [ImageItem(str(i), "x", r.shape[1], r.shape[0], r) for i, r in enumerate(rgbs)]
    for props, rgb in zip(p.propose_batch(items), rgbs, strict=True):
        assert props and all(
            q.mask.size == list(rgb.shape[:2]) and isinstance(q.score, float) for q in props
        )
        assert [q.area for q in props] == sorted((q.area for q in props), reverse=True)
    assert p.name == f"transformers-{kind}/{kind}/whole+part"


def test_transformers_sam_runs_in_bfloat16_and_maps_huge_images_back(models):
    p = TransformersSamProposer(
        TransformersSamConfig(
            path=models["sam"], mode="part", part=FEW, dtype="bfloat16", max_side=64
        )
    )
    assert p.model.dtype == torch.bfloat16
    with torch.inference_mode():
        emb, _ = p.encode([_rgb(0)])
    assert emb.dtype == torch.bfloat16
    (props,) = p.propose_batch([ImageItem("x", "x", 300, 150, _rgb(3, 150, 300))])
    assert props and all(q.mask.size == [150, 300] for q in props)  # worked at 32x64, mapped back


# ------------------------------------------------------------------ the segment-anything package


def test_segment_anything_encodes_once_for_whole_and_part_and_keeps_one_output(models, monkeypatch):
    p = SegmentAnythingProposer(_sam_package(models))
    calls = []
    p.predictor.model.image_encoder.register_forward_hook(lambda *_: calls.append(1))
    outputs = []
    original = segment_anything.SamPredictor.predict_torch

    def spy(self, *a, **kw):
        out = original(self, *a, **kw)
        outputs.append(out[0].shape[1])
        return out

    monkeypatch.setattr(segment_anything.SamPredictor, "predict_torch", spy)
    (props,) = p.propose_batch([ImageItem("x", "x", 160, 120, _rgb(0))])
    assert len(calls) == 1  # whole and part share the embedding
    assert outputs == [3, 3] and props  # SAM gives three masks per point ...
    assert all(q.mask.size == [120, 160] for q in props)
    p.predictor.output = 2
    with torch.inference_mode():
        p.predictor.set_image(_rgb(0))
        masks_, iou, _ = p.predictor.predict_torch(
            torch.tensor([[[10.0, 10.0]]]), torch.ones(1, 1), multimask_output=True
        )
    assert masks_.shape[1] == 1 and iou.shape == (1, 1)  # ... the preset keeps one of them


def test_wrong_checkpoints_fail_at_construction_naming_key_and_path(models, tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(
        ModelLoadError, match=f"regions.segment_anything.checkpoint: file not found: {missing}"
    ):
        SegmentAnythingProposer(SegmentAnythingConfig(checkpoint=missing))
    with pytest.raises(ModelLoadError, match="does not match model_type 'vit_b'.*width is 32"):
        SegmentAnythingProposer(
            SegmentAnythingConfig(checkpoint=models["sam_tiny.pth"], model_type="vit_b")
        )
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="cannot read"):
        SegmentAnythingProposer(SegmentAnythingConfig(checkpoint=str(tmp_path / "junk.pth")))
    with pytest.raises(ModelLoadError, match="holds a 'depth_anything' model, not SAM"):
        TransformersSamProposer(TransformersSamConfig(path=models["da1"]))
    with pytest.raises(ModelLoadError, match="depth.path: .* holds a 'sam' model"):
        DepthAnything(DepthAnythingConfig(backend="depth-anything", path=models["sam"]))
    cfg = demo_config(
        tmp_path / "root",
        limit=2,
        shard_size=2,
        regions={
            "proposer": "transformers_sam",
            "transformers_sam": {"path": str(tmp_path / "none")},
        },
    )
    with pytest.raises(
        ModelLoadError,
        match=f"regions.transformers_sam.path: model directory not found: {tmp_path / 'none'}",
    ):
        RegionsStage(cfg)
    run = run_build(cfg)
    assert run.status == "failed"
    assert "model directory not found" in next(s.reason for s in run.stages if s.stage == "regions")


# ------------------------------------------------------------------ Depth-Anything v1 / v2


@pytest.mark.parametrize("kind", ["da1", "da2"])
def test_depth_anything_batch_of_n_equals_n_singles(models, kind):
    model = DepthAnything(
        DepthAnythingConfig(backend="depth-anything", path=models[kind], batch_size=4)
    )
    rgbs = [_rgb(0), _rgb(1), _rgb(2, 200, 90)]  # two shapes: two groups
    sizes = [(120, 160), (60, 80), (200, 90)]
    maps = model.predict(rgbs, sizes)
    for m, size, rgb in zip(maps, sizes, rgbs, strict=True):
        assert m.shape == size and m.dtype == np.float32 and m.min() == 0.0 and m.max() == 1.0
        np.testing.assert_allclose(m, model.predict([rgb], [size])[0], atol=1e-4)
    assert model.name == f"depth-anything/{kind}"


def test_out_of_memory_halves_the_batch_and_retries():
    seen = []

    def fn(chunk):
        seen.append(len(chunk))
        if len(chunk) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [x * 2 for x in chunk]

    batcher = AdaptiveBatcher(8)
    assert batcher.run(fn, list(range(7))) == [x * 2 for x in range(7)]
    assert seen == [7, 4, 2, 2, 2, 1] and batcher.batch_size == 2
    with pytest.raises(torch.cuda.OutOfMemoryError):
        AdaptiveBatcher(1).run(
            lambda c: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")), [1]
        )


# ------------------------------------------------------------------ builds end to end


def test_build_with_transformers_sam_and_depth_anything(models, tmp_path):
    cfg = demo_config(
        tmp_path / "root",
        limit=2,
        shard_size=2,
        regions={
            "proposer": "transformers_sam",
            "transformers_sam": {"path": models["sam"], "whole": FEW, "part": FEW},
        },
        depth={"backend": "depth-anything", "path": models["da2"], "save_maps": True},
    )
    run = run_build(cfg)
    assert run.status == "completed", [s.reason for s in run.stages]
    con = connect(cfg.out)
    assert con.sql("SELECT DISTINCT proposer FROM proposals").fetchall() == [
        ("transformers-sam/sam/whole+part",)
    ]
    n, checked, with_depth, lo, hi = con.sql(
        "SELECT count(*), count(best_iou), count(depth_median), min(depth_median), max(depth_median) FROM regions"
    ).fetchall()[0]
    assert n > 0 and checked == n and with_depth == n and 0.0 <= lo <= hi <= 1.0
    assert con.sql("SELECT DISTINCT depth_model FROM regions").fetchall() == [
        ("depth-anything/da2",)
    ]
    for image_id, uri, w, h in con.sql(
        "SELECT image_id, depth_uri, width, height FROM images"
    ).fetchall():
        png = Image.open(uri)
        assert png.size == (w, h) and png.mode in ("I;16", "I"), image_id
    assert con.sql("SELECT count(*) FROM errors").fetchall() == [(0,)]
    assert run_build(cfg).stages[1].shards_up_to_date == 1  # the model's identity is stable


def _coco_with_bad_images(tmp_path) -> dict:
    """RGB, grayscale, RGBA, one too big for max_side, one with no annotation, one to break."""
    imgs = tmp_path / "images"
    imgs.mkdir()
    src = (
        Image.open(next((TINYCOCO / "images" / "val2017").iterdir()))
        .convert("RGB")
        .resize((160, 120))
    )
    src.save(imgs / "rgb.jpg")
    src.convert("L").save(imgs / "gray.png")
    src.convert("RGBA").save(imgs / "rgba.png")
    src.resize((640, 240)).save(imgs / "huge.jpg")
    src.save(imgs / "bare.jpg")
    src.save(imgs / "late.jpg")
    files = [
        ("rgb.jpg", 160, 120),
        ("gray.png", 160, 120),
        ("rgba.png", 160, 120),
        ("huge.jpg", 640, 240),
        ("bare.jpg", 160, 120),
        ("late.jpg", 160, 120),
    ]
    images = [
        {"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(files)
    ]
    anns = [
        {
            "id": 10 + i,
            "image_id": i + 1,
            "category_id": 1,
            "iscrowd": 0,
            "area": 400,
            "bbox": [10, 10, 40, 30],
            "segmentation": [[10, 10, 50, 10, 50, 40, 10, 40]],
        }
        for i in (0, 1, 2, 3, 5)
    ]
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "instances_x.json").write_text(json.dumps(data))
    return {"annotations": str(tmp_path / "instances_x.json"), "images": str(imgs)}


def test_build_with_segment_anything_survives_bad_images(models, tmp_path):
    source = _coco_with_bad_images(tmp_path)
    common = {"shard_size": 6, "seeds": {"sources": [source]}, "teacher": {"backend": "none"}}
    seeded = demo_config(tmp_path / "root", **common, regions={"proposer": "none"})
    assert run_build(seeded).status == "completed"
    # an image that goes bad after seeding is an error of the model stages; the rest goes on
    (tmp_path / "images" / "late.jpg").write_bytes(
        (tmp_path / "images" / "rgb.jpg").read_bytes()[:300]
    )
    few = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    sam = _sam_package(models, max_side=200, whole=few, part=few).model_dump()
    cfg = demo_config(
        tmp_path / "root",
        **common,
        depth={"backend": "depth-anything", "path": models["da1"]},
        regions={
            "proposer": "segment_anything",
            "segment_anything": sam,
            "uncovered": {"mode": "unannotated"},
        },
    )
    assert run_build(cfg).status == "completed"
    con = connect(cfg.out)
    errors = con.sql("SELECT stage, image_id, kind FROM errors ORDER BY stage").fetchall()
    assert errors == [("depth", "coco:6", "bad_image"), ("regions", "coco:6", "bad_image")]
    assert {i for (i,) in con.sql("SELECT DISTINCT image_id FROM proposals").fetchall()} == {
        f"coco:{i}" for i in range(1, 6)
    }
    sizes = {
        tuple(s)
        for (s,) in con.sql(
            "SELECT DISTINCT mask.size FROM proposals WHERE image_id = 'coco:4'"
        ).fetchall()
    }
    assert sizes == {(240, 640)}  # the model saw it at 200 px wide; masks are back at full size
    proposal_regions = con.sql(
        "SELECT image_id, kept, depth_median IS NOT NULL FROM regions WHERE sources[1].dataset = 'proposal'"
    ).fetchall()
    assert (
        proposal_regions
        and {r[0] for r in proposal_regions} == {"coco:5"}
        and all(r[1] and r[2] for r in proposal_regions)
    )
    checked = con.sql(
        "SELECT count(*) FROM regions WHERE image_id <> 'coco:6' AND (best_iou IS NULL OR depth_median IS NULL)"
    )
    assert checked.fetchall() == [(0,)]
