"""The Prefect UI as a person sees it: a demo build on a real server, checked, then photographed.

Starts ``prefect server start`` on 127.0.0.1 (temporary PREFECT_HOME), runs a small demo build
against it (8 images in shards of 2, threads), checks through the API that the build's flow
runs (the build, one subflow per stage, publish), its task runs (one per stage and shard) and
its artifacts (build and per-stage progress, per-stage tables, statistics) exist, then takes a
screenshot of the build's run page with headless Chromium (Debian's ``chromium`` package).

Run: ``python scripts/ui_screenshot.py [--out docs/prefect-ui-build-run.png]`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_prefect import REPO, local_server  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    # The UI is a single-page app that fetches the run after load: give its scripts time.
    "--virtual-time-budget=20000",
]


def check_run(flow_run_id, shards: int, stages: list[str], name: str) -> dict[str, int]:
    """What the API holds for the build; AssertionError naming what is missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        build = client.read_flow_run(flow_run_id)
        assert build.state and build.state.is_completed(), build.state
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        names = sorted(r.name for r in subflows)
        assert set(stages) | {"publish"} <= set(names), names
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in subflows])
            )
        )
        shard_runs = [
            t for t in tasks if t.name.endswith(tuple(f"-shard-{i:05d}" for i in range(shards)))
        ]
        assert len(shard_runs) == shards * len(stages), sorted(t.name for t in tasks)
        assert all(t.state and t.state.is_completed() for t in shard_runs)
        keys = {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=name))
            )
        }
    want = (
        {f"{name}-build-progress", f"{name}-stats"}
        | {f"{name}-stage-{s}" for s in stages}
        | {f"{name}-stage-{s}-progress" for s in stages}
    )
    assert want <= keys, sorted(want - keys)
    return {"subflows": len(subflows), "shard_task_runs": len(shard_runs), "artifacts": len(keys)}


def artifact_id(key: str):
    """The latest version of the artifact ``key`` (its page shows the content; the key's, history)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (latest,) = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return latest.latest_id


def screenshot(url: str, out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="synthvg-chromium-") as profile:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", url]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "prefect-ui-build-run.png")
    args = parser.parse_args()
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="synthvg-ui-") as tmp,
        local_server(Path(tmp) / "home") as api,
    ):
        print(f"[{time.perf_counter() - t0:5.1f}s] server at {api}", flush=True)
        os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=str(Path(tmp) / "home"))
        from helpers import demo_config  # imports synthvg, so Prefect: after the settings above

        from synthvg.flows import build_dataset
        from synthvg.flows.report import dataset_report
        from synthvg.pipeline import active_stages

        cfg = demo_config(Path(tmp) / "demo", limit=8, shard_size=2)
        state = build_dataset(cfg, return_state=True)
        run_id = state.state_details.flow_run_id
        print(
            f"[{time.perf_counter() - t0:5.1f}s] build {state.type.value}: flow run {run_id}",
            flush=True,
        )
        found = check_run(run_id, shards=4, stages=active_stages(cfg), name=cfg.name)
        print(f"[{time.perf_counter() - t0:5.1f}s] API holds {found}", flush=True)
        dataset_report(root=cfg.out, samples=2)
        ui = api.removesuffix("/api")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shots = {
            args.out: f"{ui}/runs/flow-run/{run_id}",
            args.out.with_name(
                "prefect-ui-stage-table.png"
            ): f"{ui}/artifacts/artifact/{artifact_id(f'{cfg.name}-stage-regions')}",
            args.out.with_name(
                "prefect-ui-dataset-card.png"
            ): f"{ui}/artifacts/artifact/{artifact_id(f'{cfg.name}-dataset-card')}",
        }
        for path, url in shots.items():
            screenshot(url, path)
            print(f"[{time.perf_counter() - t0:5.1f}s] wrote {path} ({url})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
