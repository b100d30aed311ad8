"""Training Robin: the shared differentiable forward, the released-layout writer, data
mixtures by SQL, the trainer, export and the ``synthvg train`` command."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, demo_config
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from synthvg.models.robin.inference import RobinEngine  # noqa: E402
from synthvg.models.robin.loader import load_robin  # noqa: E402
from synthvg.models.robin.parse import parse_scene_graph  # noqa: E402
from synthvg.models.robin.prompt import (  # noqa: E402
    HOLISTIC_QUESTION,
    description_question,
    first_message,
    preprocess_image,
    relationships_question,
)
from synthvg.models.robin.testing import make_checkpoint  # noqa: E402
from synthvg.models.robin.writer import save_released  # noqa: E402
from synthvg.train.data import (  # noqa: E402
    Dropped,
    ImageRef,
    Region,
    SourceCounts,
    Tokeniser,
    _graph,
    _regions,
    _split,
    scene_graph_target,
    scene_graph_turns,
)


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
        msg = first_message(
            [(k, k, k + w / 2, k + h / 2) for k in range(n)], w, h, HOLISTIC_QUESTION
        )
        prompt = tokenizer(
            f"<|im_start|>user\n{msg}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
        )["input_ids"]
        answer = tokenizer("Objects:\nregion1: a man", add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
        pixels.append(preprocess_image(rgb, model.config.vision_image_size).pixels)
        masks.append(torch.from_numpy(m))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for j, (ids, lab) in enumerate(rows):
        input_ids[j, : len(ids)], labels[j, : len(ids)], attention[j, : len(ids)] = (
            torch.tensor(ids),
            torch.tensor(lab),
            1,
        )
    return dict(
        input_ids=input_ids,
        attention_mask=attention,
        labels=labels,
        pixel_values=torch.stack(pixels),
        region_masks=masks,
    )


def test_the_forward_with_images_masks_and_labels_is_differentiable_everywhere(ckpt):
    model, tokenizer, _ = load_robin(ckpt)
    model.train()
    out = model(**_batch(model, tokenizer))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for prefix in (
        "model.vision_tower.",
        "model.mm_projector.",
        "mask_extractor.res2",
        "mask_extractor.mask_linear",
        "model.layers.0.",
    ):
        grads = [
            p.grad
            for n, p in model.named_parameters()
            if n.startswith(prefix) and ".trunk.head." not in n
        ]  # head: never run
        assert (
            grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        ), prefix


def test_training_and_generation_share_the_splice(ckpt):
    """The forward's logits on a prompt equal the inference engine's, which embeds through
    the same ``splice``: generation sees what training trained."""
    engine = RobinEngine(
        ckpt, device=torch.device("cpu"), lm_dtype=torch.float32, vision_dtype=torch.float32
    )
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


# ---- data: templates, tokenising, mixtures ------------------------------------------------------

_PLAIN = st.text(st.sampled_from("abcdefghij KLMNOP"), min_size=1, max_size=20).filter(str.strip)
_ANY = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)


def _regions_of(texts):
    return [Region(i + 10, (0, 0, 5, 5), None, 1.0, t) for i, t in enumerate(texts)]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_scene_graph_target_parses_back_into_its_graph_or_is_dropped(data):
    """Property: whatever the rows hold, the rendered target is either read back by the robin
    parser as exactly the graph it renders, or the example is dropped; plain text is never dropped."""
    plain = data.draw(st.booleans())
    texts = data.draw(st.lists(_PLAIN if plain else _ANY, min_size=1, max_size=6))
    regions = _regions_of(texts)
    ids = [r.region_id for r in regions] + [99]  # 99: a region the prompt does not list
    rels = data.draw(
        st.lists(
            st.tuples(st.sampled_from(ids), st.sampled_from(ids), _PLAIN if plain else _ANY),
            max_size=12,
        )
    )
    objects, relations = _graph(regions, rels)
    try:
        text = scene_graph_target(objects, relations)
    except Dropped as d:
        assert not plain and d.reason == "target_not_parseable"
        return
    parsed = parse_scene_graph(text, len(regions))
    assert parsed.objects == objects and parsed.relations == relations and not parsed.problems
    assert all(r.subject != r.object for r in relations) and len(
        {(r.subject, r.object, r.predicate.lower()) for r in relations}
    ) == len(relations)


@pytest.fixture(scope="module")
def engine(ckpt):
    return RobinEngine(
        ckpt, device=torch.device("cpu"), lm_dtype=torch.float32, vision_dtype=torch.float32
    )


def test_labels_are_on_assistant_turns_only_and_prompts_are_what_generation_feeds(engine):
    tok = Tokeniser(engine.tokenizer, engine.config.image_tokens, 512)
    image = ImageRef("x", "unused", 100, 80)
    regions = _regions_of(["a man", "a wooden table"])
    turns = [
        (first_message([r.box for r in regions], 100, 80, description_question(1)), "a man"),
        (relationships_question(1), "region2 sitting at"),
    ]
    ids, labels, length = tok.encode(turns, 2, True)
    assert length == len(ids) - 1 + engine.config.image_tokens
    learnt = engine.tokenizer.decode([t for t in labels if t != -100])
    assert learnt == "a man<|im_end|>region2 sitting at<|im_end|>"
    prompt = engine.prompt_ids([(turns[0][0], None)])  # generation's prompt is training's prefix
    assert ids[: len(prompt)] == prompt and all(x == -100 for x in labels[: len(prompt)])
    with pytest.raises(Dropped, match="feature_tokens_mismatch"):  # '<mask>' written in an answer
        tok.encode([(turns[0][0], "a <mask> man")], 2, True)
    graph_turns = scene_graph_turns(image, regions, [(10, 11, "sitting at")])
    assert (
        graph_turns[0][1]
        == "Objects:\nregion1: a man\nregion2: a wooden table\n\nRelations:\nregion1: region2 sitting at"
    )


def test_a_long_example_is_split_by_regions_never_cut_and_one_region_too_long_is_dropped(engine):
    image = ImageRef("x", "unused", 100, 80)
    regions = _regions_of([f"object number {i}" for i in range(8)])
    rels = [(10 + i, 10 + (i + 1) % 8, "next to") for i in range(8)]
    whole = Tokeniser(engine.tokenizer, engine.config.image_tokens, 4096)
    (full,) = _split(
        whole,
        scene_graph_turns,
        image,
        regions,
        rels,
        "scene_graph",
        SourceCounts("scene_graph"),
        "s",
    )
    small = Tokeniser(engine.tokenizer, engine.config.image_tokens, full.length * 2 // 3)
    counts = SourceCounts("scene_graph")
    parts = _split(small, scene_graph_turns, image, regions, rels, "scene_graph", counts, "s")
    assert (
        len(parts) >= 2 and counts.splits >= 1 and all(p.length <= small.max_length for p in parts)
    )
    assert sum(len(p.masks) for p in parts) == 8
    for p in parts:  # every part's target is whole: it ends with <|im_end|> and parses
        answer = engine.tokenizer.decode([t for t in p.labels if t != -100])
        assert answer.endswith("<|im_end|>")
        assert not parse_scene_graph(answer.removesuffix("<|im_end|>"), len(p.masks)).problems
    tiny = Tokeniser(engine.tokenizer, engine.config.image_tokens, 40)
    counts = SourceCounts("scene_graph")
    assert _split(tiny, scene_graph_turns, image, regions[:1], [], "scene_graph", counts, "s") == []
    assert counts.dropped == {"too_long": 1}


def test_regions_with_empty_masks_are_left_out_and_counted():
    from collections import Counter

    from synthvg import masks

    full, empty = np.zeros((20, 30), bool), np.zeros((20, 30), bool)
    full[2:10, 3:12] = True
    rows = [
        {
            "region_id": 0,
            "mask": masks.encode(empty).model_dump(),
            "bbox": {"x1": 0, "y1": 0, "x2": 1, "y2": 1},
            "area": 0.0,
            "label": "ghost",
            "descriptions": [],
        },
        {
            "region_id": 1,
            "mask": masks.encode(full).model_dump(),
            "bbox": {"x1": 3, "y1": 2, "x2": 12, "y2": 10},
            "area": 72.0,
            "label": "cat",
            "descriptions": [],
        },
    ]
    dropped = Counter()
    got = _regions(ImageRef("i", "u", 30, 20), rows, {("i", 1): "a grey cat"}, 10, dropped)
    assert [(r.region_id, r.text) for r in got] == [(1, "a grey cat")] and dropped == {
        "empty_mask_region": 1
    }


# ---- the command, end to end, and bad input -----------------------------------------------------

#: transformers' Trainer needs accelerate (in the models extra).
needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed"
)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from synthvg.pipeline import run_build

    cfg = demo_config(tmp_path_factory.mktemp("demo") / "root", limit=4)
    run_build(cfg)
    return cfg.out


def _tiny_config(tmp_path, ckpt, root, **train) -> Path:
    """configs/train-tiny.yaml with this test's checkpoint, dataset and output folder."""
    raw = yaml.safe_load((REPO / "configs" / "train-tiny.yaml").read_text())
    raw["model"]["checkpoint"] = ckpt
    for s in raw["data"]["sources"]:
        s["root"] = root
    raw["train"] = {**raw["train"], "output_dir": str(tmp_path / "run"), **train}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args):
    from typer.testing import CliRunner

    from synthvg.cli import app

    return CliRunner().invoke(app, list(args))


@needs_accelerate
def test_synthvg_train_exports_a_checkpoint_that_a_build_runs(tmp_path, ckpt, demo_root):
    from synthvg.pipeline import run_build
    from synthvg.storage import connect

    config = _tiny_config(tmp_path, ckpt, demo_root, max_steps=4, save_steps=2, logging_steps=1)
    res = _cli("train", "--config", str(config))
    assert res.exit_code == 0, res.output
    assert "step 4/4" in res.output and "tokens/s" in res.output and "eta" in res.output
    export = tmp_path / "run" / "export"
    manifest = json.loads((export / "training.json").read_text())
    assert (
        manifest["steps"] == 4 and manifest["final_loss"] > 0 and len(manifest["loss_curve"]) == 4
    )
    assert manifest["parent_checkpoint"]["path"] == ckpt and len(manifest["config_sha256"]) == 64
    sources = {d["name"]: d for d in manifest["data"]}
    assert (
        sources["svg-relations"]["root"] == demo_root
        and sources["svg-relations"]["counts"]["taken"] >= 3
    )
    from synthvg.storage import Dataset

    # unpinned sources record the version they were read at
    assert sources["svg-relations"]["version"] == Dataset(demo_root).version() is not None
    assert sources["svg-relations"]["version_pinned"] is False
    assert (
        json.loads((tmp_path / "run" / "mixture.json").read_text())["sources"]["grounding"]["task"]
        == "grounding"
    )
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    trained, _, _ = load_robin(str(export))
    start, _, _ = load_robin(ckpt)
    changed = {
        n
        for (n, a), (_, b) in zip(trained.named_parameters(), start.named_parameters(), strict=True)
        if not torch.equal(a, b)
    }
    assert any(n.startswith("model.vision_tower.") for n in changed) and any(
        n.startswith("mask_extractor.") for n in changed
    )
    cfg = demo_config(
        Path(demo_root),
        limit=4,
        robin={
            "backend": "robin",
            "checkpoint": str(export),
            "max_new_tokens": 6,
            "max_regions": 4,
        },
    )
    run_build(cfg)
    con = connect(demo_root)
    (n, model) = con.execute(
        "SELECT count(*), any_value(model) FROM generations WHERE stage = 'robin'"
    ).fetchone()
    assert n >= 3 and model == "export"


@needs_accelerate
def test_a_frozen_group_stays_as_it_was(tmp_path, ckpt, demo_root):
    from synthvg.train.config import load_train_config
    from synthvg.train.trainer import train

    config = _tiny_config(tmp_path, ckpt, demo_root, max_steps=2, save_steps=100)
    raw = yaml.safe_load(config.read_text())
    raw["groups"]["vision"] = None  # stage 0: the vision tower frozen
    raw["model"]["gradient_checkpointing"] = True  # the GPU recipes' setting runs here too
    config.write_text(yaml.safe_dump(raw))
    result = train(load_train_config(config), emit=lambda _: None)
    trained, _, _ = load_robin(result.export_dir)
    start, _, _ = load_robin(ckpt)
    for (n, a), (_, b) in zip(trained.named_parameters(), start.named_parameters(), strict=True):
        if n.startswith("model.vision_tower."):
            assert torch.equal(a, b), n
        elif n.startswith("model.mm_projector."):
            assert not torch.equal(a, b), n


@needs_accelerate
def test_bad_inputs_are_counted_or_one_line_errors_before_training(tmp_path, ckpt, demo_root):
    from synthvg.storage import connect

    config = _tiny_config(tmp_path, ckpt, demo_root)
    raw = yaml.safe_load(config.read_text())

    def run_with(**changes):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**raw, **changes}))
        return _cli("train", "--config", str(path))

    def source(**s):
        return {
            **raw["data"],
            "sources": [{"name": "s", "root": demo_root, "task": "scene_graph", **s}],
        }

    res = run_with(data=source(view="no_such_view"))
    assert (
        res.exit_code == 2
        and "source s:" in res.output
        and "no_such_view" in res.output
        and len(res.output.strip().splitlines()) == 1
    )
    res = run_with(data=source(sql="DELETE FROM images"))
    assert res.exit_code == 2 and "refused" in res.output
    res = run_with(data=source(sql="SELECT image_id FROM regions"))
    assert res.exit_code == 2 and "missing ['subject_id'" in res.output
    not_robin = tmp_path / "not-robin"
    not_robin.mkdir()
    (not_robin / "config.json").write_text(json.dumps({"model_type": "bert"}))
    res = run_with(model={"checkpoint": str(not_robin)})
    assert (
        res.exit_code == 2
        and "is not a Robin config" in res.output
        and "Traceback" not in res.output
    )

    # conversations: good ones train; a missing or corrupt image, no assistant turn, Osprey's
    # region turns (masks not read) are counted, not fatal
    uri = connect(demo_root).execute("SELECT file_uri FROM images LIMIT 1").fetchone()[0]
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(uri, images / "good.jpg")
    (images / "corrupt.jpg").write_bytes(b"not a jpeg")
    turn = [
        {"from": "human", "value": "<image>\nWhat is this?"},
        {"from": "gpt", "value": "A picture."},
    ]
    records = [
        {"id": 1, "image": "good.jpg", "conversations": turn},
        {
            "id": 2,
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
        },
        {"id": 3, "image": "missing.jpg", "conversations": turn},
        {"id": 4, "image": "corrupt.jpg", "conversations": turn},
        {"id": 5, "image": "good.jpg", "conversations": turn[:1]},
        {
            "id": 6,
            "image": "good.jpg",
            "conversations": [turn[0], {"from": "gpt", "value": "region1 <mask><pos> is a cat"}],
        },
    ]
    (tmp_path / "conv.json").write_text(json.dumps(records))
    data = {
        **raw["data"],
        "sources": [
            {
                "name": "llava",
                "task": "conversations",
                "path": str(tmp_path / "conv.json"),
                "image_root": str(images),
            }
        ],
    }
    res = run_with(data=data, train={**raw["train"], "max_steps": 2, "save_steps": 100})
    assert res.exit_code == 0, res.output
    counts = json.loads((tmp_path / "run" / "mixture.json").read_text())["sources"]["llava"]
    assert counts["taken"] == 2 and counts["dropped"] == {
        "bad_image": 2,
        "no_assistant_turn": 1,
        "region_masks_not_read": 1,
    }


@pytest.mark.parametrize(
    "name", ["train-tiny", "train-robin-stage0", "train-robin-stage1", "train-robin-stage2"]
)
def test_training_configs_validate_and_the_recipes_freeze_as_the_paper_says(name):
    from synthvg.train.config import load_train_config

    cfg = load_train_config(REPO / "configs" / f"{name}.yaml")
    assert Path(cfg.model.checkpoint).is_absolute() and all(
        Path(s.root or s.path).is_absolute() for s in cfg.data.sources
    )
    if cfg.stage == 0:
        assert (
            cfg.groups.vision is None
            and cfg.groups.mask_extractor
            and cfg.groups.projector
            and cfg.groups.lm
        )
    elif name != "train-tiny":
        assert all(lr for lr in cfg.learning_rates().values())
    if cfg.stage == 2:
        views = {s.view for s in cfg.data.sources}
        assert (
            "svg_full" in views
            and "svg_relations" not in views
            and cfg.model.checkpoint.endswith("robin-stage1/export")
        )


def _steps(run: Path) -> dict[int, list[int]]:
    """Examples per optimizer step; a step redone after a kill counts as its last attempt."""
    steps: dict[int, list[int]] = {}
    for line in (run / "examples.jsonl").read_text().splitlines():
        rec = json.loads(line)
        steps[rec["step"]] = rec["examples"]
    return steps


@pytest.mark.slow
@needs_accelerate
def test_a_killed_training_resumes_from_its_last_checkpoint_on_the_same_course(
    tmp_path, ckpt, demo_root
):
    """SIGKILL mid-run, then the same command: it resumes from the newest checkpoint; the loss
    curve after resume equals an uninterrupted run's (|diff| <= 1e-4) and no example of the
    epoch is trained twice."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings_ = dict(max_steps=8, save_steps=2, logging_steps=1, epochs=1)
    for d in ("whole", "killed"):
        (tmp_path / d).mkdir()
    whole = _tiny_config(tmp_path / "whole", ckpt, demo_root, **settings_)
    assert _cli("train", "--config", str(whole)).exit_code == 0
    killed = _tiny_config(tmp_path / "killed", ckpt, demo_root, **settings_)
    cmd = [sys.executable, "-m", "synthvg.cli", "train", "--config", str(killed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run = tmp_path / "killed" / "run"
    deadline = time.monotonic() + 240
    while (
        not (run / "checkpoint-4").exists() and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoint-4").exists() and not (
        run / "export"
    ).exists()  # killed while or after saving it
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming from" in res.stdout and "checkpoint-" in res.stdout
    a = json.loads((tmp_path / "whole" / "run" / "export" / "training.json").read_text())
    b = json.loads((run / "export" / "training.json").read_text())
    assert b["steps"] == a["steps"] == 8 and b["resumed_from"]
    curve_a = {p["step"]: p["loss"] for p in a["loss_curve"]}
    curve_b = {p["step"]: p["loss"] for p in b["loss_curve"]}
    resumed_at = int(b["resumed_from"].rsplit("-", 1)[1])
    assert all(abs(curve_a[s] - curve_b[s]) <= 1e-4 for s in range(resumed_at + 1, 9)), (
        curve_a,
        curve_b,
    )
    seen_a, seen_b = _steps(tmp_path / "whole" / "run"), _steps(run)
    assert seen_b == seen_a
    order = [i for s in sorted(seen_b) for i in seen_b[s]]
    first_epoch = order[: json.loads((run / "mixture.json").read_text())["examples"]]
    assert len(first_epoch) == len(set(first_epoch))


@pytest.mark.slow
@needs_accelerate
def test_the_train_robin_flow_trains_and_publishes_its_artifacts(
    prefect_server, tmp_path, ckpt, demo_root
):
    from prefect.client.orchestration import get_client

    from synthvg.flows.train import train_robin

    config = _tiny_config(tmp_path, ckpt, demo_root, max_steps=2, save_steps=100, logging_steps=1)
    export = train_robin(str(config))
    assert export == str(tmp_path / "run" / "export") and (Path(export) / "training.json").exists()
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    wanted = {
        "train-train-tiny-checkpoint",
        "train-train-tiny-mixture",
        "train-train-tiny-loss",
        "train-train-tiny-summary",
    }
    with get_client(
        sync_client=True
    ) as client:  # filtered: the session's server holds other tests' artifacts too
        keys = {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(wanted)))
            )
        }
    assert wanted <= keys


@needs_accelerate
def test_length_grouped_order_depends_on_seed_and_epoch_only():
    from synthvg.train.trainer import EpochLengthGroupedSampler

    lengths = [int(x) for x in np.random.default_rng(0).integers(20, 400, 64)]

    def order(epoch):
        sampler = EpochLengthGroupedSampler(8, lengths, seed=3)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1) == order(1) != order(0) and sorted(order(1)) == list(range(64))
    batches = [order(0)[i : i + 8] for i in range(0, 64, 8)]  # groups of similar length
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    assert spread < np.ptp(lengths) / 2


def test_an_interrupted_checkpoint_is_passed_over_when_resuming(tmp_path):
    from synthvg.train.trainer import last_checkpoint

    for step, state in ((2, {"global_step": 2}), (4, None), (6, "{truncated")):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(
                state if isinstance(state, str) else json.dumps(state)
            )
    said = []
    assert last_checkpoint(str(tmp_path), said.append) == str(tmp_path / "checkpoint-2")
    assert [s.split()[0] for s in said] == ["checkpoint-6", "checkpoint-4"]
    assert last_checkpoint(str(tmp_path / "nothing")) is None


def test_a_source_pinned_to_a_dataset_version_reads_that_version(tmp_path):
    """Version v of a root built with 2 images, then grown to 4: a source pinned at v reads
    the rows of the first images only, an unpinned one the latest; the counts record which version was
    read; a version the root does not have is a one-line error."""
    from synthvg.pipeline import run_build
    from synthvg.schemas.config import ConfigError
    from synthvg.storage import Dataset
    from synthvg.train.config import Source
    from synthvg.train.data import SourceCounts, read_rows

    root = tmp_path / "root"
    run_build(demo_config(root, limit=2, shard_size=2))
    pinned = Dataset(str(root)).version()
    run_build(demo_config(root, limit=4, shard_size=2))
    latest = Dataset(str(root)).version()
    assert latest > pinned

    def rows(version):
        src = Source(
            name="s",
            task="scene_graph",
            root=str(root),
            sql="SELECT * FROM relations WHERE stage = ?",
            params=["teacher"],
            version=version,
        )
        counts = SourceCounts("scene_graph")
        con, got = read_rows(src, counts)
        con.close()
        return {r["image_id"] for r in got}, counts.version

    old_images, v_old = rows(pinned)
    new_images, v_new = rows(None)
    assert (v_old, v_new) == (pinned, latest)
    assert old_images and old_images < new_images  # the 2 first images' rows, then more
    with pytest.raises(ConfigError, match=f"source s: .*no version {latest + 7}"):
        rows(latest + 7)
    with pytest.raises(ValueError, match="version pins a dataset root"):
        Source(name="c", task="conversations", path="x.json", version=1)


def test_osprey_region_turns_read_their_masks(engine, tmp_path):
    """Osprey-724K records (file_name, height, width, annotation[].segmentation, conversations):
    'listed' prefixes Osprey's region list (region1<mask><pos>,region2<mask><pos>) and strips
    the brackets of <region1>; 'inline' turns each <regionN> into <mask><pos> of annotation N in
    order of appearance (a region named twice is listed twice). The masks ride with the example
    and the model's forward splices them; bad records are counted."""
    from PIL import Image

    from synthvg import masks as mask_ops
    from synthvg.train.config import Source
    from synthvg.train.data import SourceCounts, conversation_examples
    from synthvg.train.trainer import RobinCollator, RobinDataset

    w, h = 40, 30
    Image.new("RGB", (w, h), (120, 30, 60)).save(tmp_path / "000000000042.jpg")
    square = [[2, 2, 20, 2, 20, 20, 2, 20]]
    strip = {"size": [h, w], "counts": [90, 60, w * h - 150]}  # uncompressed RLE
    anns = [{"segmentation": square}, {"segmentation": strip}]
    base = {"file_name": "COCO_train2014_000000000042.jpg", "height": h, "width": w}
    listed = {
        **base,
        "annotation": anns,
        "conversations": [
            {"from": "human", "value": "What is <region1> doing?"},
            {"from": "gpt", "value": "It sits next to <region2>."},
        ],
    }
    inline = {
        **base,
        "annotation": anns,
        "conversations": [
            {"from": "human", "value": "Is <region2> a cat? And <region1>? And <region2>?"},
            {"from": "gpt", "value": "No."},
        ],
    }
    bad = [
        {**inline, "annotation": [{"segmentation": [[1, 1, 2, 2]]}]},  # not a polygon
        {**inline, "annotation": [anns[0]]},  # <region2> out of range
        {**inline, "annotation": [{"segmentation": [[0, 0, 0, 0, 0, 0]]}]},  # empty mask
        {**inline, "height": None},
        {k: v for k, v in inline.items() if k != "annotation"},
    ]
    tok = Tokeniser(engine.tokenizer, engine.config.image_tokens, 512)
    out = {}
    for style, recs in (("listed", [listed]), ("inline", [inline, *bad])):
        path = tmp_path / f"{style}.json"
        path.write_text(json.dumps(recs))
        src = Source(
            name=style,
            task="conversations",
            path=str(path),
            image_root=str(tmp_path),
            regions=style,
        )
        counts = SourceCounts("conversations")
        out[style] = (conversation_examples(src, tok, counts, {}), counts)
    (ex,), _ = out["listed"]
    text = engine.tokenizer.decode(ex.input_ids)
    assert "region1<mask><pos>,region2<mask><pos>. What is region1 doing?" in text
    assert "It sits next to region2." in text and "<region" not in text
    square_mask, strip_mask = (mask_ops.decode(m) for m in ex.masks)
    assert square_mask.sum() > 0 and strip_mask.sum() == 60 and ex.image.width == w
    (ex2,), counts = out["inline"]
    assert [int(mask_ops.decode(m).sum()) for m in ex2.masks] == [
        60,
        int(square_mask.sum()),
        60,
    ]
    assert engine.tokenizer.decode(ex2.input_ids).count("<mask><pos>") == 3
    assert dict(counts.dropped) == {
        "bad_region_mask": 1,
        "region_reference_out_of_range": 1,
        "empty_mask_region": 1,
        "regions_without_image_size": 1,
        "regions_without_annotation": 1,
    }
    # the masks reach the forward: the loss changes when a mask does
    model = engine.model
    ds = RobinDataset([ex2], model.config.vision_image_size)
    batch = RobinCollator(engine.tokenizer.pad_token_id, model.config.vision_image_size)([ds[0]])
    batch.pop("n_tokens"), batch.pop("example_index")
    with torch.no_grad():
        a = model(**batch).loss
        batch["region_masks"] = [batch["region_masks"][0].flip(-1)]
        b = model(**batch).loss
    assert torch.isfinite(a) and a != b
