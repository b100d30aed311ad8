"""The local transformers VQA verifier on a tiny random LLaVA built offline (no download).

The model, tokenizer, image processor and processor are built from configs, saved to a folder
and loaded back by ``TransformersVerifier`` through ``from_pretrained(folder)``: the code path a
real checkpoint takes. Random weights make the answers meaningless; the tests check the
mechanics (P(yes) in [0, 1], batching, determinism, failures per batch, the stage's verdicts).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import build_with_verifier  # noqa: E402
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from synthvg.models.vqa import Question  # noqa: E402
from synthvg.models.vqa_transformers import TransformersVerifier, build_prompt  # noqa: E402
from synthvg.prompts import load_prompt  # noqa: E402
from synthvg.schemas.config import TransformersVerifierConfig  # noqa: E402
from synthvg.storage import connect  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NO_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    + CHAT
)


def tiny_processor(words: set[str], chat_template: str | None = CHAT) -> LlavaProcessor:
    """Word-level tokenizer over the prompt's words (+ ``words``), a 32 px CLIP image processor."""
    prompt = load_prompt("verify/v1")
    vocab_words = sorted(set(re.findall(r"\w+|[^\w\s]+", f"{prompt.system} {prompt.user}")) | words)
    vocab = {t: i for i, t in enumerate(SPECIAL + [w for w in vocab_words if w not in SPECIAL])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL[4:],
        model_input_names=["input_ids", "attention_mask"],  # as Llama's
    )
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random LLaVA (CLIP 32 px / 8 px patches + 2-layer Llama), saved like a checkpoint."""
    out = tmp_path_factory.mktemp("tiny-llava")
    processor = tiny_processor({"yes", "Yes", "no", "No"})
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _verifier(model_dir, batch_size: int) -> TransformersVerifier:
    return TransformersVerifier(
        TransformersVerifierConfig(kind="transformers", path=str(model_dir), batch_size=batch_size)
    )


def _questions(n: int) -> list[Question]:
    """Different images (sizes, colours) and wordings, so padding and answers differ per row."""
    predicates = ["holding", "riding", "looking at", "feeding", "wearing"]
    return [
        Question(
            Image.new("RGB", (40 + 13 * i, 30 + 7 * i), (40 * i, 200 - 30 * i, 90)),
            i + 1,
            i + 2,
            "dog",
            predicates[i % 5],
            "red ball" if i % 2 else "ball",
        )
        for i in range(n)
    ]


def test_p_yes_in_unit_interval_same_batched_or_not_and_deterministic(model_dir):
    questions = _questions(5)
    batched = _verifier(model_dir, 3)
    assert batched.name == f"vqa:{model_dir.name}"
    assert (
        len(batched.yes_ids) == 2 and len(batched.no_ids) == 2
    )  # yes/Yes, no/No; " yes" is "yes" here
    first = batched.p_yes(questions)
    assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in first), first
    assert batched.p_yes(questions) == first
    one_by_one = _verifier(model_dir, 1).p_yes(questions)
    assert one_by_one == pytest.approx(first, abs=1e-4)


def test_a_failing_batch_loses_only_its_own_answers_and_oom_halves_the_batch(
    model_dir, monkeypatch
):
    verifier = _verifier(model_dir, 3)
    questions = _questions(6)
    expected = verifier.p_yes(questions)
    real = verifier._forward

    def broken_second_batch(batch):
        if batch[0].subject_id == 4:
            raise RuntimeError("device fell over")
        return real(batch)

    monkeypatch.setattr(verifier, "_forward", broken_second_batch)
    answers = verifier.p_yes(questions)
    assert answers[:3] == expected[:3]
    assert all(isinstance(a, RuntimeError) for a in answers[3:])

    def oom_above_two(batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(batch)

    monkeypatch.setattr(verifier, "_forward", oom_above_two)
    assert verifier.p_yes(questions) == pytest.approx(expected, abs=1e-4)
    assert verifier.batch_size == 2  # later batches start at the size that fitted


def test_prompt_uses_the_chat_template_else_a_plain_prompt():
    prompt = load_prompt("verify/v1")
    with_system = build_prompt(tiny_processor(set()), prompt, "Is it?")
    assert with_system == f"<|system|>{prompt.system}<|user|><image>Is it?<|assistant|>"
    folded = build_prompt(tiny_processor(set(), NO_SYSTEM), prompt, "Is it?")
    assert folded == f"<|user|><image>{prompt.system}\n\nIs it?<|assistant|>"
    plain = build_prompt(tiny_processor(set(), None), prompt, "Is it?")
    assert plain == f"<image>\n{prompt.system}\nIs it?\nAnswer:"


def test_a_tokenizer_without_yes_no_tokens_fails_at_load(model_dir, tmp_path):
    copy = tmp_path / "no-yes"
    shutil.copytree(model_dir, copy)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (copy / f).unlink()
    tiny_processor(set()).save_pretrained(copy)  # the prompt has "yes" and "no" ...
    vocab = json.loads((copy / "tokenizer.json").read_text())["model"]["vocab"]
    assert "yes" in vocab  # ... so drop them from the saved vocab
    tok = json.loads((copy / "tokenizer.json").read_text())
    tok["model"]["vocab"] = {w: i for w, i in vocab.items() if w not in ("yes", "no")}
    (copy / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="'yes'"):
        _verifier(copy, 2)


def test_filters_stage_verifies_non_spatial_relations_with_the_local_model(
    model_dir, tmp_path, monkeypatch
):
    verifier = {"kind": "transformers", "path": str(model_dir), "threshold": 0.5}
    cfg, rows = build_with_verifier(tmp_path / "root", verifier, monkeypatch)
    con = connect(cfg.out)
    assert rows
    for verdict, score, by, reason in rows:
        assert by == f"vqa:{model_dir.name}"
        assert 0.0 <= score <= 1.0 and verdict == ("kept" if score >= 0.5 else "dropped")
        assert f"vqa:{model_dir.name} P(yes)=" in reason
    judged = con.sql(
        "SELECT count(*), count(DISTINCT relation_id) FROM relation_verdicts"
    ).fetchall()[0]
    assert (
        judged[0]
        == judged[1]
        == con.sql("SELECT count(*) FROM relations WHERE stage = 'teacher'").fetchall()[0][0]
    )
