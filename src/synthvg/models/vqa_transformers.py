"""VQA verification with a local transformers image-text-to-text model (no endpoint, no network).

It asks the same question as the OpenAI-compatible verifier (the ``verify`` prompt, rendered the
same way) and reads P(yes) from one forward pass per batch: the next-token distribution after the
prompt, restricted to the yes/no spellings that are single tokens, P(yes) = yes / (yes + no) mass.
The model loads once per verifier (the filters stage is itself built once per worker).
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jinja2 import TemplateError
from transformers import AutoModelForImageTextToText, AutoProcessor

from synthvg.prompts import Prompt, load_prompt
from synthvg.schemas.config import TransformersVerifierConfig

if TYPE_CHECKING:
    from synthvg.models.vqa import Question

log = logging.getLogger("synthvg.vqa")

YES = ("yes", "Yes", " yes", " Yes")
NO = ("no", "No", " no", " No")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def answer_token_ids(tokenizer: Any, spellings: tuple[str, ...]) -> list[int]:
    """Ids of the spellings that are one token which decodes back to the word.

    Decoding back excludes an unknown-token id (a word-level vocab maps "Yes" to [UNK]).
    """
    ids: set[int] = set()
    for s in spellings:
        encoded = tokenizer.encode(s, add_special_tokens=False)
        if len(encoded) == 1 and tokenizer.decode(encoded).strip() == s.strip():
            ids.add(encoded[0])
    return sorted(ids)


def build_prompt(processor: Any, prompt: Prompt, text: str) -> str:
    """The model's own chat layout (system + user with the image) when it has a template.

    Templates that reject a system turn get the system text at the top of the user turn; a
    processor without a template gets a plain prompt around its image placeholder.
    """
    if getattr(processor, "chat_template", None):
        user = [{"type": "image"}, {"type": "text", "text": text}]
        system = {"role": "system", "content": [{"type": "text", "text": prompt.system}]}
        try:
            return processor.apply_chat_template(
                [system, {"role": "user", "content": user}],
                add_generation_prompt=True,
                tokenize=False,
            )
        except TemplateError:
            user[1] = {"type": "text", "text": f"{prompt.system}\n\n{text}"}
            return processor.apply_chat_template(
                [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
            )
    image_token = getattr(processor, "image_token", None)
    if not image_token:
        raise ValueError(
            f"{type(processor).__name__} has neither a chat template nor an image_token to place the image"
        )
    return f"{image_token}\n{prompt.system}\n{text}\nAnswer:"


def resolve_device(device: str) -> torch.device:
    return (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device == "auto"
        else torch.device(device)
    )


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU (half the memory, the dtype VLMs ship in); fp32 on CPU, where bf16 is slow."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


class TransformersVerifier:
    """Yes/no questions to a local ``AutoModelForImageTextToText`` checkpoint directory."""

    def __init__(self, config: TransformersVerifierConfig):
        self.config = config
        self.threshold = config.threshold
        self.name = f"vqa:{Path(config.path).resolve().name}"  # the folder, as a model name
        self.batch_size = config.batch_size
        self.prompt = load_prompt(config.prompt)
        self.device = resolve_device(config.device)
        self.processor = AutoProcessor.from_pretrained(config.path, local_files_only=True)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # the last position is then every row's next token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.yes_ids, self.no_ids = (
            answer_token_ids(tokenizer, YES),
            answer_token_ids(tokenizer, NO),
        )
        if not self.yes_ids or not self.no_ids:
            missing = [
                s
                for group, ids in ((YES, self.yes_ids), (NO, self.no_ids))
                if not ids
                for s in group
            ]
            raise ValueError(
                f"the tokenizer in {config.path} has none of {missing} as a single token: P(yes) cannot be read"
            )
        self.model = (
            AutoModelForImageTextToText.from_pretrained(
                config.path, dtype=resolve_dtype(config.dtype, self.device), local_files_only=True
            )
            .to(self.device)  # type: ignore[arg-type]  # transformers types .to oddly
            .eval()
        )
        self._lock = (
            threading.Lock()
        )  # shard threads share the stage: one batch on the device at a time

    def p_yes(self, questions: list[Question]) -> list[float | None | BaseException]:
        out: list[float | None | BaseException] = []
        start = 0
        while start < len(questions):
            batch = questions[start : start + self.batch_size]
            out.extend(self._answer(batch, retry_oom=True))
            start += len(batch)
        return out

    def _answer(self, batch: list[Question], retry_oom: bool) -> list[float | None | BaseException]:
        """One batch's answers; its failure is returned for its questions only (other batches keep theirs)."""
        try:
            with self._lock:
                return self._forward(batch)
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            if not retry_oom or len(batch) == 1:
                return [e] * len(batch)
            half = (len(batch) + 1) // 2
            self.batch_size = min(
                self.batch_size, half
            )  # later batches would run out of memory too
            log.warning(
                "%s: out of memory on a batch of %d; retrying in batches of %d",
                self.name,
                len(batch),
                half,
            )
            return self._answer(batch[:half], retry_oom=False) + self._answer(
                batch[half:], retry_oom=False
            )
        except Exception as e:
            return [e] * len(batch)

    @torch.inference_mode()
    def _forward(self, batch: list[Question]) -> list[float | None | BaseException]:
        """P(yes) per question from the first answer token's logits, no sampling.

        ``generate`` with one new token is exactly one forward pass, and it derives position ids
        from the padding mask the way each architecture needs (multimodal RoPE included).
        """
        texts = [
            build_prompt(
                self.processor,
                self.prompt,
                self.prompt.render_user(
                    subject_id=q.subject_id,
                    object_id=q.object_id,
                    subject=q.subject,
                    predicate=q.predicate,
                    object=q.object,
                ),
            )
            for q in batch
        ]
        images = [q.image.convert("RGB") for q in batch]
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt")
        inputs = inputs.to(
            self.device, dtype=self.model.dtype
        )  # only the float tensors (pixels) cast
        out = self.model.generate(
            **inputs,
            max_new_tokens=1,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        logprobs = out.logits[0][:, self.yes_ids + self.no_ids].float().log_softmax(-1)
        p = logprobs[:, : len(self.yes_ids)].exp().sum(-1).tolist()
        return [x if math.isfinite(x) else None for x in p]  # NaN (overflowed logits): no answer
