"""The `evaluate` flow (and `synthvg evaluate checkpoint`): a Robin checkpoint run with the robin
stage over PSG images, then scored as OpenPSG scores it; results as files and artifacts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
from tiny_psg import write_tiny_psg  # noqa: E402


@pytest.fixture(scope="module")
def tiny_robin(tmp_path_factory):
    from synthvg.models.robin.testing import make_checkpoint

    path = tmp_path_factory.mktemp("robin") / "robin-tiny"
    make_checkpoint(str(path))
    return str(path)


def _build(tmp_path) -> dict:
    return {
        "name": "psg-eval",
        "out": str(tmp_path / "psg-eval"),
        "shard_size": 2,
        "seeds": {"sources": [write_tiny_psg(tmp_path / "psg", 2)]},
        "regions": {"proposer": "none"},
        "teacher": {"backend": "none"},
    }


@pytest.mark.slow
def test_evaluate_flow_runs_the_checkpoint_on_psg_and_publishes_scores(
    prefect_server, tmp_path, tiny_robin
):
    """The tiny random Robin writes generations (parsed into few or no relations): every PSG
    image is evaluated, and an image without relations scores zero (missing='zero'); the
    ground truth is the root's own PSG seeds (2 images, all in test_image_ids)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from synthvg.flows.evaluate import evaluate
    from synthvg.schemas.config import BuildConfig
    from synthvg.storage import connect

    build = BuildConfig.model_validate(_build(tmp_path))
    result = evaluate(
        build=build,
        checkpoint=tiny_robin,
        robin={"max_new_tokens": 24, "max_regions": 4},
        embedding=False,
    )
    con = connect(build.out)
    (generations,) = con.execute(
        "SELECT count(*) FROM generations WHERE stage = 'robin' AND text IS NOT NULL"
    ).fetchone()
    (gt,) = con.execute("SELECT count(*) FROM relations WHERE stage = 'seed'").fetchone()
    assert generations == 2 and gt > 0
    results = json.loads(
        (tmp_path / "psg-eval" / "eval" / "sgg-robin" / "results.json").read_text()
    )
    assert results["checkpoint"] == tiny_robin and results["missing"] == "zero"
    assert results["counts"]["images_evaluated"] == 2 and results["counts"]["gt_relations"] == gt
    assert result["results"].endswith("results.json") and set(result["recall"]) == {
        "20",
        "50",
        "100",
    }
    wanted = {f"evaluate-psg-eval-{k}" for k in ("sgg", "per-predicate", "results", "summary")}
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(wanted)))
        )
    assert {a.key for a in arts} == wanted
    table = json.loads(next(a for a in arts if a.key == "evaluate-psg-eval-sgg").data)
    assert [r["metric"] for r in table] == ["R", "mR", "ng-R", "ng-mR"]


def test_evaluate_checkpoint_command_bad_input(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from synthvg.cli import app

    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(_build(tmp_path)))
    r = CliRunner().invoke(app, ["evaluate", "checkpoint", "--config", str(cfg)])
    assert r.exit_code == 2 and "exactly one of --checkpoint or --train-config" in r.output
    train = tmp_path / "t.yaml"
    raw = (REPO / "configs" / "train-tiny.yaml").read_text()
    train.write_text(raw.replace("../build/train/tiny", str(tmp_path / "never-trained")))
    r = CliRunner().invoke(
        app, ["evaluate", "checkpoint", "--config", str(cfg), "--train-config", str(train)]
    )
    assert r.exit_code == 2 and "no exported checkpoint" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_prefect_yaml_loop_parameters_validate_and_triggers_chain_the_steps():
    """Without a server: every loop deployment's parameters validate against its flow's
    config classes, and each trigger names the previous step's flow and deployment."""
    import yaml

    from synthvg.schemas.config import BuildConfig
    from synthvg.train.config import load_train_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    chain = [
        ("loop-svg-relations", "build.py:build_dataset", None),
        ("train-loop-stage1", "train.py:train_robin", ("build-dataset", "loop-svg-relations")),
        ("loop-svg-full", "build.py:build_dataset", ("train-robin", "train-loop-stage1")),
        ("train-loop-stage2", "train.py:train_robin", ("build-dataset", "loop-svg-full")),
        ("evaluate-robin", "evaluate.py:evaluate", ("train-robin", "train-loop-stage2")),
    ]
    for name, entry, after in chain:
        d = deps[name]
        assert d["entrypoint"].endswith(entry)
        params = d["parameters"]
        if "build_dataset" in entry:
            BuildConfig.model_validate(params["config"])
        elif "train_robin" in entry:
            load_train_config(REPO / params["config"])
        else:
            BuildConfig.model_validate(params["build"])
        if after is None:
            assert "triggers" not in d
            continue
        (trigger,) = d["triggers"]
        assert trigger["expect"] == ["prefect.flow-run.Completed"]
        related = {
            r["prefect.resource.role"]: r["prefect.resource.name"] for r in trigger["match_related"]
        }
        assert (related["flow"], related["deployment"]) == after
    full = deps["loop-svg-full"]["parameters"]["config"]
    stage1 = load_train_config(REPO / deps["train-loop-stage1"]["parameters"]["config"])
    stage2 = load_train_config(REPO / deps["train-loop-stage2"]["parameters"]["config"])
    # the SVG-FULL build runs the stage-1 export; stage 2 starts from it and reads that build
    assert (REPO / full["robin"]["checkpoint"]).resolve() == Path(stage1.export_dir)
    assert stage2.model.checkpoint == stage1.export_dir
    assert {s.root for s in stage2.data.sources} == {str((REPO / full["out"]).resolve())}
    assert {s.view for s in stage2.data.sources} == {"svg_full"}
    assert deps["evaluate-robin"]["triggers"][0]["parameters"] == {
        "train_flow_run_id": "{{ event.resource.id }}"
    }
