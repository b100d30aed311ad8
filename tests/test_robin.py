"""Robin without weights: a tiny random Robin saved in the released layout and loaded back
through the real loader; key mapping, feature splicing, batched == single generation, both
modes, long prompts, bad checkpoints, and the stage inside a build."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from helpers import demo_config, table_rows  # noqa: E402

from synthvg.models.errors import ModelLoadError  # noqa: E402
from synthvg.models.robin.graphs import ImageJob, RegionInput, RobinGraphs  # noqa: E402
from synthvg.models.robin.inference import Generation, RobinCall, RobinEngine, RobinImage, Sampling  # noqa: E402
from synthvg.models.robin.loader import load_robin  # noqa: E402
from synthvg.models.robin.modeling import RobinForCausalLM  # noqa: E402
from synthvg.models.robin.prompt import (  # noqa: E402
    CLIP_MEAN,
    CLIP_STD,
    HOLISTIC_QUESTION,
    PAD_COLOUR,
    chatml,
    first_message,
    preprocess_image,
)
from synthvg.models.robin.testing import make_checkpoint, robin_3b_config  # noqa: E402
from synthvg.models.robin.writer import save_released  # noqa: E402

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("robin") / "robin-tiny"
    make_checkpoint(str(path))
    return str(path)


@pytest.fixture(scope="module")
def engine(ckpt):
    return RobinEngine(
        ckpt,
        device=torch.device("cpu"),
        lm_dtype=torch.float32,
        vision_dtype=torch.float32,
        batch_size=4,
    )


def _image(h: int, w: int, seed: int = 0, n: int = 3) -> RobinImage:
    rng = np.random.default_rng(seed)
    masks, boxes = [], []
    for i in range(n):
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        m[y0 : y0 + h // 3 + i, x0 : x0 + w // 3 + i] = True
        ys, xs = np.nonzero(m)
        masks.append(m)
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    return RobinImage(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), masks, boxes)


def _holistic_call(
    image: RobinImage, index: int, regions: list[int], max_new_tokens: int = 10
) -> RobinCall:
    h, w = image.rgb.shape[:2]
    msg = first_message([image.boxes[r] for r in regions], w, h, HOLISTIC_QUESTION)
    return RobinCall(index, regions, [(msg, None)], max_new_tokens)


# ---- the release's prompt and preprocessing -------------------------------------------------------


def test_prompt_is_the_release_text():
    msg = first_message([(10, 20, 50, 50), (0, 0, 99.9, 49.9)], 100, 50, HOLISTIC_QUESTION)
    assert msg == (
        "<image>\nThis provides an overview of the picture.\nThere are 2 regions in the image: "
        "region1 <mask><pos> <|box_start|>(100,400),(500,1000)<|box_end|>, "
        "region2 <mask><pos> <|box_start|>(0,0),(999,998)<|box_end|>.\n "
        "Generate an extremely detailed scene graph for given regions."
    )
    assert chatml([("hi", "yo"), ("more", None)]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"
    )


def test_pad_preprocessing_centres_the_image_on_the_mean_colour():
    rgb = np.full((2, 8, 3), 255, np.uint8)  # wide: padded above and below
    px = preprocess_image(rgb, 8).pixels
    assert px.shape == (3, 8, 8)
    pad = [(c / 255 - m) / s for c, m, s in zip(PAD_COLOUR, CLIP_MEAN, CLIP_STD, strict=True)]
    white = [(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    assert torch.allclose(px[:, 0, 0], torch.tensor(pad), atol=0.03)  # top rows: padding
    assert torch.allclose(px[:, 4, 4], torch.tensor(white), atol=0.03)  # middle rows: the image
    assert torch.allclose(px[:, 7, 0], torch.tensor(pad), atol=0.03)


# ---- the module tree is the release's --------------------------------------------------------------


def test_full_size_module_tree_matches_the_documented_release_keys():
    with torch.device("meta"):
        model = RobinForCausalLM(robin_3b_config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    vis = "model.vision_tower.vision_tower.visual.trunk."
    assert shapes["model.mm_projector.0.weight"] == (2048, 768) and shapes[
        "model.mm_projector.2.weight"
    ] == (2048, 2048)
    assert [shapes[f"mask_extractor.res{i}.weight"] for i in (2, 3, 4, 5)] == [
        (1024, 192),
        (1024, 384),
        (1024, 768),
        (1024, 1536),
    ]
    assert shapes["mask_extractor.feat_linear.weight"] == (2048, 1024)
    assert [shapes[f"mask_extractor.mask_linear.layers.{i}.weight"] for i in range(3)] == [
        (1024, 12544),
        (1024, 1024),
        (2048, 1024),
    ]
    assert (
        shapes[vis + "stages.2.blocks.26.gamma"] == (768,)
        and vis + "stages.2.blocks.27.gamma" not in shapes
    )
    assert (
        shapes[vis + "stages.3.downsample.1.weight"] == (1536, 768, 2, 2)
        and vis + "head.norm.weight" in shapes
    )
    assert (
        shapes["model.layers.35.self_attn.k_proj.weight"] == (256, 2048)
        and "model.layers.36.mlp.up_proj.weight" not in shapes
    )
    assert shapes["model.embed_tokens.weight"] == (151936, 2048)


def test_vision_trunk_has_open_clip_convnext_large_d_320_keys():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIPVisionCfg, _build_vision_tower

    from synthvg.models.robin.modeling import (
        CONVNEXT_LARGE_DEPTHS,
        CONVNEXT_LARGE_DIMS,
        ConvNeXtVisual,
    )

    cfg = open_clip.get_model_config("convnext_large_d_320")
    with torch.device("meta"):
        theirs = _build_vision_tower(
            cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"])
        ).state_dict()
        ours = ConvNeXtVisual(CONVNEXT_LARGE_DEPTHS, CONVNEXT_LARGE_DIMS).state_dict()
    theirs = {k: tuple(v.shape) for k, v in theirs.items() if not k.startswith("head.")}
    assert {k: tuple(v.shape) for k, v in ours.items()} == theirs


# ---- loading -------------------------------------------------------------------------------------


def test_loader_maps_keys_ties_embeddings_and_reports(ckpt):
    model, tokenizer, report = load_robin(ckpt)
    assert report.layer_scale == "gamma" and report.tied_lm_head and not report.unexpected
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    files = json.load(open(os.path.join(ckpt, "model.safetensors.index.json")))["weight_map"]
    assert len(set(files.values())) == 2 and "mask_extractor.res2.weight" in files


def test_both_layer_scale_spellings_load_and_gamma_wins(ckpt, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    reference, _, _ = load_robin(ckpt)
    gamma = {k: v for k, v in reference.state_dict().items() if k.endswith(".gamma")}
    renamed = str(tmp_path / "renamed")
    make_checkpoint(renamed, layer_scale="weight")  # same seed: the same weights, 4.43 spelling
    model, _, report = load_robin(renamed)
    assert report.layer_scale == "weight"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in gamma.items())

    both = str(tmp_path / "both")
    shutil.copytree(ckpt, both)
    shard = os.path.join(both, "model-00001-of-00002.safetensors")
    state = load_file(shard)
    state.update({k[: -len("gamma")] + "weight": torch.zeros_like(v) for k, v in gamma.items()})
    save_file(state, shard)
    index = json.load(open(os.path.join(both, "model.safetensors.index.json")))
    index["weight_map"].update(
        {k[: -len("gamma")] + "weight": "model-00001-of-00002.safetensors" for k in gamma}
    )
    json.dump(index, open(os.path.join(both, "model.safetensors.index.json"), "w"))
    with caplog.at_level(logging.INFO, logger="synthvg"):
        model, _, report = load_robin(both)
    assert report.layer_scale == "gamma" and "had both spellings" in caplog.text
    assert all(torch.equal(model.state_dict()[k], v) for k, v in gamma.items())


def test_missing_and_unexpected_keys_are_errors(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    def variant(name, edit):
        path = str(tmp_path / name)
        shutil.copytree(ckpt, path)
        shard = os.path.join(path, "model-00002-of-00002.safetensors")
        state = load_file(shard)
        edit(state)
        save_file(state, shard)
        return path

    missing = variant(
        "missing", lambda s: s.pop(next(k for k in s if k.startswith("mask_extractor.")))
    )
    with pytest.raises(ModelLoadError, match=r"misses 1 weight\(s\): \['mask_extractor\."):
        load_robin(missing)
    extra = variant(
        "extra", lambda s: s.__setitem__("model.some_new_module.weight", torch.zeros(2))
    )
    with pytest.raises(ModelLoadError, match="unexpected key.*some_new_module"):
        load_robin(extra)
    load_robin(extra, allow_unexpected_keys=True)
    bad_shape = variant(
        "shape",
        lambda s: s.__setitem__(
            next(k for k in s if k.startswith("model.mm_projector.")), torch.zeros(3, 3)
        ),
    )
    with pytest.raises(ModelLoadError, match="do not fit its config"):
        load_robin(bad_shape)


def test_bad_checkpoint_directories_are_clear_errors(ckpt, tmp_path):
    with pytest.raises(ModelLoadError, match="directory not found"):
        load_robin(str(tmp_path / "nope"))
    no_shard = str(tmp_path / "no_shard")
    shutil.copytree(ckpt, no_shard)
    os.remove(os.path.join(no_shard, "model-00002-of-00002.safetensors"))
    with pytest.raises(ModelLoadError, match="misses shard"):
        load_robin(no_shard)
    not_robin = str(tmp_path / "not_robin")
    shutil.copytree(ckpt, not_robin)
    cfg = json.load(open(os.path.join(not_robin, "config.json")))
    cfg = {k: v for k, v in cfg.items() if k != "mm_projector_type"} | {"model_type": "llama"}
    json.dump(cfg, open(os.path.join(not_robin, "config.json"), "w"))
    with pytest.raises(ModelLoadError, match="not a Robin config"):
        load_robin(not_robin)
    no_tok = str(tmp_path / "no_tok")
    shutil.copytree(ckpt, no_tok)
    os.remove(os.path.join(no_tok, "tokenizer.json"))
    with pytest.raises(ModelLoadError, match="tokenizer"):
        load_robin(no_tok)


# ---- features and generation ----------------------------------------------------------------------


def test_region_features_land_on_mask_and_pos_tokens_and_image_tokens_on_image(engine):
    image = _image(40, 56)
    call = _holistic_call(image, 0, [2, 0])
    (encoded,) = engine.encode([image])
    ids = engine.prompt_ids(call.turns)
    emb = engine.embed(ids, call, encoded)
    image_tokens, mask_feats, pos_feats = encoded
    at = ids.index(engine.image_id)
    n_img = engine.config.image_tokens
    assert emb.shape[0] == engine.prompt_length(ids) == len(ids) - 1 + n_img
    assert torch.equal(emb[at : at + n_img], image_tokens)
    spliced = [i if i < at else i - 1 + n_img for i in range(len(ids))]
    mask_at = [spliced[i] for i, t in enumerate(ids) if t == engine.mask_id]
    pos_at = [spliced[i] for i, t in enumerate(ids) if t == engine.pos_id]
    assert [p - m for m, p in zip(mask_at, pos_at, strict=True)] == [
        1,
        1,
    ]  # <pos> right after <mask>
    assert torch.equal(emb[mask_at[0]], mask_feats[2]) and torch.equal(
        emb[mask_at[1]], mask_feats[0]
    )
    assert torch.equal(emb[pos_at[0]], pos_feats[2]) and torch.equal(emb[pos_at[1]], pos_feats[0])
    text = engine.model.get_input_embeddings()(torch.tensor(ids))
    assert torch.equal(emb[0], text[0]) and torch.equal(emb[-1], text[-1])


def test_mask_pooling_averages_inside_the_mask_and_an_empty_mask_keeps_only_biases(engine):
    model = engine.model
    image = _image(32, 32)
    feats, _ = model.encode_images(
        preprocess_image(image.rgb, engine.config.vision_image_size).pixels[None]
    )
    feats = [f[0] for f in feats]
    full, empty = torch.ones(1, 32, 32), torch.zeros(1, 32, 32)
    with torch.no_grad():
        got, _ = model.mask_extractor(feats, torch.cat([full, empty]))
        ext = model.mask_extractor
        mean = sum(getattr(ext, f"res{i + 2}")(f.mean(dim=(1, 2))) for i, f in enumerate(feats))
        biases = sum(getattr(ext, f"res{i + 2}").bias for i in range(4))
    assert torch.allclose(got[0], ext.feat_linear(mean), atol=1e-5)
    assert torch.allclose(got[1], ext.feat_linear(biases), atol=1e-6)


def test_batched_generation_equals_one_call_at_a_time_with_greedy_decoding(engine):
    images = [_image(40, 56, 1), _image(64, 30, 2, n=5), _image(48, 48, 3, n=1)]
    calls = [
        _holistic_call(images[0], 0, [0, 1, 2], 12),
        _holistic_call(
            images[1], 1, [4, 3, 2, 1, 0], 12
        ),  # the longest prompt: the others are padded
        _holistic_call(images[2], 2, [0], 7),
        _holistic_call(images[0], 0, [1], 12),
    ]
    batched = engine.generate(images, calls, GREEDY)
    single = [
        engine.generate(
            [images[c.image]], [RobinCall(0, c.regions, c.turns, c.max_new_tokens)], GREEDY
        )[0]
        for c in calls
    ]
    assert all(isinstance(g, Generation) for g in batched)
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert len({tuple(g.token_ids) for g in batched}) > 1  # the regions and images matter
    assert batched[2].new_tokens <= 7


def test_a_prompt_over_the_limit_is_refused_not_cut(ckpt):
    small = RobinEngine(
        ckpt,
        device=torch.device("cpu"),
        lm_dtype=torch.float32,
        vision_dtype=torch.float32,
        max_prompt_tokens=140,
    )
    image = _image(40, 40, n=8)
    ok, too_long = small.generate(
        [image],
        [_holistic_call(image, 0, [0], 3), _holistic_call(image, 0, list(range(8)), 3)],
        GREEDY,
    )
    assert isinstance(ok, Generation) and "limit is 140" in str(too_long)


# ---- the two modes, planning --------------------------------------------------------------------


class ScriptedEngine(RobinEngine):
    """The real engine (loading, encoding, splicing, batching) with the LM's text scripted:
    the tiny random model writes noise, and the modes' bookkeeping needs real answers."""

    def __init__(self, ckpt, script, **kw):
        super().__init__(
            ckpt,
            device=torch.device("cpu"),
            lm_dtype=torch.float32,
            vision_dtype=torch.float32,
            **kw,
        )
        self.script, self.prompts = script, []

    def _generate(self, embeds, limits, sampling):
        out = []
        for e, _limit in zip(embeds, limits, strict=True):
            self.prompts.append(e.shape[0])
            text = self.script(self)
            out.append(
                Generation(
                    text,
                    e.shape[0],
                    5,
                    True,
                    self.tokenizer(text, add_special_tokens=False)["input_ids"],
                )
            )
        return out


def _job(image_id: str, image: RobinImage, ids: list[int]) -> ImageJob:
    return ImageJob(
        image_id,
        image.rgb,
        [
            RegionInput(rid, lambda m=m: m, b, float(m.sum()))
            for rid, m, b in zip(ids, image.masks, image.boxes, strict=True)
        ],
    )


def test_holistic_mode_maps_region_numbers_to_region_ids(ckpt):
    answer = "Objects:\nregion1: a red cup\nregion2: a table\nregion3: a cat\n\nRelations:\nregion1: region2 on, region4 near\nregion3: region3 is, region1 next to"
    eng = ScriptedEngine(ckpt, lambda e: answer)
    graphs = RobinGraphs(
        eng,
        mode="holistic",
        sampling=GREEDY,
        max_new_tokens=50,
        description_max_tokens=20,
        max_regions=10,
    )
    image = _image(40, 40, n=3)
    job = _job("img:1", image, [7, 3, 5])
    (graph,) = graphs.run([job])
    order = [
        r.region_id for r in sorted(job.regions, key=lambda r: (-r.area, r.region_id))
    ]  # largest first
    assert graph.descriptions == {order[0]: "a red cup", order[1]: "a table", order[2]: "a cat"}
    assert graph.relations == [(order[0], order[1], "on"), (order[2], order[0], "next to")]
    (call,) = graph.calls
    assert call.turn == "scene_graph" and call.region_ids == order
    assert any("region4" in p for p in call.problems) and any("self" in p for p in call.problems)


def test_per_region_mode_asks_two_turns_with_the_description_in_the_history(ckpt):
    seen, answered = [], []

    def script(engine):
        answered.append(1)
        return "a small dog" if len(answered) <= 2 else "region1 beside, region2 chasing"

    eng = ScriptedEngine(ckpt, script)
    original = eng.prompt_ids

    def spy(turns):
        seen.append(turns)
        return original(turns)

    eng.prompt_ids = spy
    graphs = RobinGraphs(
        eng,
        mode="per_region",
        sampling=GREEDY,
        max_new_tokens=50,
        description_max_tokens=20,
        max_regions=10,
    )
    image = _image(40, 40, n=2)
    (graph,) = graphs.run([_job("img:1", image, [0, 1])])
    asked = [t for t in seen if len(t) == 2 and t[0][1]]  # (planning asks with an empty answer)
    assert [t[1][0] for t in asked] == [
        "Generate list of relationships for: region1.",
        "Generate list of relationships for: region2.",
    ]
    dog = eng.tokenizer("a small dog", add_special_tokens=False)["input_ids"]
    assert all(
        t[0][1] == dog and t[0][0].endswith(f"Generate a description for: region{t[1][0][-2]}.")
        for t in asked
    )
    assert graph.descriptions == {0: "a small dog", 1: "a small dog"}
    # region1 is region id 1 (the larger mask): its "region1 beside" is a self-loop, dropped
    assert sorted(graph.relations) == [(0, 1, "beside"), (1, 0, "chasing")]
    assert [c.turn for c in graph.calls] == ["description"] * 2 + ["relationships"] * 2


def test_many_regions_are_split_into_prompts_that_fit_and_capped(ckpt):
    eng = ScriptedEngine(ckpt, lambda e: "Objects:\nregion1: x", max_prompt_tokens=400)
    graphs = RobinGraphs(
        eng,
        mode="holistic",
        sampling=GREEDY,
        max_new_tokens=10,
        description_max_tokens=10,
        max_regions=250,
    )
    image = _image(60, 60, n=300)
    job = _job("img:many", image, list(range(300)))
    groups, capped, unfit = graphs.plan(job)
    assert len(capped) == 50 and not unfit and len(groups) > 1
    assert (
        sum(len(g) for g in groups) == 250 and len({r.region_id for g in groups for r in g}) == 250
    )
    (graph,) = graphs.run([job])
    assert len(graph.calls) == len(groups) and max(eng.prompts) <= 400
    assert all(len(c.region_ids) == len(g) for c, g in zip(graph.calls, groups, strict=True))
    # a limit no single region fits in: every region is reported, nothing runs
    tight = RobinGraphs(
        ScriptedEngine(ckpt, lambda e: "", max_prompt_tokens=64),
        mode="holistic",
        sampling=GREEDY,
        max_new_tokens=10,
        description_max_tokens=10,
        max_regions=5,
    )
    groups, capped, unfit = tight.plan(_job("img:2", _image(20, 20, n=3), [0, 1, 2]))
    assert groups == [] and sorted(unfit) == [0, 1, 2]


def test_save_released_writes_the_index_for_every_key(tmp_path):
    from synthvg.models.robin.testing import tiny_config

    model = RobinForCausalLM(tiny_config(300))
    save_released(model, str(tmp_path), shards=3)
    index = json.load(open(tmp_path / "model.safetensors.index.json"))["weight_map"]
    assert (
        set(index) == set(model.state_dict()) - {"lm_head.weight"} and len(set(index.values())) == 3
    )


# ---- the stage in a build -------------------------------------------------------------------------


def _robin_build(tmp_path, ckpt, **robin):
    from synthvg.pipeline import run_build

    cfg = demo_config(
        tmp_path / "root",
        limit=3,
        shard_size=2,
        robin={
            "backend": "robin",
            "checkpoint": ckpt,
            "max_new_tokens": 8,
            "description_max_tokens": 4,
            **robin,
        },
    )
    return cfg, run_build(cfg)


@pytest.mark.parametrize("mode", ["holistic", "per_region"])
def test_build_with_a_robin_checkpoint_runs_the_stage(tmp_path, ckpt, mode):
    from synthvg.storage import connect

    cfg, run = _robin_build(tmp_path, ckpt, mode=mode, max_regions=4)
    assert cfg.robin.backend == "robin"
    con = connect(cfg.out)
    turns = dict(con.execute("SELECT turn, count(*) FROM generations GROUP BY turn").fetchall())
    per_image = con.execute("SELECT count(DISTINCT image_id) FROM generations").fetchone()[0]
    assert per_image == 3
    if mode == "holistic":
        assert turns == {"scene_graph": 3}
    else:
        listed = con.execute(
            "SELECT DISTINCT image_id, len(region_ids) FROM generations"
        ).fetchall()
        assert len(listed) == 3 and max(n for _, n in listed) == 4  # max_regions
        assert (
            turns["description"] == turns["relationships"] == sum(n for _, n in listed)
        )  # two turns per region
    row = con.execute(
        "SELECT model, prompt_version, prompt_tokens, new_tokens FROM generations LIMIT 1"
    ).fetchone()
    assert (
        row[0] == "robin-tiny"
        and row[1] == f"robin/{mode}@release-v1"
        and row[2] > 16
        and 1 <= row[3] <= 8
    )
    capped = con.execute(
        "SELECT count(*) FROM errors WHERE stage = 'robin' AND kind = 'regions_capped'"
    ).fetchone()[0]
    assert capped >= 1  # demo images have more than 4 regions
    (summary,) = [st for st in run.stages if st.stage == "robin"]
    assert summary.status == "done" and summary.rows_out.get("generations", 0) >= 3


def test_robin_rows_written_by_a_build_are_queryable(tmp_path, ckpt, monkeypatch):
    answer = "Objects:\nregion1: a person\nregion2: a thing\n\nRelations:\nregion1: region2 holding, region2 holding"
    monkeypatch.setattr(
        RobinEngine,
        "_generate",
        lambda self, embeds, limits, s: [
            Generation(answer, e.shape[0], 9, True, [1]) for e in embeds
        ],
    )
    cfg, _ = _robin_build(tmp_path, ckpt)
    from synthvg.storage import connect

    con = connect(cfg.out)
    listed = con.execute("SELECT image_id, len(region_ids) FROM generations").fetchall()
    robin = [r for r in table_rows(cfg.out, "relations") if "robin" in r]
    assert len(robin) == sum(n >= 2 for _, n in listed) >= 2  # one per image: the duplicate dropped
    got = con.execute(
        "SELECT predicate, category, generator, model FROM relations WHERE stage = 'robin' LIMIT 1"
    ).fetchone()
    assert got == ("holding", "interactional", "model", "robin-tiny")
    assert con.execute("SELECT count(*) FROM descriptions WHERE stage = 'robin'").fetchone()[
        0
    ] == sum(min(n, 2) for _, n in listed)
    problems = con.execute(
        "SELECT problems FROM generations WHERE len(region_ids) >= 2 LIMIT 1"
    ).fetchone()[0]
    assert any("duplicate" in p for p in problems)


def test_broken_images_and_checkpoints_are_recorded_not_fatal(tmp_path, ckpt):
    from helpers import TINYCOCO

    from synthvg.pipeline import run_build
    from synthvg.storage import connect

    data = tmp_path / "tinycoco"
    shutil.copytree(TINYCOCO, data)
    sources = [
        {
            "kind": "coco",
            "annotations": str(data / "annotations" / "instances_val2017.json"),
            "images": str(data / "images" / "val2017"),
        }
    ]
    cfg = demo_config(
        tmp_path / "root",
        limit=3,
        shard_size=3,
        seeds={"sources": sources},
        robin={"backend": "robin", "checkpoint": ckpt, "max_new_tokens": 4, "max_regions": 3},
    )
    run_build(
        cfg.model_copy(update={"robin": demo_config(tmp_path, robin={"backend": "none"}).robin})
    )
    first = (
        connect(cfg.out)
        .execute("SELECT file_uri FROM images ORDER BY image_id LIMIT 1")
        .fetchone()[0]
    )
    open(first.removeprefix("file://"), "wb").write(b"not a jpeg")
    run = run_build(cfg)
    con = connect(cfg.out)
    kinds = dict(
        con.execute(
            "SELECT kind, count(*) FROM errors WHERE stage = 'robin' GROUP BY kind"
        ).fetchall()
    )
    assert kinds.get("bad_image") == 1
    assert con.execute("SELECT count(DISTINCT image_id) FROM generations").fetchone()[0] == 2
    assert [st.status for st in run.stages if st.stage == "robin"] == ["done"]
    bad = cfg.model_copy(
        update={"robin": cfg.robin.model_copy(update={"checkpoint": str(tmp_path / "missing")})}
    )
    (summary,) = [st for st in run_build(bad).stages if st.stage == "robin"]
    assert summary.status == "failed" and summary.shards_failed == 1


def test_a_checkpoint_alone_selects_robin_and_speed_settings_keep_the_fingerprint(tmp_path, ckpt):
    from synthvg.pipeline import fingerprints
    from synthvg.schemas.config import load_config
    from synthvg.stages import RobinStage, ShardSpec

    yaml = tmp_path / "b.yaml"
    yaml.write_text(
        f"out: out\nseeds: {{sources: [{{annotations: a.json, images: i}}]}}\nrobin: {{checkpoint: {ckpt}}}\n"
    )
    cfg = load_config(yaml)
    assert (
        cfg.robin.backend == "robin"
        and cfg.robin.mode == "holistic"
        and RobinStage.skip_reason(cfg) is None
    )
    assert RobinStage.skip_reason(load_config(yaml, robin={"backend": "none"})) is not None
    shard = ShardSpec(index=0, image_ids=["coco:1"])
    fp = fingerprints(cfg, shard)["robin"]
    faster = cfg.model_copy(
        update={"robin": cfg.robin.model_copy(update={"batch_size": 64, "device": "cuda"})}
    )
    other = cfg.model_copy(update={"robin": cfg.robin.model_copy(update={"mode": "per_region"})})
    assert fingerprints(faster, shard)["robin"] == fp != fingerprints(other, shard)["robin"]


def test_the_editor_refines_robin_graphs_into_svg_full(tmp_path, ckpt, monkeypatch):
    """SG-EDIT's acceptance: ``edit: {backend: openai, source: robin}`` over Robin's graphs."""
    from edit_scripts import KEY, KEY_ENV, edit_config, graph_in, scripted_editor

    from synthvg.llm.testing import FakeOpenAIServer
    from synthvg.pipeline import run_build
    from synthvg.storage import connect

    answer = "Objects:\nregion1: a person in blue\nregion2: a chair\n\nRelations:\nregion1: region2 sitting on"
    monkeypatch.setattr(
        RobinEngine,
        "_generate",
        lambda self, embeds, limits, s: [
            Generation(answer, e.shape[0], 9, True, [1]) for e in embeds
        ],
    )
    monkeypatch.setenv(KEY_ENV, KEY)
    with FakeOpenAIServer(responder=scripted_editor) as server:
        cfg = edit_config(tmp_path / "root", server, limit=3, shard_size=3, source="robin")
        cfg = cfg.model_copy(
            update={
                "robin": demo_config(tmp_path, robin={"backend": "robin", "checkpoint": ckpt}).robin
            }
        )
        run_build(cfg)
        shown = [graph_in(r) for r in server.chat_requests if "Scene graph" in str(r)]
    with_two = [g for g in shown if len(g) >= 2]
    assert with_two and all(
        any("sitting on" in o["rel"] for o in g.values()) for g in with_two
    )  # Robin's relations
    assert all(
        any(o["name"] == "a person in blue" for o in g.values()) for g in shown
    )  # and Robin's descriptions
    con = connect(cfg.out)
    log = con.execute("SELECT DISTINCT source FROM edits").fetchall()
    assert log == [("robin",)]
    assert (
        con.execute("SELECT count(*) FROM edits WHERE applied AND action = 'add'").fetchone()[0]
        >= 1
    )
    final = con.execute("SELECT predicate, count(*) FROM svg_full GROUP BY 1").fetchall()
    assert dict(final).get("looking at", 0) >= 1  # the editor's additions are in SVG-FULL


def test_the_second_turn_carries_the_generated_tokens_and_always_fits(engine):
    """Per-region mode puts the description's token ids (not re-tokenised text) in the
    history, so the room the planner reserved (description_max_tokens) always suffices."""
    graphs = RobinGraphs(
        engine,
        mode="per_region",
        sampling=Sampling(temperature=1.0, seed=3),
        max_new_tokens=6,
        description_max_tokens=40,
        max_regions=10,
    )
    engine.max_prompt_tokens, saved = 420, engine.max_prompt_tokens
    try:
        (graph,) = graphs.run([_job("img:noise", _image(50, 50, n=6), list(range(6)))])
    finally:
        engine.max_prompt_tokens = saved
    assert not graph.unfit and [c.error for c in graph.calls] == [None] * len(graph.calls)
    firsts = {c.subject_id: c.generation for c in graph.calls if c.turn == "description"}
    seconds = {c.subject_id: c.generation for c in graph.calls if c.turn == "relationships"}
    assert firsts.keys() == seconds.keys() and len(firsts) == 6
    assert max(g.prompt_tokens for g in seconds.values()) <= 420
    # the second prompt is the first plus exactly the generated description and the new turn
    features = {engine.image_id, engine.mask_id, engine.pos_id}
    kept = {k: [t for t in g.token_ids if t not in features] for k, g in firsts.items()}
    assert (
        len({seconds[k].prompt_tokens - firsts[k].prompt_tokens - len(kept[k]) for k in firsts})
        == 1
    )


def test_an_image_without_regions_or_readable_pixels_is_an_error_row_not_a_crash(tmp_path, ckpt):
    from synthvg.stages import RobinStage, RunContext, ShardSpec

    class Inputs:  # the two tables the stage reads, as StageInputs serves them
        def __init__(self, tables):
            self.tables = tables

        def rows(self, name):
            return self.tables.get(name, [])

    cfg = demo_config(
        tmp_path / "root", robin={"backend": "robin", "checkpoint": ckpt, "max_new_tokens": 3}
    )
    stage = RobinStage(cfg)
    images = [
        {"image_id": "x:empty", "file_uri": str(tmp_path / "none.jpg"), "width": 10, "height": 10},
        {"image_id": "x:gone", "file_uri": str(tmp_path / "gone.jpg"), "width": 10, "height": 10},
    ]
    region = {
        "image_id": "x:gone",
        "region_id": 0,
        "bbox": {"x1": 0, "y1": 0, "x2": 5, "y2": 5},
        "mask": None,
        "area": 25.0,
    }
    out = stage.process(
        ShardSpec(index=0, image_ids=["x:empty", "x:gone"]),
        Inputs({"images": images, "regions": [region]}),
        RunContext(run_id="r", stage="robin", shard=0),
    )
    assert sorted((e.image_id, e.kind) for e in out.errors) == [
        ("x:empty", "no_regions"),
        ("x:gone", "bad_image"),
    ]
    assert not out.tables


def test_filters_judge_robin_relations_and_a_filter_change_does_not_rerun_robin(
    tmp_path, ckpt, monkeypatch
):
    """`filters.stages: [robin]`: the graph puts filters after Robin; changing a filter setting
    redoes filters only, never the GPU stage."""
    from synthvg.pipeline import run_build
    from synthvg.stages import build_order
    from synthvg.storage import connect

    answer = "Objects:\nregion1: a person\nregion2: a thing\n\nRelations:\nregion1: region2 left of"
    monkeypatch.setattr(
        RobinEngine,
        "_generate",
        lambda self, embeds, limits, s: [
            Generation(answer, e.shape[0], 9, True, [1]) for e in embeds
        ],
    )
    robin = {
        "backend": "robin",
        "checkpoint": ckpt,
        "max_new_tokens": 8,
        "description_max_tokens": 4,
    }
    cfg = demo_config(
        tmp_path / "root", limit=3, shard_size=2, robin=robin, filters={"stages": ["robin"]}
    )
    assert build_order(cfg).index("filters") > build_order(cfg).index("robin")
    run_build(cfg)
    con = connect(cfg.out)
    judged = con.execute(
        "SELECT DISTINCT stage FROM relations WHERE verified_by IS NOT NULL"
    ).fetchall()
    assert judged == [("robin",)]
    changed = demo_config(
        tmp_path / "root",
        limit=3,
        shard_size=2,
        robin=robin,
        filters={
            "stages": ["robin"],
            "spatial": {**cfg.filters.spatial.model_dump(), "near_keep": 0.5},
        },
    )
    written = {
        s.stage: s.shards_written for s in run_build(changed).stages if s.status != "skipped"
    }
    assert written == {"seeds": 0, "regions": 0, "teacher": 0, "robin": 0, "filters": 2}
