"""A build imports the heavy SDKs only for the stages that use them: every build process pays for
what it imports (the OpenAI SDK alone is ~0.5-1.5 s, scipy ~0.5 s), cheap builds included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent
HEAVY = {"openai", "scipy", "torch", "transformers", "prefect"}


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])}
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_a_rules_build_imports_no_llm_sdk_and_no_model_framework(tmp_path):
    """Seeds, rule teacher and rule filters (the demo without its image-segmentation proposer,
    which needs scikit-image and so scipy)."""
    modules = _modules_after(
        "from helpers import demo_config\n"
        "from synthvg.pipeline import run_build\n"
        f"cfg = demo_config({str(tmp_path / 'root')!r}, limit=2, regions={{'proposer': 'none'}})\n"
        "assert run_build(cfg).status == 'completed'"
    )
    assert not modules & HEAVY


def test_the_build_flow_module_imports_prefect_but_no_sdk():
    modules = _modules_after("import synthvg.flows.build")
    assert "prefect" in modules
    assert not modules & (HEAVY - {"prefect"})


def test_an_import_loads_no_stage_and_no_build_config(tmp_path):
    """`synthvg import` writes tables and a plan: loading every stage and config model (through
    synthvg.pipeline) cost it 0.28 s a run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "svg.parquet"
    graph = json.dumps({"objects": ["a", "b"], "relations": [[0, 1, "on"]]})
    box = {"bbox": [0.0, 0.0, 1.0, 1.0]}
    row = {"image_id": "1", "metadata": {"width": 4, "height": 4}, "regions": [box, box]}
    pq.write_table(pa.Table.from_pylist([{**row, "scene_graph": graph}]), path)
    modules = _modules_after(
        "from synthvg.export import import_svg\n"
        f"assert import_svg([{str(path)!r}], {str(tmp_path / 'root')!r}).relations == 1"
    )
    assert not modules & (HEAVY | {"synthvg.pipeline", "synthvg.stages", "synthvg.schemas.config"})
