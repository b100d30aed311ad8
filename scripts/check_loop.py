"""Check the self-distillation loop of prefect.yaml for real: five deployments chained by triggers.

Against a throw-away ``prefect server start`` with a process worker (as check_deployments.py),
this deploys prefect.yaml's loop deployments, with their paths moved into a temporary folder
and the editor's ``base_url`` pointed at the local OpenAI-protocol test server (a scripted
SG-EDIT editor, tests/edit_scripts.py), starts ``loop-svg-relations`` once, and checks that the
event triggers alone run the rest, in order, each on what the previous one made:

1. ``loop-svg-relations`` (build) completes -> ``train-loop-stage1`` trains the tiny random Robin
   on its ``svg_relations`` and exports it;
2. that run's Completed event starts ``loop-svg-full``: a build whose robin stage loads the
   stage-1 export and whose edit stage calls the editor (``svg_full`` rows);
3. its completion starts ``train-loop-stage2``, which continues from the stage-1 export on
   ``svg_full`` (the manifest's parent checkpoint is the stage-1 export);
4. its completion starts ``evaluate-robin`` with the training run's id: the stage-2 export runs
   on the tiny PSG images and is scored (results.json names that export; artifacts exist).

Run: ``python scripts/check_loop.py`` (several minutes on 2 cores; exit code 0 when all hold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_prefect import (  # noqa: E402
    BIN,
    REPO,
    child_env,
    local_server,
    run_check,
    started,
    wait_until,
)
from tiny_psg import write_tiny_psg  # noqa: E402

LOOP = [
    "loop-svg-relations",
    "train-loop-stage1",
    "loop-svg-full",
    "train-loop-stage2",
    "evaluate-robin",
]
FLOW = {
    "loop-svg-relations": "build-dataset",
    "train-loop-stage1": "train-robin",
    "loop-svg-full": "build-dataset",
    "train-loop-stage2": "train-robin",
    "evaluate-robin": "evaluate",
}


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    return p


def step(t0: float, message: str) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {message}", flush=True)


def _train_config(name: str, tmp: Path, **paths) -> Path:
    raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    raw["model"]["checkpoint"] = paths["checkpoint"]
    for s in raw["data"]["sources"]:
        s["root"] = paths["root"]
    raw["train"]["output_dir"] = paths["output_dir"]
    out = tmp / f"{name}.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def loop_spec(tmp: Path, editor_url: str, key_env: str) -> Path:
    """prefect.yaml's loop deployments, their paths moved under ``tmp``."""
    from synthvg.models.robin.testing import make_checkpoint

    make_checkpoint(str(tmp / "robin-tiny"))
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in spec["deployments"]}
    spec["deployments"] = [deps[n] for n in LOOP]
    stage1, stage2 = tmp / "train" / "loop-stage1", tmp / "train" / "loop-stage2"
    deps["loop-svg-relations"]["parameters"]["config"]["out"] = str(tmp / "svg-relations")
    deps["train-loop-stage1"]["parameters"]["config"] = str(
        _train_config(
            "train-loop-stage1",
            tmp,
            checkpoint=str(tmp / "robin-tiny"),
            root=str(tmp / "svg-relations"),
            output_dir=str(stage1),
        )
    )
    full = deps["loop-svg-full"]["parameters"]["config"]
    full["out"] = str(tmp / "svg-full")
    full["robin"]["checkpoint"] = str(stage1 / "export")
    full["edit"].update(base_url=editor_url, api_key_env=key_env, timeout_seconds=10)
    deps["train-loop-stage2"]["parameters"]["config"] = str(
        _train_config(
            "train-loop-stage2",
            tmp,
            checkpoint=str(stage1 / "export"),
            root=str(tmp / "svg-full"),
            output_dir=str(stage2),
        )
    )
    build = deps["evaluate-robin"]["parameters"]["build"]
    build["out"] = str(tmp / "psg-eval")
    build["seeds"]["sources"] = [write_tiny_psg(tmp / "psg-tiny", 2)]
    path = tmp / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def check(tmp: Path) -> None:
    t0 = time.perf_counter()
    sys.path.insert(0, str(REPO / "tests"))
    from edit_scripts import KEY, KEY_ENV, scripted_editor

    from synthvg.llm.testing import FakeOpenAIServer

    with local_server(tmp / "home") as api, FakeOpenAIServer(responder=scripted_editor) as editor:
        step(t0, f"server up at {api}; editor at {editor.base_url}")
        env = {**child_env(tmp / "home", api), KEY_ENV: KEY}
        os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "home"))
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.deployments import run_deployment

        spec = loop_spec(tmp, editor.base_url, KEY_ENV)
        run(
            [sys.executable, "-m", "synthvg.cli", "setup-prefect", "--config", "configs/demo.yaml"],
            env,
        )
        run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(spec)],
            env,
        )
        with get_client(sync_client=True) as client:
            ids = {n: client.read_deployment_by_name(f"{FLOW[n]}/{n}").id for n in LOOP}
            targets = {
                action.deployment_id
                for a in client.read_automations()
                for action in a.actions
                if getattr(action, "deployment_id", None)
            }
        assert {ids[n] for n in LOOP[1:]} <= targets, "a loop step has no trigger automation"
        step(t0, "deployed the 5 loop deployments; 4 have a flow-run Completed trigger")

        def runs_of(name: str):
            with get_client(sync_client=True) as client:
                return client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
                    sort=FlowRunSort.START_TIME_ASC,
                )

        worker = [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            "synthvg-process",
            "--limit",
            "1",
        ]
        with started(worker, env, tmp / "worker.log"):
            first = run_deployment(f"build-dataset/{LOOP[0]}", timeout=900)
            assert first.state and first.state.is_completed(), f"{LOOP[0]} ended {first.state}"
            step(t0, f"{LOOP[0]}: {first.name} completed")
            for name in LOOP[1:]:
                done = wait_until(
                    lambda name=name: next(
                        (r for r in runs_of(name) if r.state and r.state.is_final()), None
                    ),
                    900,
                    f"the triggered {name} run to finish",
                    every=3,
                )
                assert done.state.is_completed(), f"{name} run {done.name} ended {done.state}"
                step(t0, f"{name}: triggered run {done.name} completed")
            evaluate_run = done

    # what each step made, read back
    m1 = json.loads((tmp / "train" / "loop-stage1" / "export" / "training.json").read_text())
    m2 = json.loads((tmp / "train" / "loop-stage2" / "export" / "training.json").read_text())
    assert m1["parent_checkpoint"]["path"] == str(tmp / "robin-tiny")
    assert m2["parent_checkpoint"]["path"] == str(tmp / "train" / "loop-stage1" / "export")
    assert all(isinstance(d["version"], int) for d in m1["data"] + m2["data"]), "data versions"
    from synthvg.storage import connect

    con = connect(str(tmp / "svg-full"))
    (robin_gens,) = con.execute(
        "SELECT count(*) FROM generations WHERE stage = 'robin' AND model = 'export'"
    ).fetchone()
    (edit_rows,) = con.execute("SELECT count(*) FROM svg_full").fetchone()
    assert robin_gens > 0 and edit_rows > 0, (robin_gens, edit_rows)
    results = json.loads((tmp / "psg-eval" / "eval" / "sgg-robin" / "results.json").read_text())
    assert results["checkpoint"] == str(tmp / "train" / "loop-stage2" / "export")
    assert evaluate_run.parameters["train_flow_run_id"].startswith("prefect.flow-run.")
    step(
        t0,
        f"stage-1 export from robin-tiny, SVG-FULL with {robin_gens} stage-1 Robin generations and "
        f"{edit_rows} svg_full rows ({len(editor.chat_requests)} editor requests), stage 2 from the "
        f"stage-1 export, evaluation of the stage-2 export: R@20 {results['scores']['recall']['20']}",
    )
    print(json.dumps({"ok": True, "seconds": round(time.perf_counter() - t0, 1)}))


def main() -> int:
    return run_check(check, "synthvg-loop-check-")


if __name__ == "__main__":
    sys.exit(main())
