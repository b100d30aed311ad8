"""LLaVA-SG: what the SGE module costs.

CPU (default, a tiny random LLaVA-SG): the SGE forward (node features from N masks, message
passing, prompt activation, W_g) against N entities from 1 to 300, and its share of a whole
training forward pass (vision, splice, LM) of the same example, median of --repeats runs.

GPU (--gpu): a LLaVA-1.5-7B-sized model with random weights (CLIP ViT-L/14-336 + Llama-2-7B
shapes, bf16), stage-2 settings (everything frozen but the SGE and W_g): training steps
(forward + backward + AdamW) per second, tokens/s and peak memory, with the SGE module (N
entities) and without it (sge_mode off), in one run. Needs one GPU with ~40 GB.

  PYTHONPATH=src python benchmarks/bench_llava_sg.py                 # CPU table
  PYTHONPATH=src python benchmarks/bench_llava_sg.py --gpu --entities 50
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from synthvg.models.llava_sg.loader import load_llava_sg
from synthvg.models.llava_sg.modeling import LlavaSGForCausalLM
from synthvg.models.llava_sg.prompt import encode, relation_question
from synthvg.models.llava_sg.testing import build_tokenizer, llava_7b_config, make_model


def _example(model, tokenizer, n: int, side: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = torch.zeros((n, side, side), dtype=torch.bool)
    for k in range(n):
        y, x = rng.integers(0, side - 40, 2)
        h, w = rng.integers(8, 40, 2)
        masks[k, y : y + h, x : x + w] = True
    ids, labels = encode(tokenizer, [(relation_question("the person", "the dog"), "next to")], True)
    size = model.config.image_size
    return dict(
        input_ids=torch.tensor([ids]),
        labels=torch.tensor([labels]),
        pixel_values=torch.randn(1, 3, size, size),
        region_masks=[masks],
    )


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cpu(args) -> None:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        make_model(d)
        model, tok = load_llava_sg(d)
    rows = []
    for n in args.n:
        batch = _example(model, tok, n, args.side)
        with torch.inference_mode():
            encoded = model.encode(batch["pixel_values"], batch["region_masks"])[0]
            prompt = model.get_input_embeddings()(batch["input_ids"][0, -20:])
            sge = _median(lambda e=encoded, p=prompt: model.graph_tokens(e, p), args.repeats)
            whole = _median(lambda b=batch: model(**b), args.repeats)
        rows.append((n, sge * 1e3, whole * 1e3, sge / whole))
    print(
        f"LLaVA-SG tiny (CLIP 64px/16, LM 32 wide), masks {args.side}x{args.side}, "
        f"{args.threads} thread(s), {dt.date.today()}, {platform.machine()}, median of {args.repeats}"
    )
    print("| N entities | SGE forward ms | whole forward ms | SGE share |")
    print("|---|---|---|---|")
    for n, s, w, share in rows:
        print(f"| {n} | {s:.2f} | {w:.2f} | {share:.0%} |")


def gpu(args) -> None:
    device = torch.device("cuda")
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer(d)
    rows = []
    for mode in ("prompt", "off"):
        config = llava_7b_config(vocab_size=32000, sge_mode=mode)
        ids = tok.convert_tokens_to_ids
        config.image_token_id, config.sg_token_id, config.text_token_id = (
            ids("<image>"),
            ids("<sg>"),
            ids("<text>"),
        )
        torch.manual_seed(0)
        with torch.device(device):
            model = LlavaSGForCausalLM(config).to(torch.bfloat16)
        for name, p in model.named_parameters():  # stage 2: SGE + W_g only
            p.requires_grad_(name.startswith(("sge.", "graph_projector.")))
        model.language_model.gradient_checkpointing_enable()
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
        batch = _example(model, tok, args.entities, 336)
        batch = {
            k: (v.to(device) if torch.is_tensor(v) else [m.to(device) for m in v])
            for k, v in batch.items()
        }
        batch["pixel_values"] = (
            batch["pixel_values"].to(torch.bfloat16).expand(args.batch, -1, -1, -1)
        )
        batch["input_ids"] = batch["input_ids"].expand(args.batch, -1)
        batch["labels"] = batch["labels"].expand(args.batch, -1)
        batch["region_masks"] = batch["region_masks"] * args.batch

        def step(b=batch, m=model, o=opt):
            loss = m(**b).loss
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)

        if mode == "off":
            batch["labels"] = batch["labels"].clone()  # SGE off: nothing trainable is used
            for p in model.projector.parameters():  # keep a step meaningful: train W_v instead
                p.requires_grad_(True)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        per = (time.perf_counter() - t) / args.steps
        tokens = args.batch * (
            batch["input_ids"].shape[1]
            - 1
            + model.config.image_tokens
            + (args.entities if mode != "off" else 0)
        )
        rows.append((mode, per, tokens / per, torch.cuda.max_memory_allocated() / 2**30))
        del model, opt
        torch.cuda.empty_cache()
    print(
        f"LLaVA-SG 7B-sized, random weights, bf16, stage 2, batch {args.batch}, {args.entities} entities, {torch.cuda.get_device_name()}, {dt.date.today()}"
    )
    print("| SGE | s/step | tokens/s | peak GiB |")
    print("|---|---|---|---|")
    for mode, per, tps, mem in rows:
        print(
            f"| {'with (prompt)' if mode == 'prompt' else 'without (off)'} | {per:.3f} | {tps:,.0f} | {mem:.1f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--n", type=int, nargs="+", default=[1, 10, 30, 100, 300])
    p.add_argument("--side", type=int, default=480, help="mask side in pixels (CPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--entities", type=int, default=50, help="GPU: entities per example")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    gpu(args) if args.gpu else cpu(args)


if __name__ == "__main__":
    main()
