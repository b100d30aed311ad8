"""Training Robin: the shared differentiable forward, the released-layout writer, data
mixtures by SQL, the trainer, export and the ``synthvg train`` command."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from synthvg.models.robin.inference import RobinEngine  # noqa: E402
from synthvg.models.robin.loader import load_robin  # noqa: E402
from synthvg.models.robin.prompt import HOLISTIC_QUESTION, first_message, preprocess_image  # noqa: E402
from synthvg.models.robin.testing import make_checkpoint  # noqa: E402
from synthvg.models.robin.writer import save_released  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("robin") / "robin-tiny"
    make_checkpoint(str(path))
    return str(path)


def _batch(model, tokenizer, n_regions=(2, 3), seed=0):
    """Two rows (right padded) with images, masks and labels on a made-up answer."""
    rng = np.random.default_rng(seed)
    rows, pixels, masks = [], [], []
    for n in n_regions:
        h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        m = np.zeros((n, h, w), bool)
        for k in range(n):
            m[k, k : k + h // 2, k : k + w // 2] = True
        msg = first_message([(k, k, k + w / 2, k + h / 2) for k in range(n)], w, h, HOLISTIC_QUESTION)
        prompt = tokenizer(f"<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        answer = tokenizer("Objects:\nregion1: a man", add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
        pixels.append(preprocess_image(rgb, model.config.vision_image_size).pixels)
        masks.append(torch.from_numpy(m))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (ids, lab) in enumerate(rows):
        input_ids[j, : len(ids)], labels[j, : len(ids)], attention[j, : len(ids)] = torch.tensor(ids), torch.tensor(lab), 1
    return dict(input_ids=input_ids, attention_mask=attention, labels=labels, pixel_values=torch.stack(pixels), region_masks=masks)


def test_the_forward_with_images_masks_and_labels_is_differentiable_everywhere(ckpt):
    model, tokenizer, _ = load_robin(ckpt)
    model.train()
    out = model(**_batch(model, tokenizer))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for prefix in ("model.vision_tower.", "model.mm_projector.", "mask_extractor.res2", "mask_extractor.mask_linear", "model.layers.0."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix) and ".trunk.head." not in n]  # head: never run
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), prefix


def test_training_and_generation_share_the_splice(ckpt):
    """The forward's logits on a prompt equal the inference engine's, which embeds through
    the same ``splice``: generation sees what training trained."""
    engine = RobinEngine(ckpt, device=torch.device("cpu"), lm_dtype=torch.float32, vision_dtype=torch.float32)
    model, tokenizer = engine.model, engine.tokenizer
    batch = _batch(model, tokenizer, n_regions=(2,))
    n = int(batch["attention_mask"].sum())
    ids = batch["input_ids"][0, :n]
    with torch.no_grad():
        train_logits = model(**{**batch, "labels": None}).logits[0]
        (encoded,) = model.encode(batch["pixel_values"], batch["region_masks"])
        emb = engine.embed(ids.tolist(), type("C", (), {"regions": [0, 1]})(), encoded)
        infer_logits = model(inputs_embeds=emb[None]).logits[0]
    assert torch.allclose(train_logits[: emb.shape[0]], infer_logits, atol=1e-5)


def test_save_load_round_trip_gives_identical_logits(ckpt, tmp_path):
    model, tokenizer, _ = load_robin(ckpt)
    with torch.no_grad():  # move the weights off the checkpoint's so the test sees the write
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_released(model, str(tmp_path / "out"), shards=2, tokenizer=tokenizer)
    again, tokenizer2, report = load_robin(str(tmp_path / "out"))
    batch = _batch(model, tokenizer)
    with torch.no_grad():
        a, b = model(**batch).logits, again(**batch).logits
    assert torch.equal(a, b) and report.tied_lm_head and len(tokenizer2) == len(tokenizer)
    original, _, _ = load_robin(ckpt)
    with torch.no_grad():
        assert not torch.equal(original(**batch).logits, a)
