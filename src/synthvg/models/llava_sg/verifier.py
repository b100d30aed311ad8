"""A trained LLaVA-SG as a local VQA verifier of the filters stage.

It asks the same question as the other verifiers (the ``verify`` prompt's user text) about the
image with the pair drawn, the subject's and the object's masks as its two entities, and reads
P(yes) from the first answer token's distribution restricted to the yes/no spellings that are
single tokens: P(yes) = yes mass / (yes + no mass), as the transformers verifier reads it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from synthvg.config.llava_sg import LlavaSGVerifierConfig
from synthvg.models.llava_sg.inference import LlavaSGEngine
from synthvg.models.vqa_transformers import NO, YES, answer_token_ids, resolve_device, resolve_dtype
from synthvg.prompts import load_prompt

if TYPE_CHECKING:
    from synthvg.models.vqa import Question


class LlavaSGVerifier:
    def __init__(self, config: LlavaSGVerifierConfig):
        self.config = config
        self.threshold = config.threshold
        self.name = f"vqa:{Path(config.path).resolve().name}"
        self.prompt = load_prompt(config.prompt)
        device = resolve_device(config.device)
        self.engine = LlavaSGEngine(
            config.path, device=str(device), dtype=resolve_dtype(config.dtype, device)
        )
        tok = self.engine.tokenizer
        self.yes_ids, self.no_ids = answer_token_ids(tok, YES), answer_token_ids(tok, NO)
        if not self.yes_ids or not self.no_ids:
            raise ValueError(
                f"the tokenizer in {config.path} has no single-token yes/no: P(yes) cannot be read"
            )

    def _text(self, q: Question) -> str:
        return self.prompt.render_user(
            subject_id=q.subject_id,
            object_id=q.object_id,
            subject=q.subject,
            predicate=q.predicate,
            object=q.object,
        )

    def p_yes(self, questions: list[Question]) -> list[float | None | BaseException]:
        out: list[float | None | BaseException] = []
        for start in range(0, len(questions), self.config.batch_size):
            batch = questions[start : start + self.config.batch_size]
            try:
                logp = self.engine.next_token_logprobs(
                    [(q.image, list(q.masks), self._text(q)) for q in batch]
                )
            except (RuntimeError, ValueError) as e:  # this batch's failure, not the others'
                out += [e] * len(batch)
                continue
            both = logp[:, self.yes_ids + self.no_ids].log_softmax(-1)
            p = both[:, : len(self.yes_ids)].exp().sum(-1)
            out += [float(x) if math.isfinite(float(x)) else None for x in p]
        return out


__all__ = ["LlavaSGVerifier"]
