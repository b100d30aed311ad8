"""Batched Robin generation: many images and regions per forward pass, KV cache, left padding.

The release runs one image at a time. Here a batch of images is encoded once (vision tower,
projector, mask extractor), every call (one prompt over one image's regions) becomes a row
of input embeddings with the image and region features spliced in, and rows of similar
length are generated together with transformers' ``generate`` (left padding, KV cache).
A prompt longer than the model's limit is refused per call, never cut.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from synthvg.models.robin.loader import load_robin
from synthvg.models.robin.prompt import (
    IM_END,
    IMAGE,
    MASK,
    POS,
    Answer,
    chatml_segments,
    preprocess_image,
)
from synthvg.models.runtime import AdaptiveBatcher

log = logging.getLogger("synthvg")


class PromptTooLong(ValueError):
    """The spliced prompt exceeds the model's maximum length; it would be truncated."""


@dataclass
class RobinImage:
    rgb: np.ndarray  # H x W x 3 uint8
    masks: list[np.ndarray]  # H x W bool, one per region
    boxes: list[tuple[float, float, float, float]]  # xyxy pixels, one per region


@dataclass
class RobinCall:
    """One prompt: ``turns`` (ChatML, last answer None) over regions of ``images[image]``;
    ``regions[k - 1]`` is the mask index of ``region{k}`` in the text."""

    image: int
    regions: list[int]
    turns: list[tuple[str, Answer | None]]
    max_new_tokens: int


@dataclass
class Generation:
    text: str
    prompt_tokens: int  # after splicing in the image tokens
    new_tokens: int
    finished: bool  # stopped at <|im_end|> (False: hit max_new_tokens)
    token_ids: list[int]  # what was generated, before decoding (up to <|im_end|>)


@dataclass(frozen=True)
class Sampling:
    """``temperature`` 0 is greedy decoding."""

    temperature: float = 0.2
    top_p: float = 1.0
    seed: int = 0


class RobinEngine:
    """A loaded Robin and the code that feeds it; one per worker (loading takes the time)."""

    def __init__(
        self,
        path: str,
        *,
        device: torch.device,
        lm_dtype: torch.dtype,
        vision_dtype: torch.dtype,
        batch_size: int = 8,
        max_prompt_tokens: int | None = None,
        attn_implementation: str = "sdpa",
        allow_unexpected_keys: bool = False,
    ):
        model, self.tokenizer, self.load_report = load_robin(
            path,
            lm_dtype=lm_dtype,
            vision_dtype=vision_dtype,
            allow_unexpected_keys=allow_unexpected_keys,
        )
        model.config._attn_implementation = attn_implementation
        self.model = model.to(device)  # type: ignore[arg-type]  # transformers types .to oddly
        self.device, self.lm_dtype, self.vision_dtype = device, lm_dtype, vision_dtype
        self.config = model.config
        self.max_prompt_tokens = max_prompt_tokens or self.config.tokenizer_model_max_length
        self.batcher = AdaptiveBatcher(batch_size)
        ids = self.tokenizer.convert_tokens_to_ids
        self.image_id, self.mask_id, self.pos_id, self.end_id = (
            ids(IMAGE),
            ids(MASK),
            ids(POS),
            ids(IM_END),
        )
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id
        )

    # -- prompts -----------------------------------------------------------------------------
    def prompt_ids(self, turns: list[tuple[str, Answer | None]]) -> list[int]:
        """Token ids of the ChatML conversation. Answers given as ids go in as generated, less any
        ``<image>``/``<mask>``/``<pos>`` a model wrote: those would receive features there."""
        features = (self.image_id, self.mask_id, self.pos_id)
        ids: list[int] = []
        for part in chatml_segments(turns):
            if isinstance(part, list):
                ids += [t for t in part if t not in features]
            else:
                ids += self.tokenizer(part, add_special_tokens=False)["input_ids"]
        return ids

    def prompt_length(self, ids: list[int]) -> int:
        """Length after ``<image>`` becomes the image tokens."""
        return len(ids) - 1 + self.config.image_tokens

    def _checked_ids(self, call: RobinCall) -> list[int]:
        ids = self.prompt_ids(call.turns)
        n = len(call.regions)
        counts = (ids.count(self.image_id), ids.count(self.mask_id), ids.count(self.pos_id))
        if counts != (1, n, n):
            raise ValueError(f"prompt has {counts} <image>/<mask>/<pos> tokens for {n} regions")
        if (length := self.prompt_length(ids)) > self.max_prompt_tokens:
            raise PromptTooLong(
                f"prompt is {length} tokens, the model's limit is {self.max_prompt_tokens}"
            )
        return ids

    # -- encoding ----------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(
        self, images: list[RobinImage]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image: (image tokens [T, hidden], mask features [N, hidden], pos features [N, hidden])."""
        pixels = [preprocess_image(img.rgb, self.config.vision_image_size).pixels for img in images]

        def run(chunk: list[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            batch = torch.stack([pixels[i] for i in chunk]).to(self.device, self.vision_dtype)
            masks = [
                torch.from_numpy(np.stack(images[i].masks)).to(self.device)
                if images[i].masks
                else None
                for i in chunk
            ]
            return [tuple(t.to(self.lm_dtype) for t in e) for e in self.model.encode(batch, masks)]

        return self.batcher.run(lambda chunk: run(list(chunk)), list(range(len(images))))

    def embed(self, ids: list[int], call: RobinCall, encoded) -> torch.Tensor:
        """The call's input embeddings: text embeddings with ``<mask>``/``<pos>`` replaced by
        region features and ``<image>`` expanded to the image tokens (the model's own splice,
        which training uses too)."""
        return self.model.splice(torch.tensor(ids, device=self.device), encoded, call.regions)

    # -- generation --------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self, images: list[RobinImage], calls: list[RobinCall], sampling: Sampling
    ) -> list[Generation | Exception]:
        """One result per call, in order; a call that cannot run is an exception in its place."""
        results: list[Generation | Exception | None] = [None] * len(calls)
        ready: list[tuple[int, list[int]]] = []
        for i, call in enumerate(calls):
            try:
                ready.append((i, self._checked_ids(call)))
            except ValueError as e:
                results[i] = e
        encoded = self.encode(images) if ready else []
        # Similar lengths together: less padding. Stable, so equal-length calls keep their order.
        ready.sort(key=lambda item: len(item[1]))

        def run(batch) -> list[Generation]:
            embeds = [self.embed(ids, calls[i], encoded[calls[i].image]) for i, ids in batch]
            return self._generate(embeds, [calls[i].max_new_tokens for i, _ in batch], sampling)

        for (i, _), gen in zip(ready, self.batcher.run(run, ready), strict=True):
            results[i] = gen
        return results  # type: ignore[return-value]

    def _generate(
        self, embeds: list[torch.Tensor], limits: list[int], sampling: Sampling
    ) -> list[Generation]:
        width = max(e.shape[0] for e in embeds)
        hidden = embeds[0].shape[1]
        batch = embeds[0].new_zeros((len(embeds), width, hidden))
        attention = torch.zeros((len(embeds), width), dtype=torch.long, device=self.device)
        for row, e in enumerate(embeds):  # left padding: generation continues every row's end
            batch[row, width - e.shape[0] :] = e
            attention[row, width - e.shape[0] :] = 1
        greedy = sampling.temperature <= 0
        if not greedy:
            torch.manual_seed(sampling.seed)
        out = self.model.generate(
            inputs_embeds=batch,
            attention_mask=attention,
            max_new_tokens=max(limits),
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            eos_token_id=self.end_id,
            pad_token_id=self.pad_id,
            use_cache=True,
        )
        gens = []
        for row, e, limit in zip(out.tolist(), embeds, limits, strict=True):
            row = row[:limit]
            finished = self.end_id in row
            tokens = row[: row.index(self.end_id)] if finished else row
            text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            gens.append(Generation(text, e.shape[0], len(tokens) + int(finished), finished, tokens))
        return gens
