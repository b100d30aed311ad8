"""Random-weight Robin checkpoints in the released layout, for tests and benchmarks.

No weights can be downloaded here, so tests build a tiny Robin (tiny ConvNeXt trunk, tiny
Qwen2, the same module names), save it as the release is saved (``config.json``,
safetensors shards + index, tokenizer files) and load it back through
:func:`synthvg.models.robin.loader.load_robin`, the path a real checkpoint takes. The
benchmark builds a Robin-3B-sized one the same way.
"""

from __future__ import annotations

import torch

from synthvg.models.robin.modeling import RobinConfig, RobinForCausalLM
from synthvg.models.robin.prompt import (
    HOLISTIC_QUESTION,
    IM_END,
    IMAGE,
    MASK,
    POS,
    chatml,
    first_message,
)
from synthvg.models.robin.writer import save_released

_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    IM_END,
    "<|box_start|>",
    "<|box_end|>",
    IMAGE,
    MASK,
    POS,
]


def tiny_config(vocab_size: int, **overrides) -> RobinConfig:
    """A Robin config small enough for CPU tests (16 image tokens, 32-wide LM)."""
    base = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1e6,
        vision_depths=(1, 1, 2, 1),
        vision_dims=(8, 16, 24, 32),
        mm_hidden_size=24,
        vision_image_size=64,
        mask_dim=16,
        pos_size=112,
        tokenizer_model_max_length=512,
    )
    return RobinConfig(**{**base, **overrides})


def robin_3b_config(vocab_size: int = 151936, **overrides) -> RobinConfig:
    """Qwen2.5-3B + ConvNeXt-L, as robin.md lists them (random weights: for benchmarks)."""
    base = dict(
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1e6,
        tokenizer_model_max_length=2048,
    )
    return RobinConfig(**{**base, **overrides})


def build_tokenizer(
    path: str,
    vocab_size: int = 400,
    *,
    special: list[str] | None = None,
    corpus: list[str] | None = None,
    eos_token: str = IM_END,
):
    """A byte-level BPE tokenizer trained on Robin's prompt vocabulary (or ``corpus``), with
    its special tokens (or ``special``: the first is the padding token), saved to ``path`` (so
    AutoTokenizer loads it as it loads Qwen2's)."""
    special = special or _SPECIAL
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = corpus or [
        chatml([(first_message([(0, 0, 10, 10)] * 3, 100, 100, HOLISTIC_QUESTION), None)]),
        "Objects:\nregion1: a man in a red shirt\nregion2: a wooden table\n\nRelations:\nregion1: region2 sitting at, region3 next to",
        "Generate a description for: region1. Generate list of relationships for: region2.",
        "0123456789 (),.: the a of on in near holding behind above below left right",
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=special[0],
        additional_special_tokens=special[1:],
    )
    fast.save_pretrained(path)
    return fast


def make_checkpoint(
    path: str,
    config: RobinConfig | None = None,
    *,
    seed: int = 0,
    dtype=torch.float32,
    shards: int = 2,
    **save,
) -> RobinConfig:
    """A random Robin (tiny by default) with its tokenizer, saved in the released layout."""
    tokenizer = build_tokenizer(path)
    config = config or tiny_config(len(tokenizer))
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    config.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = RobinForCausalLM(config).to(dtype)
    _spread_layer_scale(model)
    save_released(model, path, shards=shards, **save)
    return config


def _spread_layer_scale(model: RobinForCausalLM) -> None:
    """ConvNeXt initialises layer scale to 1e-6, which would hide a layer-scale mix-up in
    tests; random values make every block's scale matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.5, 1.5)


if __name__ == "__main__":  # python -m synthvg.models.robin.testing DIR: a tiny random checkpoint
    import sys

    if len(sys.argv) != 2:
        sys.exit(
            "usage: python -m synthvg.models.robin.testing OUT_DIR   (a tiny random Robin: its text is noise)"
        )
    make_checkpoint(sys.argv[1])
    print(
        f"tiny random Robin (not a trained model: its answers are noise) written to {sys.argv[1]}"
    )
