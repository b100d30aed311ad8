"""LLaVA-SG: the SGE module and model, its loader, relation data by SQL, the three training
stages through the one training package, held-out relation accuracy, and the trained model
as a VQA verifier of a build."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, build_with_verifier, demo_config, save_tiny_sam

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from synthvg.models.errors import ModelLoadError  # noqa: E402
from synthvg.models.llava_sg.loader import load_llava_sg, save_llava_sg  # noqa: E402
from synthvg.models.llava_sg.modeling import (  # noqa: E402
    PARAMETER_GROUPS,
    LlavaSGForCausalLM,
    node_features,
)
from synthvg.models.llava_sg.prompt import encode, relation_question  # noqa: E402
from synthvg.models.llava_sg.testing import make_model  # noqa: E402
from synthvg.models.robin.prompt import preprocess_image  # noqa: E402

needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed"
)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"llava-sg-{request.param}") / "tiny"
    make_model(str(path), lm=request.param)
    return str(path)


def _inputs(model, tokenizer, n_masks: int, h=40, w=56, seed=0, question=None):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = torch.zeros((n_masks, h, w), dtype=torch.bool)
    for k in range(n_masks):
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        masks[k, y : y + 4 + k % 9, x : x + 4 + k % 7] = True
    ids, labels = encode(
        tokenizer, [(question or relation_question("the person", "the dog"), "next to")], True
    )
    return dict(
        input_ids=torch.tensor([ids]),
        labels=torch.tensor([labels]),
        pixel_values=preprocess_image(rgb, model.config.image_size).pixels[None],
        region_masks=[masks],
    )


def test_the_sequence_is_image_sg_graph_text_and_everything_is_differentiable(model_dir):
    model, tok = load_llava_sg(model_dir)
    model.train()
    batch = _inputs(model, tok, 3)
    ids = batch["input_ids"][0]
    embeds, _, wide = model.embed_batch(
        batch["input_ids"],
        None,
        batch["labels"],
        batch["pixel_values"],
        batch["region_masks"],
        None,
    )
    t, n = model.config.image_tokens, 3
    at_image = int((ids == model.config.image_token_id).nonzero()[0, 0])
    # [.. W_v F_v, <sg>, W_g G' (3), <text>, F_t]: <sg> right after the image tokens, then 3 nodes
    assert embeds.shape[1] == len(ids) - 1 + t + n
    sg = model.get_input_embeddings()(torch.tensor([model.config.sg_token_id]))[0]
    text = model.get_input_embeddings()(torch.tensor([model.config.text_token_id]))[0]
    assert torch.equal(embeds[0, at_image + t], sg)
    assert torch.equal(embeds[0, at_image + t + 1 + n], text)
    assert (wide[0, : at_image + t + 2 + n] == -100).all()  # no label on image, graph or prompt
    assert (wide[0] != -100).sum() == (batch["labels"][0] != -100).sum()
    out = model(**batch)
    out.loss.backward()
    for prefix in ("projector.", "sge.", "graph_projector.", "language_model."):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert all(g is not None for g in grads), prefix


@pytest.mark.parametrize("n", [0, 1, 300])
def test_zero_one_and_hundreds_of_entities_and_an_empty_mask(model_dir, n):
    model, tok = load_llava_sg(model_dir)
    batch = _inputs(model, tok, n)
    if n:
        batch["region_masks"][0][0] = False  # an empty mask among them: a zero node, no error
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert out.logits.shape[1] == batch["input_ids"].shape[1] - 1 + model.config.image_tokens + n


def test_node_features_average_the_bilinear_samples_inside_each_mask():
    # a map linear in x and y: bilinear samples of it are exact, so an interior mask's average
    # is the map's value at the mask's centroid
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)  # 16 c + 4 y + x
    middle = torch.zeros((1, 8, 8), dtype=torch.bool)
    middle[0, 2:6, 2:6] = True  # map coordinates 0.75..2.25: centroid (1.5, 1.5)
    shifted = torch.zeros((1, 8, 8), dtype=torch.bool)
    shifted[0, 2:4, 4:6] = True  # map x 1.75, 2.25 and y 0.75, 1.25: centroid (2.0, 1.0)
    empty = torch.zeros((1, 8, 8), dtype=torch.bool)
    feats = node_features(fmap, torch.cat([middle, shifted, empty]), limit=1000)
    assert torch.allclose(feats[0], torch.tensor([7.5, 23.5]))
    assert torch.allclose(feats[1], torch.tensor([4 * 1.0 + 2.0, 16 + 4 * 1.0 + 2.0]))
    assert torch.equal(feats[2], torch.zeros(2))
    # a wide image is padded to a centred square: its rows map into the middle of the map
    wide = torch.zeros((1, 4, 8), dtype=torch.bool)
    wide[0, :, 2:6] = True  # rows 2..5 of the 8x8 square
    assert torch.allclose(node_features(fmap, wide, 1000)[0], torch.tensor([7.5, 23.5]))
    # hundreds of points are capped, evenly spread: the average barely moves
    assert torch.allclose(node_features(fmap, middle, 4)[0], feats[0], atol=0.6)


def test_ablation_switches(model_dir):
    model, tok = load_llava_sg(model_dir)
    a = _inputs(model, tok, 4, question="What is the relationship between the person and the dog?")
    b = {
        **a,
        **{
            k: v
            for k, v in _inputs(model, tok, 4, question="Is the cup on the table?").items()
            if k in ("input_ids", "labels")
        },
    }
    encoded = model.encode(a["pixel_values"], a["region_masks"])[0]
    prompt_a = model.get_input_embeddings()(a["input_ids"][0, -12:-4])
    prompt_b = model.get_input_embeddings()(b["input_ids"][0, -12:-4])
    nodes = {}
    for mode in ("graph", "message", "prompt"):
        model.config.sge_mode = mode
        nodes[mode] = (model.graph_tokens(encoded, prompt_a), model.graph_tokens(encoded, prompt_b))
    assert torch.equal(*nodes["graph"]) and torch.equal(*nodes["message"])  # prompt not seen
    assert not torch.allclose(*nodes["prompt"])  # the prompt activates the nodes
    assert not torch.allclose(nodes["graph"][0], nodes["message"][0])  # message passing acts
    model.config.sge_mode = "off"
    out = model(**a)
    assert out.logits.shape[1] == a["input_ids"].shape[1] - 1 + model.config.image_tokens


def test_save_load_round_trip_and_key_checks(model_dir, tmp_path):
    model, tok = load_llava_sg(model_dir)
    batch = _inputs(model, tok, 2)
    with torch.no_grad():
        before = model(**batch).logits
    again = tmp_path / "again"
    model.save_pretrained(str(again))
    tok.save_pretrained(str(again))
    reloaded, _ = load_llava_sg(str(again))
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, before)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("sge.prompt_in.")}
    save_llava_sg(model, str(tmp_path / "missing"), tokenizer=tok, state_dict=state)
    with pytest.raises(ModelLoadError, match=r"misses 2 weight\(s\).*sge.prompt_in"):
        load_llava_sg(str(tmp_path / "missing"))
    extra = {**model.state_dict(), "sge.surprise": torch.zeros(2)}
    save_llava_sg(model, str(tmp_path / "extra"), tokenizer=tok, state_dict=extra)
    with pytest.raises(ModelLoadError, match="unexpected key.*sge.surprise"):
        load_llava_sg(str(tmp_path / "extra"))
    shutil.copytree(model_dir, tmp_path / "notok")
    for f in (tmp_path / "notok").glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_llava_sg(str(tmp_path / "notok"))


# -- relation data, training, evaluation, verification on the demo dataset --------------------


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from synthvg.pipeline import run_build

    cfg = demo_config(tmp_path_factory.mktemp("demo") / "root", limit=12)
    run_build(cfg)
    return cfg.out


def test_relation_questions_split_by_image_and_export_as_llava_json(demo_root, tmp_path):
    from synthvg.eval.relations import held_out_questions
    from synthvg.train.relations import split_of, write_llava_json

    assert split_of("img-1", 30) == split_of("img-1", 30)
    test = held_out_questions(demo_root, holdout_percent=30)
    train = held_out_questions(demo_root, holdout_percent=30, split="train")
    assert test and train
    assert not {q.image.image_id for q in test} & {q.image.image_id for q in train}
    assert all(split_of(q.image.image_id, 30) == "test" for q in test)
    q = train[0]
    assert q.question == f"What is the relationship between {q.subject} and {q.object}?"
    assert [r.region_id for r in q.regions[:2]] == [q.subject_id, q.object_id]
    assert len(q.regions) <= 100 and len({r.region_id for r in q.regions}) == len(q.regions)
    options = q.choices(q.answers[0])
    assert q.answers[0] in options and len(set(options)) == len(options)
    assert q.choices(q.answers[0]) == options  # seeded by the pair
    n = write_llava_json(train, str(tmp_path / "rel.json"), form="choice")
    records = json.loads((tmp_path / "rel.json").read_text())
    assert n == len(records) == sum(len(q.answers) for q in train)
    first = records[0]["conversations"]
    assert first[0]["value"].startswith("<image>\n") and re.fullmatch(r"[A-D]", first[1]["value"])
    assert records[0]["entities"][0]["segmentation"]["counts"]


def _stage_config(tmp_path, stage, checkpoint, root, **train) -> Path:
    """configs/train-llava-sg-stage{N}.yaml (the recipe's groups and SGE mode) on the demo."""
    raw = yaml.safe_load((REPO / "configs" / f"train-llava-sg-stage{stage}.yaml").read_text())
    raw["model"].update(checkpoint=checkpoint, bf16=False, gradient_checkpointing=False)
    raw["data"] = {
        "max_length": 512,
        "max_regions": 12,
        "sources": [
            {
                "name": "svg-relations",
                "task": "relation_qa",
                "root": root,
                "view": "svg_relations",
                "split": "train",
                "holdout_percent": 30,
            },
            {
                "name": "svg-relations-choice",
                "task": "relation_choice",
                "root": root,
                "view": "svg_relations",
                "split": "train",
                "holdout_percent": 30,
                "cap": 20,
            },
        ],
    }
    raw["train"] = {
        "output_dir": str(tmp_path / f"stage{stage}"),
        "batch_size": 2,
        "warmup_ratio": 0.0,
        "save_steps": 100,
        "logging_steps": 1,
        "device": "cpu",
        "dataloader_workers": 0,
        **train,
    }
    path = tmp_path / f"stage{stage}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _changed_groups(a: LlavaSGForCausalLM, b: LlavaSGForCausalLM) -> dict[str, set[bool]]:
    """Per parameter group, whether each of its tensors changed."""
    out: dict[str, set[bool]] = {}
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        group = next((g for g, p in PARAMETER_GROUPS.items() if n.startswith(p)), "lm")
        if group == "vision" or not n.startswith(("vision_tower.",)):
            out.setdefault(group, set()).add(not torch.equal(x, y))
    return out


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """The three stages chained on the demo's relation data, one optimiser step each (the
    last two steps, so the model answers): {stage: (before, after) directories}."""
    from synthvg.train.config import load_train_config
    from synthvg.train.trainer import train

    tmp = tmp_path_factory.mktemp("stages")
    start = tmp / "init"
    make_model(str(start))
    dirs, checkpoint = {}, str(start)
    for stage, steps in ((1, 1), (2, 1), (3, 2)):
        cfg = load_train_config(_stage_config(tmp, stage, checkpoint, demo_root, max_steps=steps))
        result = train(cfg, emit=lambda _: None)
        dirs[stage] = (checkpoint, result.export_dir)
        checkpoint = result.export_dir
    return dirs


@needs_accelerate
def test_after_one_step_exactly_the_stage_parameters_changed(trained):
    expected = {
        1: {"projector"},  # W_v only, no SGE
        2: {"sge", "graph_projector"},  # the SGE module and W_g only
        3: {"projector", "sge", "graph_projector", "lm"},  # all but the vision encoder
    }
    for stage, (before, after) in trained.items():
        a, _ = load_llava_sg(before)
        b, _ = load_llava_sg(after)
        changed = _changed_groups(a, b)
        for group, flags in changed.items():
            if group in expected[stage]:
                assert flags == {True}, (stage, group)  # every tensor of the group moved
            else:
                assert flags == {False}, (stage, group)
        manifest = json.loads((Path(after) / "training.json").read_text())
        assert manifest["config"]["model"]["kind"] == "llava_sg"
    assert load_llava_sg(trained[1][1])[0].config.sge_mode == "off"
    assert load_llava_sg(trained[2][1])[0].config.sge_mode == "prompt"


@needs_accelerate
def test_held_out_relation_accuracy_by_cli(trained, demo_root, tmp_path):
    from typer.testing import CliRunner

    from synthvg.cli import app

    export = trained[3][1]
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "relations",
            "--model",
            export,
            "--root",
            demo_root,
            "--holdout-percent",
            "30",
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "eval" / "relations-qa.json").read_text())
    assert report["questions"] > 0 and 0 <= report["accuracy"] <= 1
    assert report["correct"] == sum(c["correct"] for c in report["per_predicate"].values())
    assert "majority baseline" in res.output and "chance" in res.output
    bad = CliRunner().invoke(
        app, ["evaluate", "relations", "--model", str(tmp_path), "--root", demo_root]
    )
    assert bad.exit_code == 2 and "config.json" in bad.output


def test_accuracy_counts_right_answers_of_any_model_through_the_protocol(demo_root):
    from synthvg.eval.relations import evaluate_relations, held_out_questions

    questions = held_out_questions(demo_root, holdout_percent=30)
    # the first two entities are the pair: with the question, they identify it
    truth = {
        (q.question, q.regions[0].mask.counts, q.regions[1].mask.counts): q.answers
        for q in questions
    }

    def key(regions, question):
        return (question, regions[0].counts, regions[1].counts)

    class Oracle:
        name = "oracle"

        def answer(self, image, regions, question, choices):
            assert image.size and set(truth[key(regions, question)]) <= set(choices)
            return truth[key(regions, question)][0]

    class Wrong:
        name = "wrong"

        def answer(self, image, regions, question, choices):
            return next(c for c in choices if c not in truth[key(regions, question)])

    assert evaluate_relations(Oracle(), questions).accuracy == 1.0
    assert evaluate_relations(Wrong(), questions).accuracy == 0.0
    with pytest.raises(ValueError, match="form"):
        evaluate_relations(Oracle(), questions, form="essay")


@needs_accelerate
def test_a_trained_llava_sg_verifies_relations_in_a_build(trained, tmp_path, monkeypatch):
    export = trained[3][1]
    verifier = {"kind": "llava_sg", "path": export, "device": "cpu"}
    _, rows = build_with_verifier(tmp_path / "root", verifier, monkeypatch)
    assert rows
    name = f"vqa:{Path(export).name}"
    for verdict, score, by, reason in rows:
        assert by == name and 0.0 <= score <= 1.0
        assert verdict == ("kept" if score >= 0.5 else "dropped")
        assert f"{name} P(yes)=" in reason


def test_training_configs_validate_and_the_stages_train_what_the_paper_says():
    from synthvg.schemas.config import ConfigError
    from synthvg.train.config import load_train_config

    groups = {
        n: load_train_config(REPO / "configs" / f"train-llava-sg-stage{n}.yaml").learning_rates()
        for n in (1, 2, 3)
    }
    assert groups[1] == {
        "vision": None,
        "projector": 2e-3,
        "sge": None,
        "graph_projector": None,
        "lm": None,
    }
    assert groups[2] == {
        "vision": None,
        "projector": None,
        "sge": 2e-5,
        "graph_projector": 2e-5,
        "lm": None,
    }
    assert groups[3] == {
        "vision": None,
        "projector": 2e-5,
        "sge": 2e-5,
        "graph_projector": 2e-5,
        "lm": 2e-5,
    }
    tiny = load_train_config(REPO / "configs" / "train-llava-sg-tiny-stage2.yaml")
    assert tiny.model.kind == "llava_sg" and tiny.train.device == "cpu"
    raw = yaml.safe_load((REPO / "configs" / "train-llava-sg-tiny-stage2.yaml").read_text())
    raw["data"]["sources"][0]["task"] = "scene_graph"
    bad = Path(REPO / "build" / "_bad_llava.yaml")
    bad.parent.mkdir(exist_ok=True)
    try:
        bad.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match="model kind llava_sg trains on tasks"):
            load_train_config(bad)
        raw["data"]["sources"][0]["task"] = "relation_qa"
        raw["groups"]["mask_extractor"] = 1e-4
        bad.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError, match="mask_extractor"):
            load_train_config(bad)
    finally:
        bad.unlink(missing_ok=True)


# -- entities: the dataset's regions, or tagger -> open-vocabulary detector -> SAM boxes ------


def _tiny_owlv2(path: Path) -> None:
    """A random OWLv2 with a character-level CLIP tokenizer (index 0 unused: OWL masks it)."""
    from transformers import (
        CLIPTokenizerFast,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    tok = CLIPTokenizerFast(vocab=vocab, merges=[], model_max_length=16)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg = Owlv2Config(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=16,
            bos_token_id=1,
            eos_token_id=2,
            **small,
        ),
        vision_config=dict(image_size=64, patch_size=16, **small),
        projection_dim=32,
    )
    torch.manual_seed(0)
    Owlv2ForObjectDetection(cfg).save_pretrained(path)
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tok
    ).save_pretrained(path)


def test_entities_from_regions_and_from_the_perception_chain_feed_the_model(
    demo_root, model_dir, tmp_path
):
    from PIL import Image

    from synthvg.image_files import to_rgb
    from synthvg.models.llava_sg.entities import (
        LabelTagger,
        OpenVocabDetector,
        PerceptionChain,
        SamBoxSegmenter,
        dataset_entities,
    )
    from synthvg.models.llava_sg.inference import LlavaSGEngine
    from synthvg.stages.seeds import read_image
    from synthvg.storage import connect

    image_id, uri = (
        connect(demo_root)
        .execute("SELECT image_id, file_uri FROM images ORDER BY image_id LIMIT 1")
        .fetchone()
    )
    regions = dataset_entities(demo_root, image_id)
    proposals = dataset_entities(demo_root, image_id, table="proposals")
    assert regions and proposals and all(e.mask.size for e in regions)
    with pytest.raises(ValueError, match="regions or proposals"):
        dataset_entities(demo_root, image_id, table="relations")
    image = Image.fromarray(to_rgb(read_image(uri)[1]))
    _tiny_owlv2(tmp_path / "owl")
    save_tiny_sam(tmp_path / "sam")
    tagger = LabelTagger.from_root(demo_root)
    assert tagger.tags(image, image_id) == sorted({e.label for e in regions})
    detector = OpenVocabDetector(str(tmp_path / "owl"), threshold=0.0)
    chain = PerceptionChain(
        tagger, detector, SamBoxSegmenter(str(tmp_path / "sam")), max_entities=5
    )
    found = chain.entities(image, image_id)
    assert 0 < len(found) <= 5 and {e.label for e in found} <= set(tagger.tags(image, image_id))
    for e in found:
        assert tuple(e.mask.size) == (image.height, image.width)
        assert 0 <= e.box.x1 <= e.box.x2 <= image.width
    assert chain.entities(image, "not-an-image") == []  # no tags, no entities
    with pytest.raises(ModelLoadError, match="not SAM"):
        SamBoxSegmenter(str(tmp_path / "owl"))
    engine = LlavaSGEngine(model_dir)
    answer = engine.answer(
        image, [e.mask for e in found], "What is the relationship between a and b?", ["on", "near"]
    )
    assert answer in ("on", "near")
