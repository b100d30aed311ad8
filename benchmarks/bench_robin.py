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
import statistics
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


TIMED_CPU: list[float] = []


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    TIMED_CPU.append(
        time.process_time() - c0
    )  # this process's CPU seconds (steadier on a shared CPU)
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
    ap.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: torch's; 1 for stable CPU figures)",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time the release way and every batch size this many times, interleaved; medians",
    )
    ap.add_argument("--seed", type=int, default=0, help="torch seed for the random weights")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
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

    def release_way():
        return [
            engine.generate(
                [images[i]], [RobinCall(0, c.regions, c.turns, c.max_new_tokens)], GREEDY
            )[0]
            for i, c in enumerate(calls[: args.release_images])
        ]

    def batched(b: int):
        engine.batcher.batch_size = b
        out = engine.generate(images, calls, GREEDY)
        assert engine.batcher.batch_size == b, (
            f"batch {b} ran out of memory (halved to {engine.batcher.batch_size})"
        )
        return out

    # Interleaved: each repetition times the release way, then every batch size, so a load
    # change on a shared machine hits all of them alike; each row is the median repetition.
    runs: dict[str, list[tuple[float, float]]] = {}
    release, outs = None, {}
    for _ in range(args.repeat):
        release, secs, peak = timed(release_way)
        runs.setdefault("release", []).append((secs, peak, TIMED_CPU[-1]))
        for b in args.batch:
            outs[b], secs, peak = timed(lambda b=b: batched(b))
            runs.setdefault(b, []).append((secs, peak, TIMED_CPU[-1]))

    def med(key) -> tuple[float, float, float, float]:
        secs = sorted(s for s, _, _ in runs[key])
        return statistics.median(secs), secs[0], secs[-1], max(p for _, p, _ in runs[key])

    def cpu_ratio(key, n: int) -> float:
        """Speed-up over the release way by CPU seconds per image (medians)."""
        per_image = statistics.median(c for _, _, c in runs[key]) / n
        return statistics.median(c for _, _, c in runs["release"]) / args.release_images / per_image

    rows = []
    secs, lo, hi, peak = med("release")
    tokens = sum(g.new_tokens for g in release)
    rows.append(("release way (batch 1)", args.release_images, secs, lo, hi, tokens, peak, None))
    for b in args.batch:
        out = outs[b]
        same = sum(a.token_ids == r.token_ids for a, r in zip(out, release, strict=False))
        secs, lo, hi, peak = med(b)
        rows.append(
            (
                f"batched {b}",
                args.images,
                secs,
                lo,
                hi,
                sum(g.new_tokens for g in out),
                peak,
                f"{same}/{len(release)}",
            )
        )

    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"# Robin holistic generation, {dt.date.today()}, {name}, torch {torch.__version__}")
    print(
        f"# model: {'tiny (smoke)' if args.smoke else 'Robin-3B-sized'} random weights, {params / 1e9:.2f}B parameters; "
        f"built + saved in {built:.0f} s, loaded through load_robin in {loaded:.0f} s; LM {lm_dtype}, vision {vision_dtype}"
    )
    print(
        f"# {args.regions} regions per image, prompt {release[0].prompt_tokens} tokens, {args.new_tokens} new tokens per answer; "
        f"torch threads {torch.get_num_threads()}; median of {args.repeat} interleaved repetitions (x release: of the median times, and the min-max of the repetitions' own ratios)\n"
    )
    print(
        "| path | images | s | images/s | new tokens/s | peak GiB | x release | x release by CPU s | same tokens as batch 1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0][1] / rows[0][2]
    for label, n, secs, _lo, _hi, tokens, peak, same in rows:
        key = "release" if same is None else int(label.split()[-1])
        paired = sorted(
            (n / bs) / (rows[0][1] / rs)
            for (bs, _, _), (rs, _, _) in zip(runs[key], runs["release"], strict=True)
        )
        spread = f" ({paired[0]:.1f}-{paired[-1]:.1f})" if args.repeat > 1 and same else ""
        print(
            f"| {label} | {n} | {secs:.1f} | {n / secs:.2f} | {tokens / secs:.0f} | {peak:.1f} | {n / secs / base:.1f}{spread} | {cpu_ratio(key, n):.1f} | {same or '-'} |"
        )


if __name__ == "__main__":
    main()
