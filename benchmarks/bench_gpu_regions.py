"""GPU throughput of the regions and depth models, as a fraction of the card's bf16 peak.

Builds random-weight models of the real sizes (speed does not depend on the weights), saves
them, loads them through synthvg's own loaders, checks them, then times side by side:
  SAM ViT-H, official   segment-anything's SamAutomaticMaskGenerator, one image at a time
                        (synthvg's segment_anything proposer, mode: default)
  SAM ViT-H, batched    synthvg's transformers_sam proposer: a batch of images per encoder
                        call, the point grid decoded for the whole batch at once
  encoder only          the same two image encoders alone: batch 1 vs --batch
  Depth-Anything-Large  ViT-L/14 DPT at the processor's 518 px short side, --batch images
Model FLOPs per image are counted by torch.utils.flop_counter on one forward pass (2 per
multiply-add); achieved FLOP/s = FLOPs per image x images/s, shown against --peak (the H100 /
H200 bf16 dense matmul rate measured on this project's GPU machines, ~790 TFLOP/s).
Images are the bundled COCO sample (640x480-ish), cycled to --images.

On the GPU machine (no internet, no segment-anything, prefect or openai): bring wheels, e.g.
  pip download -d wheels --python-version 3.12 --only-binary=:all: segment-anything \\
      pycocotools pydantic pyarrow pyyaml openai opencv-python-headless scipy fsspec
  pip install --no-index --find-links wheels segment-anything pycocotools pydantic pyarrow \\
      pyyaml openai opencv-python-headless scipy fsspec
  PYTHONPATH=src python benchmarks/bench_gpu_regions.py
--smoke runs tiny models on the CPU in a minute: it checks the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]

from synthvg.models.depth_anything import DepthAnything  # noqa: E402
from synthvg.models.proposers import ImageItem  # noqa: E402
from synthvg.models.sam_package import SegmentAnythingProposer, build_custom  # noqa: E402
from synthvg.models.sam_transformers import TransformersSamProposer  # noqa: E402
from synthvg.schemas.config import (  # noqa: E402
    AMGParams,
    DepthAnythingConfig,
    SamEncoderSpec,
    SegmentAnythingConfig,
    TransformersSamConfig,
)

# ViT-H as in segment-anything's registry and facebook/sam-vit-huge; DPT-Large on DINOv2 ViT-L/14.
VIT_H = {
    "embed_dim": 1280,
    "depth": 32,
    "num_heads": 16,
    "global_attn_indexes": [7, 15, 23, 31],
    "img_size": 1024,
}
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "global_attn_indexes": [1], "img_size": 256}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls (seconds), after the device has finished."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return float(counter.get_total_flops())


def coco_images(n: int) -> list[np.ndarray]:
    files = sorted((REPO / "data" / "tinycoco" / "images").rglob("*.jpg"))
    return [np.asarray(Image.open(files[i % len(files)]).convert("RGB")) for i in range(n)]


def save_models(root: Path, smoke: bool) -> dict[str, str]:
    """Random-weight SAM (both formats) and Depth-Anything, saved where the loaders read them."""
    from transformers import (
        DepthAnythingConfig as HFDepthConfig,
    )
    from transformers import (
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
        SamConfig,
        SamImageProcessor,
        SamModel,
        SamVisionConfig,
    )

    enc = TINY if smoke else VIT_H
    torch.manual_seed(0)
    torch.save(build_custom(SamEncoderSpec(**enc)).state_dict(), root / "sam.pth")
    vision = SamVisionConfig(
        hidden_size=enc["embed_dim"],
        num_hidden_layers=enc["depth"],
        num_attention_heads=enc["num_heads"],
        global_attn_indexes=enc["global_attn_indexes"],
        image_size=enc["img_size"],
        mlp_dim=4 * enc["embed_dim"],
    )
    prompt = {"image_size": enc["img_size"]}
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt)).save_pretrained(
        root / "sam-hf"
    )
    side = enc["img_size"]
    SamImageProcessor(
        size={"longest_edge": side}, pad_size={"height": side, "width": side}
    ).save_pretrained(root / "sam-hf")
    if smoke:
        backbone = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=64,
            out_indices=[1, 2, 3, 4],
            reshape_hidden_states=False,
        )
        depth = HFDepthConfig(
            backbone_config=backbone,
            reassemble_hidden_size=32,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
        )
    else:
        backbone = Dinov2Config(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=518,
            out_indices=[5, 12, 18, 24],
            reshape_hidden_states=False,
        )
        depth = HFDepthConfig(
            backbone_config=backbone,
            reassemble_hidden_size=1024,
            neck_hidden_sizes=[256, 512, 1024, 1024],
            fusion_hidden_size=256,
        )
    DepthAnythingForDepthEstimation(depth).save_pretrained(root / "depth")
    DPTImageProcessor(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,
        do_pad=False,
    ).save_pretrained(root / "depth")
    return {
        "sam.pth": str(root / "sam.pth"),
        "sam-hf": str(root / "sam-hf"),
        "depth": str(root / "depth"),
    }


def check(condition: bool, what: str) -> None:
    print(f"  check: {what}: {'ok' if condition else 'FAILED'}")
    if not condition:
        raise SystemExit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16, help="images per batch for the batched paths")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument(
        "--points-per-batch",
        type=int,
        default=256,
        help="batched path (the official default is 64)",
    )
    ap.add_argument("--peak", type=float, default=790e12, help="bf16 FLOP/s the fractions refer to")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny models on the CPU: checks the script only"
    )
    args = ap.parse_args()
    if args.smoke:
        args.images, args.batch, args.points_per_side = min(args.images, 4), min(args.batch, 2), 4
    elif not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --smoke to check the script on a CPU")
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    print(
        f"{dt.date.today()}  {name}  torch {torch.__version__}  dtype {dtype}  images {args.images}  batch {args.batch}"
    )
    images = coco_images(args.images)
    paths = save_models(Path(tempfile.mkdtemp(prefix="synthvg-gpu-bench-")), args.smoke)
    rows = bench_sam(args, paths, images, device, dtype)
    if device == "cuda":
        torch.cuda.empty_cache()
    rows += bench_depth(args, paths, images, device, dtype)
    print()
    print(f"| path | images/s | TFLOP/s | of {args.peak / 1e12:.0f} TFLOP/s peak |")
    print("|---|---:|---:|---:|")
    for label, ips, per_image in rows:
        print(
            f"| {label} | {ips:.2f} | {per_image * ips / 1e12:.1f} | {per_image * ips / args.peak:.1%} |"
        )
    return 0


Row = tuple[str, float, float]  # label, images/s, FLOPs per image


def bench_sam(
    args, paths: dict[str, str], images: list[np.ndarray], device: str, dtype: str
) -> list[Row]:
    """The official per-image generator against the batched one: checks, FLOPs, timings."""
    items = [ImageItem(str(i), "-", im.shape[1], im.shape[0], im) for i, im in enumerate(images)]
    grid = {"points_per_side": args.points_per_side}
    official = SegmentAnythingProposer(
        SegmentAnythingConfig(
            checkpoint=paths["sam.pth"],
            model_type="custom",
            encoder=TINY if args.smoke else VIT_H,
            mode="default",
            default=AMGParams(**grid),
            device=device,
            dtype=dtype,
        )
    )
    batched = TransformersSamProposer(
        TransformersSamConfig(
            path=paths["sam-hf"],
            mode="default",
            default=AMGParams(**grid, points_per_batch=args.points_per_batch),
            batch_size=args.batch,
            device=device,
            dtype=dtype,
        )
    )
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    print(
        f"  SAM image encoder parameters: official {count(official.predictor.model.image_encoder):.0f}M, "
        f"transformers {count(batched.model.vision_encoder):.0f}M"
    )

    # checks: batching changes nothing beyond bf16 noise; both paths give masks at image size
    with torch.inference_mode():
        emb, _ = batched.encode(images[:2])
        one, _ = batched.encode(images[:1])
    err = (emb[:1].float() - one.float()).abs().max().item() / max(
        one.float().abs().max().item(), 1e-9
    )
    check(
        err < (2e-2 if dtype == "bfloat16" else 1e-4),
        f"batched encoder == single (max rel. diff {err:.1e})",
    )
    props = batched.propose_batch(items[:2]) + official.propose_batch(items[:2])
    check(
        all(
            p.mask.size == [im.shape[0], im.shape[1]]
            for ps, im in zip(props, images[:2] * 2, strict=True)
            for p in ps
        ),
        "every proposal mask has its image's size",
    )

    # FLOPs per image: encoder at its input size, decoder over the whole point grid
    pixels = batched.processor(images=images[:1], return_tensors="pt")["pixel_values"].to(
        batched.device, batched.dtype
    )
    enc_flops = flops(lambda: batched.model.get_image_embeddings(pixels))
    with torch.inference_mode():
        emb1 = batched.model.get_image_embeddings(pixels)
    n_points = args.points_per_side**2
    dec_flops = flops(lambda: batched.decode(emb1, torch.rand(1, n_points, 2) * 512))
    official.predictor.forget()
    official_enc = flops(lambda: official.predictor.set_image(images[0]))
    print(
        f"  FLOPs per image: encoder {enc_flops / 1e9:.1f} G (official {official_enc / 1e9:.1f} G), "
        f"decoder {n_points} points {dec_flops / 1e9:.1f} G"
    )

    def official_encode():
        for im in images:
            official.predictor.forget()
            official.predictor.set_image(im)

    def batched_encode():
        for s in range(0, len(images), args.batch):
            batched.encode(images[s : s + args.batch])

    def batched_amg():
        for s in range(0, len(items), args.batch):
            batched.propose_batch(items[s : s + args.batch])

    rows = []
    with torch.inference_mode():
        official_encode()  # warm-up (cuDNN autotuning, allocator)
        rows.append(
            (
                "SAM ViT-H encoder, batch 1 (official)",
                len(images) / timed(official_encode),
                enc_flops,
            )
        )
        batched_encode()
        rows.append(
            (
                f"SAM ViT-H encoder, batch {args.batch}",
                len(images) / timed(batched_encode),
                enc_flops,
            )
        )
    official.predictor.forget()
    official.propose_batch(items[:1])
    seconds = timed(lambda: official.propose_batch(items))
    rows.append(
        (
            f"SAM AMG official, {n_points} points, per image",
            len(items) / seconds,
            enc_flops + dec_flops,
        )
    )
    batched.propose_batch(items[: args.batch])
    rows.append(
        (
            f"SAM AMG batched, {n_points} points, batch {args.batch}",
            len(items) / timed(batched_amg),
            enc_flops + dec_flops,
        )
    )
    return rows


def bench_depth(
    args, paths: dict[str, str], images: list[np.ndarray], device: str, dtype: str
) -> list[Row]:
    depth = DepthAnything(
        DepthAnythingConfig(
            backend="depth-anything",
            path=paths["depth"],
            batch_size=args.batch,
            device=device,
            dtype=dtype,
        )
    )
    sizes = [im.shape[:2] for im in images]
    maps = depth.predict(images[:2], sizes[:2])
    check(
        all(
            m.shape == s and 0.0 <= m.min() <= m.max() <= 1.0
            for m, s in zip(maps, sizes[:2], strict=True)
        ),
        "depth maps in [0, 1] at image size",
    )
    pixels = depth.processor(images=images[0], return_tensors="pt")["pixel_values"]
    depth_flops = flops(lambda: depth.raw(pixels))
    print(
        f"  FLOPs per image: Depth-Anything-Large {depth_flops / 1e9:.1f} G at {tuple(pixels.shape[-2:])}"
    )
    depth.predict(images[: args.batch], sizes[: args.batch])
    seconds = timed(lambda: depth.predict(images, sizes))
    return [
        (
            f"Depth-Anything-Large, 518 px short side, batch {args.batch}",
            len(images) / seconds,
            depth_flops,
        )
    ]


if __name__ == "__main__":
    sys.exit(main())
