"""Robin generation throughput: the release's way against synthvg's batched path, one run.

Builds a random-weight Robin (Robin-3B-sized by default: Qwen2.5-3B config + ConvNeXt-L at
512 px; speed does not depend on the weights), saves it in the released layout, loads it
through synthvg's loader, then times the holistic scene-graph call over the same images:

  release way   one image at a time, batch 1, fp16 vision, bf16 LM, HF generate per image
                (what the official inference script does)
  batched B     synthvg's RobinEngine: images encoded together, B prompts per generate call
                (left padding, KV cache), same dtypes

Every image gets --regions synthetic masks (ellipses) and the answer is --new-tokens long
(random weights almost never emit <|im_end|>; rows that stop early are counted as they are).
Reported: images/s, generated tokens/s, peak GPU memory, speed-up over the release's way, and
how many batched answers equal the batch-1 answer token for token (greedy decoding; bf16
padding changes summation order, so a few may differ after some tokens).

On the GPU machine: torch, transformers, timm, safetensors, tokenizers, pydantic, pyarrow,
pillow are needed (bring wheels if missing). Run: PYTHONPATH=src python benchmarks/bench_robin.py
--smoke runs a tiny Robin on the CPU in seconds: it checks the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synthvg.models.robin.inference import RobinCall, RobinEngine, RobinImage, Sampling
from synthvg.models.robin.prompt import HOLISTIC_QUESTION, first_message
from synthvg.models.robin.testing import make_checkpoint, robin_3b_config, tiny_config

REPO = Path(__file__).resolve().parents[1]
GREEDY = Sampling(temperature=0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sample_images(n: int, regions: int, seed: int = 0) -> list[RobinImage]:
    """The bundled COCO sample, cycled, each with ``regions`` random ellipse masks."""
    files = sorted((REPO / "data" / "tinycoco" / "images").rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rgb = np.asarray(Image.open(files[i % len(files)]).convert("RGB"))
        h, w = rgb.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        masks, boxes = [], []
        for _ in range(regions):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(h / 20, h / 3), rng.uniform(w / 20, w / 3)
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            ys, xs = np.nonzero(m)
            masks.append(m)
            boxes.append(
                (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
            )
        out.append(RobinImage(rgb, masks, boxes))
    return out


def holistic_call(image: RobinImage, index: int, new_tokens: int) -> RobinCall:
    h, w = image.rgb.shape[:2]
    return RobinCall(
        index,
        list(range(len(image.masks))),
        [(first_message(image.boxes, w, h, HOLISTIC_QUESTION), None)],
        new_tokens,
    )


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return result, time.perf_counter() - t0, peak


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, help="images for the batched runs (64; smoke 6)")
    ap.add_argument(
        "--release-images", type=int, help="images for the (slow) release way (16; smoke 3)"
    )
    ap.add_argument("--regions", type=int, help="regions per image (10; smoke 3)")
    ap.add_argument("--new-tokens", type=int, help="tokens per answer (256; smoke 8)")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes (8 32 64; smoke 2 6)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU: checks the script only"
    )
    args = ap.parse_args()
    defaults = (6, 3, 3, 8, [2, 6]) if args.smoke else (64, 16, 10, 256, [8, 32, 64])
    for key, value in zip(
        ("images", "release_images", "regions", "new_tokens", "batch"), defaults, strict=True
    ):
        if getattr(args, key) is None:
            setattr(args, key, value)

    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    lm_dtype, vision_dtype = (
        (torch.bfloat16, torch.float16) if cuda else (torch.float32, torch.float32)
    )

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        config = tiny_config(1000) if args.smoke else robin_3b_config()
        with torch.device(device):  # random init on the GPU: minutes faster than on the CPU for 3B
            make_checkpoint(tmp, config, dtype=lm_dtype)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine = RobinEngine(
            tmp, device=device, lm_dtype=lm_dtype, vision_dtype=vision_dtype, batch_size=1
        )
        loaded = time.perf_counter() - t0
    params = sum(p.numel() for p in engine.model.parameters())
    images = sample_images(args.images, args.regions)
    calls = [holistic_call(img, i, args.new_tokens) for i, img in enumerate(images)]
    engine.generate(images[:2], calls[:2], GREEDY)  # warm-up: kernels, allocator

    rows = []
    release, secs, peak = timed(
        lambda: [
            engine.generate(
                [images[i]], [RobinCall(0, c.regions, c.turns, c.max_new_tokens)], GREEDY
            )[0]
            for i, c in enumerate(calls[: args.release_images])
        ]
    )
    rows.append(
        (
            "release way (batch 1)",
            args.release_images,
            secs,
            sum(g.new_tokens for g in release),
            peak,
            None,
        )
    )
    for b in args.batch:
        engine.batcher.batch_size = b
        out, secs, peak = timed(lambda: engine.generate(images, calls, GREEDY))
        same = sum(a.token_ids == r.token_ids for a, r in zip(out, release, strict=False))
        rows.append(
            (
                f"batched {b}",
                args.images,
                secs,
                sum(g.new_tokens for g in out),
                peak,
                f"{same}/{len(release)}",
            )
        )
        assert engine.batcher.batch_size == b, (
            f"batch {b} ran out of memory (halved to {engine.batcher.batch_size})"
        )

    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"# Robin holistic generation, {dt.date.today()}, {name}, torch {torch.__version__}")
    print(
        f"# model: {'tiny (smoke)' if args.smoke else 'Robin-3B-sized'} random weights, {params / 1e9:.2f}B parameters; "
        f"built + saved in {built:.0f} s, loaded through load_robin in {loaded:.0f} s; LM {lm_dtype}, vision {vision_dtype}"
    )
    print(
        f"# {args.regions} regions per image, prompt {release[0].prompt_tokens} tokens, {args.new_tokens} new tokens per answer\n"
    )
    print(
        "| path | images | s | images/s | new tokens/s | peak GiB | x release | same tokens as batch 1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0][1] / rows[0][2]
    for label, n, secs, tokens, peak, same in rows:
        print(
            f"| {label} | {n} | {secs:.1f} | {n / secs:.2f} | {tokens / secs:.0f} | {peak:.1f} | {n / secs / base:.1f} | {same or '-'} |"
        )


if __name__ == "__main__":
    main()
