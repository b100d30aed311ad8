"""Random-weight LLaVA-SG directories, for tests and benchmarks.

No weights can be downloaded here: tests build a tiny LLaVA-SG (tiny CLIP ViT, tiny Llama or
Qwen2, a byte-level BPE tokenizer with ``<image>``/``<sg>``/``<text>``), save it and load it back
through :func:`synthvg.models.llava_sg.loader.load_llava_sg`, the path a real model takes. The
GPU benchmark builds a 7B-sized one the same way (random weights).
"""

from __future__ import annotations

import torch

from synthvg.models.llava_sg.loader import save_llava_sg
from synthvg.models.llava_sg.modeling import LlavaSGConfig, LlavaSGForCausalLM
from synthvg.models.llava_sg.prompt import (
    IMAGE,
    SG,
    SYSTEM,
    TEXT,
    choice_question,
    relation_question,
    verify_question,
)
from synthvg.models.robin.testing import build_tokenizer as build_bpe

PAD, EOS = "<pad>", "</s>"
_SPECIAL = [PAD, EOS, IMAGE, SG, TEXT]
_WORDS = (
    "person dog cat car table chair cup bottle bicycle horse sky tree grass building window "
    "on in near holding behind above below next to left of right of under wearing riding "
    "sitting at standing on parked on looking at has with of the a yes no Yes No A B C D E"
)


def build_tokenizer(path: str, vocab_size: int = 500):
    """Robin's test tokenizer builder on LLaVA-SG's prompt vocabulary and special tokens."""
    corpus = [
        f"{SYSTEM} USER: {IMAGE}{SG}{TEXT}\n{relation_question('the person', 'the dog')} ASSISTANT: next to",
        choice_question("person", "table", ["on", "near", "holding"]),
        verify_question("person", "holding", "cup") + " ASSISTANT: yes no Yes No",
        _WORDS,
    ]
    return build_bpe(path, vocab_size, special=_SPECIAL, corpus=corpus, eos_token=EOS)


def tiny_config(vocab_size: int, lm: str = "llama", **overrides) -> LlavaSGConfig:
    """CLIP ViT 64 px / patch 16 (16 image tokens), a 32-wide LM, a 16-wide SGE."""
    text = dict(
        model_type=lm,
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=lm == "qwen2",
    )
    vision = dict(
        hidden_size=24,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=64,
        patch_size=16,
        projection_dim=16,
    )
    base = dict(
        vision_config=vision,
        text_config=text,
        sge_dim=16,
        sge_layers=1,
        sge_heads=4,
        sge_points=64,
        tokenizer_model_max_length=512,
    )
    return LlavaSGConfig(**{**base, **overrides})


def llava_7b_config(vocab_size: int = 32000, **overrides) -> LlavaSGConfig:
    """LLaVA-1.5-7B's shapes: CLIP ViT-L/14-336 + Vicuna-7B (Llama-2-7B) (random weights)."""
    text = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    base = dict(vision_config=vision, text_config=text, sge_dim=1024, sge_layers=2, sge_heads=8)
    return LlavaSGConfig(**{**base, **overrides})


def make_model(
    path: str,
    config: LlavaSGConfig | None = None,
    *,
    lm: str = "llama",
    seed: int = 0,
    shards: int = 2,
    dtype=torch.float32,
) -> LlavaSGConfig:
    """A random LLaVA-SG (tiny by default) with its tokenizer, saved to ``path``."""
    tokenizer = build_tokenizer(path)
    config = config or tiny_config(len(tokenizer), lm)
    config.text_config["vocab_size"] = max(config.text_config["vocab_size"], len(tokenizer))
    config.text_config["eos_token_id"] = tokenizer.eos_token_id
    config.text_config["pad_token_id"] = tokenizer.pad_token_id
    ids = tokenizer.convert_tokens_to_ids
    config.image_token_id, config.sg_token_id, config.text_token_id = ids(IMAGE), ids(SG), ids(TEXT)
    torch.manual_seed(seed)
    model = LlavaSGForCausalLM(config).to(dtype)
    save_llava_sg(model, path, tokenizer=tokenizer, shards=shards)
    return config


if __name__ == "__main__":  # python -m synthvg.models.llava_sg.testing DIR: a tiny random LLaVA-SG
    import sys

    if len(sys.argv) != 2:
        sys.exit(
            "usage: python -m synthvg.models.llava_sg.testing OUT_DIR   (a tiny random LLaVA-SG)"
        )
    make_model(sys.argv[1])
    print(f"tiny random LLaVA-SG (not trained: its answers are noise) written to {sys.argv[1]}")
