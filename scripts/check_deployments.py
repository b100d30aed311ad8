"""Check prefect.yaml for real: deploy it, run the build deployment, see the report flow follow.

Against a throw-away ``prefect server start`` (not the in-process test server: that has no
workers and no trigger services), this proves:

1. ``synthvg setup-prefect`` creates the ``synthvg-process`` work pool prefect.yaml names;
2. ``prefect --no-prompt deploy --all`` registers both deployments from prefect.yaml (the
   README's command); the build deployment has its cron schedule and the report deployment its
   ``prefect.flow-run.Completed`` trigger (an automation);
3. the server validates deployment parameters against BuildConfig: a copy of prefect.yaml with
   an unknown config key is refused;
4. a run of the build deployment, picked up by a process worker, completes (the small demo:
   4 images, shards of 2) and its completion event starts a ``dataset-report`` run from the
   report deployment, with the build's flow-run id, which writes ``ROOT/report/`` and the
   dataset-card artifact.

It does not prove Docker or Kubernetes pools, or schedules firing (the example cron is inactive).
Run: ``python scripts/check_deployments.py`` (about 1-2 minutes; exit code 0 when all hold).
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

BUILD = "build-dataset/demo-build"
REPORT = "dataset-report/dataset-report"


def run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check and p.returncode:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        )
    return p


def step(t0: float, message: str) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {message}", flush=True)


def check(tmp: Path) -> None:
    t0 = time.perf_counter()
    with local_server(tmp / "home") as api:
        step(t0, f"server up at {api}")
        env = child_env(tmp / "home", api)
        # Prefect reads its settings when first imported: point this process at the server first.
        os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "home"))
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
        from prefect.deployments import run_deployment

        print(
            run(
                [
                    sys.executable,
                    "-m",
                    "synthvg.cli",
                    "setup-prefect",
                    "--config",
                    "configs/demo.yaml",
                ],
                env,
            ).stdout.strip()
        )
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env)
        step(t0, "prefect deploy --all: both deployments registered")

        bad = tmp / "bad-prefect.yaml"
        spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
        spec["deployments"][0]["parameters"]["config"]["shard_sise"] = 8
        bad.write_text(yaml.safe_dump(spec))
        refused = run(
            [
                str(BIN / "prefect"),
                "--no-prompt",
                "deploy",
                "--prefect-file",
                str(bad),
                "--name",
                "demo-build",
            ],
            env,
            check=False,
        )
        assert refused.returncode != 0 and "shard_sise" in refused.stdout + refused.stderr, (
            "an unknown config key was accepted"
        )
        step(
            t0,
            "a deployment with an unknown config key is refused (parameters validated against BuildConfig)",
        )

        with get_client(sync_client=True) as client:
            build = client.read_deployment_by_name(BUILD)
            report = client.read_deployment_by_name(REPORT)
            crons = [s.schedule.cron for s in build.schedules]
            assert crons == ["0 3 * * 1"] and not build.schedules[0].active, build.schedules
            assert build.parameter_openapi_schema["properties"]["config"], "no parameter schema"
            automations = [
                a
                for a in client.read_automations()
                if any(getattr(action, "deployment_id", None) == report.id for action in a.actions)
            ]
            assert len(automations) == 1, (
                f"expected one trigger automation for {REPORT}, found {len(automations)}"
            )
            assert automations[0].trigger.expect == {"prefect.flow-run.Completed"}
        step(t0, "schedule (inactive example cron) and Completed trigger are registered")

        out = tmp / "dataset"
        params = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]["parameters"]
        params["config"].update(out=str(out), limit=4, shard_size=2, regions={"proposer": "none"})
        worker = [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            "synthvg-process",
            "--limit",
            "2",
        ]
        with started(worker, env, tmp / "worker.log"):
            run_ = run_deployment(BUILD, parameters=params, timeout=600)
            assert run_.state and run_.state.is_completed(), f"build run ended {run_.state}"
            step(t0, f"build run {run_.name} from the deployment completed")

            def report_run():
                with get_client(sync_client=True) as client:
                    runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(
                            name=DeploymentFilterName(any_=["dataset-report"])
                        )
                    )
                mine = [
                    r
                    for r in runs
                    if r.parameters.get("build_flow_run_id") == f"prefect.flow-run.{run_.id}"
                ]
                return next((r for r in mine if r.state and r.state.is_final()), None)

            done = wait_until(
                report_run, 300, "the triggered dataset-report run to finish", every=2
            )
            assert done.state.is_completed(), f"report run ended {done.state}"
            step(t0, f"the trigger started report run {done.name} for that build; it completed")

        card = out / "report" / "README.md"
        assert card.exists() and "Table 1" in card.read_text(), f"no dataset card at {card}"
        figures = sorted(p.name for p in (out / "report").rglob("*.png"))
        assert {"categories.png", "predicates.png", "objects.png"} <= set(figures), figures
        with get_client(sync_client=True) as client:
            keys = {a.key for a in client.read_artifacts()}
        assert "demo-dataset-card" in keys, keys
        step(
            t0,
            f"ROOT/report/ holds the card and {len(figures)} PNGs; artifact demo-dataset-card exists",
        )
    print(json.dumps({"ok": True, "seconds": round(time.perf_counter() - t0, 1)}))


def main() -> int:
    return run_check(check, "synthvg-deploy-check-")


if __name__ == "__main__":
    sys.exit(main())
