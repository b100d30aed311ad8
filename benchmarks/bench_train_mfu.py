"""Robin training throughput and MFU on a GPU: a Robin-3B-sized random model, bf16, stage-1 settings.

Ready for a GPU machine; on the CPU it only runs as a smoke test (``--size tiny --device cpu``).

What runs: ``RobinForCausalLM`` (synthvg.models.robin.modeling: the same differentiable forward
``synthvg train`` uses) built from ``robin_3b_config`` (Qwen2.5-3B + ConvNeXt-L at 512 px,
1024 image tokens) with random weights, fp32 master weights under bf16 autocast (what the
Trainer's ``bf16: true`` does), gradient checkpointing, AdamW (fused on CUDA), every group
trained (stage 1). Batches come from RobinCollator (the trainer's collator) over synthetic
examples whose text lengths and region counts follow a mixture-like spread
(``--min-text``..``--max-text`` tokens, 1..``--max-regions`` regions with ``<mask><pos>``
each, one image each).

Two settings over the same examples, in one run, side by side:

- ``anchor``: LLaVA/Osprey-style Trainer batches: random order, pad to the longest row;
- ``synthvg``: length-grouped batches (the trainer's ``group_by_length``: megabatches of
  50 batches sorted by length), pad to the longest row. Packing is not implemented.

Reported per setting: steps/s, tokens/s per GPU (real tokens: spliced, image tokens included,
padding excluded), padding share, and MFU = (6 x LM parameters x real tokens + 3 x vision
forward FLOPs per image x images) / (seconds x peak dense bf16 FLOP/s). The vision forward
FLOPs are counted once with torch.utils.flop_counter; 6N leaves out attention's quadratic term
(at 3K tokens about 10% more on a 3B model), so MFU here is a slight under-count, as is usual.
Peak: --peak-tflops, else looked up from the device name (H100/H200 SXM 989, A100 312, L40S
362, RTX 4090 165 TFLOP/s).

Run: PYTHONPATH=src python benchmarks/bench_train_mfu.py [--batch-size 8 --steps 20]
Smoke: PYTHONPATH=src python benchmarks/bench_train_mfu.py --size tiny --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import numpy as np
import torch

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build_model(size: str, device: torch.device):
    from synthvg.models.robin.modeling import RobinForCausalLM
    from synthvg.models.robin.testing import robin_3b_config, tiny_config

    vocab = 151936 if size == "3b" else 400
    config = robin_3b_config(vocab) if size == "3b" else tiny_config(vocab)
    config.image_token_id, config.mask_token_id, config.pos_token_id = (
        vocab - 3,
        vocab - 2,
        vocab - 1,
    )
    config.pad_token_id = 0
    torch.manual_seed(0)
    with torch.device(device):
        model = RobinForCausalLM(config)
    model.config.use_cache = False
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    return model


def examples(config, n: int, args, rng: random.Random) -> list[dict]:
    """Tokenised-looking examples: <image> first, regions as <mask><pos>, labels on the second half."""
    size = config.vision_image_size
    out = []
    for i in range(n):
        text = rng.randint(args.min_text, args.max_text)
        regions = rng.randint(1, args.max_regions)
        ids = [rng.randrange(10, config.vocab_size - 3) for _ in range(text)]
        ids[0] = config.image_token_id
        for k in range(regions):
            at = 2 + 3 * k
            ids[at], ids[at + 1] = config.mask_token_id, config.pos_token_id
        labels = [-100] * (text // 2) + ids[text // 2 :]
        masks = np.zeros((regions, size, size), dtype=bool)
        for k in range(regions):
            y, x = rng.randrange(size // 2), rng.randrange(size // 2)
            masks[k, y : y + size // 4, x : x + size // 4] = True
        out.append(
            {
                "index": i,
                "input_ids": ids,
                "labels": labels,
                "length": text - 1 + config.image_tokens,
                "pixel_values": torch.randn(3, size, size),
                "region_masks": torch.from_numpy(masks),
            }
        )
    return out


def batches(items: list[dict], batch_size: int, grouped: bool, seed: int) -> list[list[dict]]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if grouped:  # transformers' LengthGroupedSampler: megabatches of 50 batches, sorted
        mega = batch_size * 50
        order = [
            i
            for m in range(0, len(order), mega)
            for i in sorted(order[m : m + mega], key=lambda i: -items[i]["length"])
        ]
    groups = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    if grouped:
        random.Random(seed + 1).shuffle(groups)
    return [[items[i] for i in g] for g in groups if len(g) == batch_size]


def vision_forward_flops(model, device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config.vision_image_size
    pixels = torch.randn(1, 3, size, size, device=device)
    with (
        torch.no_grad(),
        torch.autocast(device.type, dtype=torch.bfloat16),
        FlopCounterMode(display=False) as counter,
    ):
        model.encode_images(pixels)
    return float(counter.get_total_flops())


def run_setting(model, opt, collate, groups, device, steps: int, warmup: int) -> dict:
    def step(group) -> tuple[int, int]:
        batch = collate(group)
        n_tokens = int(batch.pop("n_tokens"))
        batch.pop("example_index", None)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if batch.get("region_masks") is not None:
            batch["region_masks"] = [
                m.to(device) if m is not None else None for m in batch["region_masks"]
            ]
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        width = max(x["length"] for x in group)
        return n_tokens, width * len(group)

    for g in groups[:warmup]:
        step(g)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    real = padded = 0
    start = time.perf_counter()
    timed = groups[warmup : warmup + steps]
    for g in timed:
        r, p = step(g)
        real, padded = real + r, padded + p
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "steps": len(timed),
        "seconds": seconds,
        "tokens": real,
        "padded_tokens": padded,
        "images": sum(len(g) for g in timed),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["3b", "tiny"], default="3b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--examples", type=int, default=0, help="default: enough for both settings")
    ap.add_argument("--min-text", type=int, default=64)
    ap.add_argument("--max-text", type=int, default=1800)
    ap.add_argument("--max-regions", type=int, default=30)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    if args.size == "tiny":
        args.max_text, args.max_regions = min(args.max_text, 200), min(args.max_regions, 8)

    from synthvg.train.trainer import RobinCollator

    device = torch.device(args.device)
    model = build_model(args.size, device)
    config = model.config
    lm_params = sum(
        p.numel()
        for n, p in model.named_parameters()
        if not n.startswith(("model.vision_tower.", "mask_extractor.", "model.mm_projector."))
    )
    all_params = sum(p.numel() for p in model.parameters())
    vision_flops = vision_forward_flops(model, device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=2e-5, fused=device.type == "cuda", foreach=device.type != "cuda"
    )
    n = args.examples or args.batch_size * (args.steps + args.warmup) * 2
    items = examples(config, n, args, random.Random(0))
    collate = RobinCollator(0, config.vision_image_size)
    peak = peak_tflops(device, args.peak_tflops)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"{name}; torch {torch.__version__}; Robin-{args.size}: {all_params / 1e9:.2f}B parameters "
        f"({lm_params / 1e9:.2f}B LM), {config.image_tokens} image tokens, vision forward "
        f"{vision_flops / 1e12:.2f} TFLOP/image; batch {args.batch_size}, {args.steps} timed steps "
        f"after {args.warmup}; bf16 autocast, gradient checkpointing, all groups trained"
        + (f"; peak {peak:.0f} TFLOP/s" if peak else "; peak unknown (no MFU)")
    )
    rows = []
    for label, grouped in (
        ("anchor (random order, pad to longest)", False),
        ("synthvg (length-grouped)", True),
    ):
        groups = batches(items, args.batch_size, grouped, seed=0)
        r = run_setting(model, opt, collate, groups, device, args.steps, args.warmup)
        flops = 6 * lm_params * r["tokens"] + 3 * vision_flops * r["images"]
        r.update(
            label=label,
            tokens_per_s=r["tokens"] / r["seconds"],
            padding=1 - r["tokens"] / max(r["padded_tokens"], 1),
            mfu=flops / r["seconds"] / (peak * 1e12) if peak else None,
        )
        rows.append(r)
    print(f"{'setting':<40}{'steps/s':>9}{'tokens/s/GPU':>14}{'padding':>9}{'MFU':>8}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(
            f"{r['label']:<40}{r['steps'] / r['seconds']:>9.3f}{r['tokens_per_s']:>14,.0f}"
            f"{100 * r['padding']:>8.1f}%{mfu:>8}"
        )
    print(
        f"ratio synthvg / anchor tokens/s: {rows[1]['tokens_per_s'] / rows[0]['tokens_per_s']:.2f}"
    )


if __name__ == "__main__":
    main()
