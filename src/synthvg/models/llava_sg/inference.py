"""Asking a LLaVA-SG: answers among choices (by the choices' likelihood) and P(yes).

:class:`LlavaSGEngine` loads a model directory once and answers through the model's own
:meth:`~synthvg.models.llava_sg.modeling.LlavaSGForCausalLM.embed_batch` (the splice training
uses), under inference mode. Entities are masks at any size of the image's aspect (they are
sampled in normalised coordinates), so masks at the original size go with a downscaled image.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

from synthvg import masks as mask_ops
from synthvg.models.llava_sg.loader import load_llava_sg
from synthvg.models.llava_sg.prompt import encode
from synthvg.models.robin.prompt import preprocess_image
from synthvg.schemas import RLE


def _mask_tensor(regions: list[RLE]) -> torch.Tensor | None:
    if not regions:
        return None
    return torch.from_numpy(np.stack([mask_ops.decode(r).astype(bool) for r in regions]))


class LlavaSGEngine:
    """One loaded LLaVA-SG; thread-safe (one forward at a time)."""

    def __init__(self, path: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.model, self.tokenizer = load_llava_sg(path, dtype=dtype)
        self.device = torch.device(device)
        self.model.to(self.device)  # type: ignore[arg-type]  # transformers types .to oddly
        self.name = path.rstrip("/").rsplit("/", 1)[-1]
        self._lock = threading.Lock()

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        rgb = np.asarray(image.convert("RGB"))
        return preprocess_image(rgb, self.model.config.image_size).pixels

    @torch.inference_mode()
    def choice_logprobs(
        self, image: Image.Image, regions: list[RLE], question: str, choices: list[str]
    ) -> list[float]:
        """Summed log-probability of each choice as the answer (one batch of len(choices) rows)."""
        prompt, _ = encode(self.tokenizer, [(question, None)], True)
        rows = []
        for c in choices:
            ids, labels = encode(self.tokenizer, [(question, c)], True)
            assert ids[: len(prompt)] == prompt  # the answer follows the prompt unchanged
            rows.append((ids[:-1], labels[:-1]))  # the choice's tokens, not its end-of-sequence
        logits, wide = self._forward(image, regions, rows)
        logp = logits[:, :-1].float().log_softmax(-1)
        target = wide[:, 1:]
        picked = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
        return (picked * (target != -100)).sum(-1).tolist()

    def answer(
        self, image: Image.Image, regions: list[RLE], question: str, choices: list[str] | None
    ) -> str:
        """The most likely of ``choices`` (greedy text of up to 8 tokens when None)."""
        if choices:
            scores = self.choice_logprobs(image, regions, question, choices)
            return choices[int(np.argmax(scores))]
        return self.generate(image, regions, question)

    @torch.inference_mode()
    def generate(
        self, image: Image.Image, regions: list[RLE], question: str, max_new_tokens: int = 8
    ) -> str:
        ids, _ = encode(self.tokenizer, [(question, None)], True)
        out: list[int] = []
        for _ in range(max_new_tokens):  # no KV cache: short answers only
            logits, _ = self._forward(image, regions, [(ids + out, [-100] * len(ids) + out)])
            nxt = int(logits[0, -1].argmax())
            if nxt == self.tokenizer.eos_token_id:
                break
            out.append(nxt)
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

    @torch.inference_mode()
    def next_token_logprobs(self, items: list[tuple[Image.Image, list[RLE], str]]) -> torch.Tensor:
        """[B, vocab]: the first answer token's log-probabilities for each (image, regions, question)."""
        rows, pixels, masks = [], [], []
        for image, regions, question in items:
            ids, _ = encode(self.tokenizer, [(question, None)], True)
            rows.append(ids)
            pixels.append(self._pixels(image))
            masks.append(_mask_tensor(regions))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, : len(r)], attention[j, : len(r)] = torch.tensor(r), 1
        with self._lock:
            embeds, att, _ = self.model.embed_batch(
                input_ids.to(self.device),
                attention.to(self.device),
                None,
                torch.stack(pixels).to(self.device),
                [m.to(self.device) if m is not None else None for m in masks],
                None,
            )
            logits = self.model.language_model(inputs_embeds=embeds, attention_mask=att).logits
        last = att.sum(1) - 1  # right padding: each row's own last position
        return logits[torch.arange(len(rows)), last].float().log_softmax(-1).cpu()

    def _forward(self, image, regions, rows: list[tuple[list[int], list[int]]]):
        """Logits and widened labels of rows that share one image and its entities."""
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, (ids, lab) in enumerate(rows):
            n = len(ids)
            input_ids[j, :n], labels[j, :n], attention[j, :n] = (
                torch.tensor(ids),
                torch.tensor(lab),
                1,
            )
        m = _mask_tensor(regions)
        with self._lock:
            (shared,) = self.model.encode(  # the image once, for every row
                self._pixels(image)[None].to(self.device),
                [m.to(self.device) if m is not None else None],
            )
            embeds, att, wide = self.model.embed_batch(
                input_ids.to(self.device),
                attention.to(self.device),
                labels.to(self.device),
                None,
                None,
                None,
                encoded=[shared] * len(rows),
            )
            logits = self.model.language_model(inputs_embeds=embeds, attention_mask=att).logits
        assert wide is not None  # labels were given
        return logits.cpu(), wide.cpu()
