"""Training Robin with transformers' ``Trainer``: the model's own forward, per-group learning
rates and freezing from the config, length-grouped batches, Trainer checkpoints to resume from,
and the final model exported in the released layout with a manifest.

Distributed runs go through transformers' launchers (``torchrun``/``accelerate launch`` run
``python -m synthvg.train.trainer CONFIG``); nothing here is hand-written distributed code.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers.trainer_pt_utils import LengthGroupedSampler

from synthvg import __version__
from synthvg import masks as mask_ops
from synthvg.models.errors import ModelLoadError
from synthvg.models.robin.loader import load_robin
from synthvg.models.robin.prompt import preprocess_image
from synthvg.schemas.config import ConfigError
from synthvg.train.config import GROUP_PREFIXES, TrainConfig
from synthvg.train.data import Example, LlavaSGTokeniser, Tokeniser, build_mixture

log = logging.getLogger("synthvg")
MANIFEST = "training.json"
MIXTURE = "mixture.json"
LOSS_PNG = "loss.png"
EXAMPLES_LOG = "examples.jsonl"


class RobinDataset(Dataset):
    """Tokenised examples; images and masks are read when a batch needs them."""

    def __init__(self, examples: list[Example], image_size: int):
        self.examples, self.image_size = examples, image_size

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        from synthvg.image_files import to_rgb
        from synthvg.stages.seeds import read_image

        ex = self.examples[i]
        item = {
            "index": i,
            "input_ids": ex.input_ids,
            "labels": ex.labels,
            "length": ex.length,
            "pixel_values": None,
            "region_masks": None,
        }
        if ex.image is not None:
            _, img = read_image(ex.image.uri)  # checked when the mixture was built
            item["pixel_values"] = preprocess_image(to_rgb(img), self.image_size).pixels
            if ex.masks:
                item["region_masks"] = torch.from_numpy(
                    np.stack([mask_ops.decode(m).astype(bool) for m in ex.masks])
                )
        return item


@dataclass
class RobinCollator:
    """Right padding; rows without an image get zero pixels and ``has_image`` False."""

    pad_id: int
    image_size: int

    def __call__(self, items: list[dict]) -> dict:
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), -100, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for j, x in enumerate(items):
            n = len(x["input_ids"])
            ids[j, :n], labels[j, :n], attention[j, :n] = (
                torch.tensor(x["input_ids"]),
                torch.tensor(x["labels"]),
                1,
            )
        batch: dict[str, Any] = {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": attention,
            "n_tokens": torch.tensor(sum(x["length"] for x in items)),
            "example_index": torch.tensor([x["index"] for x in items]),
        }
        has_image = [x["pixel_values"] is not None for x in items]
        if any(has_image):
            blank = torch.zeros(3, self.image_size, self.image_size)
            batch["pixel_values"] = torch.stack(
                [x["pixel_values"] if x["pixel_values"] is not None else blank for x in items]
            )
            batch["has_image"] = torch.tensor(has_image)
            batch["region_masks"] = [x["region_masks"] for x in items]
        return batch


def parameter_groups(model, lrs: dict[str, float | None], weight_decay: float) -> list[dict]:
    """Optimizer groups per module group (vision / projector / mask_extractor / lm), each at its
    learning rate; a group whose rate is None is frozen (requires_grad False), as is the
    vision trunk's unused head."""
    by_group: dict[tuple[str, bool], list] = {}
    prefixes_of = getattr(model, "PARAMETER_GROUPS", GROUP_PREFIXES)  # the model's own groups
    for name, p in model.named_parameters():
        group = next((g for g, prefixes in prefixes_of.items() if name.startswith(prefixes)), "lm")
        lr = lrs[group]
        # the ConvNeXt's own head is never run: frozen, or DDP would wait for its gradients
        p.requires_grad_(lr is not None and lr > 0 and ".trunk.head." not in name)
        if p.requires_grad:
            decay = p.ndim >= 2 and "norm" not in name
            by_group.setdefault((group, decay), []).append(p)
    return [
        {
            "params": params,
            "lr": lrs[group],
            "weight_decay": weight_decay if decay else 0.0,
            "name": f"{group}{'' if decay else '/no_decay'}",
        }
        for (group, decay), params in sorted(by_group.items())
    ]


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from (seed, epoch) alone, so a resumed run replays the
    epoch's order and the Trainer's batch skipping lands on the examples not yet seen."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed))
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + int(epoch))


def _trainer_class():
    from transformers import Trainer

    class RobinTrainer(Trainer):
        """Trainer with Robin's optimizer groups, length-grouped sampling and a token count."""

        def __init__(self, *a, lrs: dict, lengths: list[int], group_by_length: bool, **kw):
            super().__init__(*a, **kw)
            self.lrs, self.lengths, self.group_by_length = lrs, lengths, group_by_length
            self.tokens_seen = 0

        def create_optimizer(self, model=None):
            if self.optimizer is None:
                groups = parameter_groups(model or self.model, self.lrs, self.args.weight_decay)
                self.optimizer = torch.optim.AdamW(
                    groups,
                    lr=self.args.learning_rate,
                    betas=(self.args.adam_beta1, self.args.adam_beta2),
                    eps=self.args.adam_epsilon,
                )
            return self.optimizer

        def _get_train_sampler(self, train_dataset=None):
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return EpochLengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                self.lengths,
                self.args.seed,
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.tokens_seen += int(inputs.pop("n_tokens"))
            seen = inputs.pop("example_index").tolist()
            if self.is_world_process_zero():  # which examples each step trained on (resume audits)
                with open(os.path.join(self.args.output_dir, EXAMPLES_LOG), "a") as f:
                    f.write(
                        json.dumps({"step": self.state.global_step + 1, "examples": seen}) + "\n"
                    )
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    return RobinTrainer


def _progress_callback(emit: Callable[[str], None], counter):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One line per logging step: step, loss, tokens/s, ETA."""

        def on_train_begin(self, args, state, control, **kw):
            self.start, self.start_step, self.start_tokens = (
                time.monotonic(),
                state.global_step,
                counter(),
            )

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            elapsed = max(time.monotonic() - self.start, 1e-9)
            done = max(state.global_step - self.start_step, 1)
            eta = elapsed / done * max(state.max_steps - state.global_step, 0)
            emit(
                f"step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"tokens/s {(counter() - self.start_tokens) / elapsed:,.0f}  eta {dt.timedelta(seconds=round(eta))}"
            )

    return Progress()


@dataclass
class TrainResult:
    export_dir: str
    steps: int
    final_loss: float | None
    tokens_per_s: float
    examples_per_s: float
    mixture: dict
    resumed_from: str | None


def last_checkpoint(output_dir: str, emit: Callable[[str], None] = print) -> str | None:
    """The newest complete Trainer checkpoint: its trainer_state.json (written last) reads and
    names its step. One a kill interrupted while saving is passed over, and said so."""
    import re

    if not os.path.isdir(output_dir):
        return None
    found = sorted(
        (
            (int(m.group(1)), name)
            for name in os.listdir(output_dir)
            if (m := re.fullmatch(r"checkpoint-(\d+)", name))
        ),
        reverse=True,
    )
    for step, name in found:
        path = os.path.join(output_dir, name)
        try:
            with open(os.path.join(path, "trainer_state.json")) as f:
                if json.load(f).get("global_step") == step:
                    return path
        except (OSError, ValueError):
            pass
        emit(f"{name} is incomplete (interrupted while saving): not resumed from")
    return None


def load_model(cfg: TrainConfig):
    """(model, tokenizer, tokeniser) of the config's model kind, from its checkpoint."""
    if cfg.model.kind == "llava_sg":
        from synthvg.models.llava_sg.loader import load_llava_sg

        model, tokenizer = load_llava_sg(cfg.model.checkpoint, key="model.checkpoint")
        if cfg.model.sge_mode is not None:
            model.config.sge_mode = cfg.model.sge_mode
        max_length = cfg.data.max_length or model.config.tokenizer_model_max_length
        tok = LlavaSGTokeniser(
            tokenizer, model.config.image_tokens, max_length, model.config.sge_mode != "off"
        )
        return model, tokenizer, tok
    robin, tokenizer, _ = load_robin(cfg.model.checkpoint)
    max_length = cfg.data.max_length or robin.config.tokenizer_model_max_length
    return robin, tokenizer, Tokeniser(tokenizer, robin.config.image_tokens, max_length)


def prepare(cfg: TrainConfig):
    """Load the model and build the mixture; every bad input is a ConfigError here, before training."""
    try:
        model, tokenizer, tok = load_model(cfg)
    except ModelLoadError as e:
        raise ConfigError(str(e)) from None
    mixture = build_mixture(cfg.data, tok)
    if not mixture.examples:
        raise ConfigError(f"the data mixture is empty: {json.dumps(mixture.summary()['sources'])}")
    return model, tokenizer, mixture


def _warmup(ratio: float) -> dict:
    """transformers 5 takes a warm-up ratio as a float warmup_steps; 4.x has warmup_ratio."""
    from transformers import TrainingArguments

    return (
        {"warmup_ratio": ratio}
        if "warmup_ratio" in TrainingArguments.__dataclass_fields__
        else {"warmup_steps": ratio}
    )


def _checkpointing(on: bool) -> dict:
    """transformers 5 calls gradient checkpointing activation_checkpointing; 4.x does not."""
    from transformers import TrainingArguments

    if not on:
        return {}
    fields = TrainingArguments.__dataclass_fields__
    return (
        {"activation_checkpointing": True}
        if "activation_checkpointing" in fields
        else {"gradient_checkpointing": True}
    )


def train(cfg: TrainConfig, *, emit: Callable[[str], None] = print) -> TrainResult:
    """Train (resuming from the newest Trainer checkpoint in ``output_dir``), export, write the manifest."""
    from transformers import TrainingArguments

    model, tokenizer, mixture = prepare(cfg)
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    summary = mixture.summary()
    with open(os.path.join(cfg.train.output_dir, MIXTURE), "w") as f:
        json.dump(summary, f, indent=1)
    emit(
        f"mixture: {summary['examples']} examples, {summary['tokens']:,} tokens from {len(summary['sources'])} source(s)"
    )
    for name, c in summary["sources"].items():
        emit(
            f"  {name} ({c['task']}): {c['rows']} rows, {c['images']} images -> {c['taken']} examples"
            + (f", dropped {c['dropped']}" if c["dropped"] else "")
            + (f", {c['splits']} split" if c["splits"] else "")
        )
    if cfg.model.kind == "llava_sg":  # the wrapped LM's attention
        model.set_attn_implementation(cfg.model.attn_implementation)
    else:
        model.config._attn_implementation = cfg.model.attn_implementation
    model.config.use_cache = False
    model.train()
    lrs = cfg.learning_rates()
    t = cfg.train
    args = TrainingArguments(
        output_dir=t.output_dir,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=max((v for v in lrs.values() if v), default=0.0),
        weight_decay=t.weight_decay,
        **_warmup(t.warmup_ratio),
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        bf16=cfg.model.bf16,
        **_checkpointing(cfg.model.gradient_checkpointing),
        use_cpu=t.device == "cpu",
        seed=t.seed,
        data_seed=t.seed,
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=t.dataloader_workers,
        disable_tqdm=True,
        save_only_model=False,
    )
    image_size = (
        model.config.image_size if cfg.model.kind == "llava_sg" else model.config.vision_image_size
    )
    dataset = RobinDataset(mixture.examples, image_size)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=RobinCollator(tokenizer.pad_token_id, image_size),
        lrs=lrs,
        lengths=[e.length for e in mixture.examples],
        group_by_length=t.group_by_length,
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the progress lines say it in one line per log
    trainer.add_callback(_progress_callback(emit, lambda: trainer.tokens_seen))
    resume = last_checkpoint(t.output_dir, emit)
    if resume:
        emit(f"resuming from {resume}")
    start = time.monotonic()
    out = trainer.train(resume_from_checkpoint=resume)
    elapsed = max(time.monotonic() - start, 1e-9)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps_run = trainer.state.global_step - (
        int(os.path.basename(resume).split("-")[-1]) if resume else 0
    )
    examples = steps_run * t.batch_size * t.grad_accum
    result = TrainResult(
        cfg.export_dir,
        trainer.state.global_step,
        losses[-1] if losses else None,
        trainer.tokens_seen / elapsed,
        examples / elapsed,
        summary,
        resume,
    )
    export(trainer.model, tokenizer, cfg, result, trainer.state.log_history, out.training_loss)
    emit(f"exported {cfg.export_dir} after {result.steps} steps (final loss {result.final_loss})")
    return result


def loss_png(curve: list[dict]) -> bytes:
    """The loss curve (step, loss) as PNG bytes."""
    import io

    from matplotlib.figure import Figure  # the object API: no pyplot state

    fig = Figure(figsize=(6, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], marker=".", color="#3b6ea8")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training loss")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def export(
    model,
    tokenizer,
    cfg: TrainConfig,
    result: TrainResult,
    log_history: list[dict],
    mean_loss: float,
) -> None:
    """The model in the released layout, its manifest, and a check that the loader reads it."""
    from synthvg.models.identity import path_identity

    model.config.use_cache = True
    if cfg.model.kind == "llava_sg":
        from synthvg.models.llava_sg.loader import read_config as read_llava_sg_config
        from synthvg.models.llava_sg.loader import save_llava_sg
        from synthvg.models.robin.loader import weight_files

        save_llava_sg(model, cfg.export_dir, tokenizer=tokenizer)
        check_export: Callable[[str], object] = read_llava_sg_config
    else:
        from synthvg.models.robin.loader import read_config, weight_files
        from synthvg.models.robin.writer import save_released

        save_released(model, cfg.export_dir, tokenizer=tokenizer)
        check_export = read_config
    loss_curve = [{"step": h["step"], "loss": h["loss"]} for h in log_history if "loss" in h]
    manifest = {
        "synthvg_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "config_sha256": cfg.digest(),
        "config": cfg.model_dump(mode="json"),
        "parent_checkpoint": path_identity(cfg.model.checkpoint),
        "data": [
            {
                "name": s.name,
                "task": s.task,
                "root": s.root,
                "version": result.mixture["sources"][s.name].get("version"),
                "version_pinned": s.version is not None,
                "view": s.view,
                "sql": s.sql,
                "params": s.params,
                "path": s.path,
                "counts": result.mixture["sources"][s.name],
            }
            for s in cfg.data.sources
        ],
        "steps": result.steps,
        "final_loss": result.final_loss,
        "mean_loss": mean_loss,
        "tokens_per_s": result.tokens_per_s,
        "examples_per_s": result.examples_per_s,
        "resumed_from": result.resumed_from,
        "loss_curve": loss_curve,
    }
    with open(os.path.join(cfg.export_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, default=str)
    with open(os.path.join(cfg.train.output_dir, LOSS_PNG), "wb") as f:
        f.write(loss_png(loss_curve))
    check_export(cfg.export_dir)
    weight_files(cfg.export_dir)


if __name__ == "__main__":  # torchrun / accelerate launch -m synthvg.train.trainer CONFIG
    import sys

    from synthvg.train.config import load_train_config

    train(load_train_config(sys.argv[1]))
