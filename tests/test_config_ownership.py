"""Each stage owns its settings: path fields are a type that resolves against the config's
folder, speed-only settings are marked on the field (everything else counts in fingerprints),
backends are registered under their config tag, stage modules never import each other, and a
model is cached by what it depends on."""

from __future__ import annotations

import ast
import gc
import typing
import weakref
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from helpers import demo_config
from pydantic import Field

from synthvg.config.fields import SpeedOnly, input_paths
from synthvg.config.teacher import RuleTeacherConfig
from synthvg.schemas.config import load_config
from synthvg.stages import STAGES
from synthvg.stages.base import (
    RunContext,
    ShardSpec,
    Stage,
    StageInputs,
    StageOutput,
    load_stage,
    loaded_models,
    shared_model,
)
from synthvg.stages.dag import shard_fingerprints

ROOT = Path(__file__).resolve().parent.parent
SHARD = ShardSpec(index=0, image_ids=["coco:1", "coco:2"])


def _write_config(folder: Path, **sections) -> Path:
    raw = {
        "out": "out",
        "seeds": {"sources": [{"kind": "coco", "annotations": "ann/instances.json"}]},
        **sections,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_relative_synonyms_and_verifier_paths_resolve_against_the_config_folder(
    tmp_path, monkeypatch
):
    cfg_dir = tmp_path / "project" / "configs"
    path = _write_config(
        cfg_dir,
        filters={
            "backend": "rules",
            "synonyms": "../vocab/synonyms.yaml",
            "verifiers": [{"kind": "transformers", "path": "../models/vlm"}],
        },
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    cfg = load_config(path)
    project = (tmp_path / "project").resolve()
    assert cfg.filters.synonyms == str(project / "vocab" / "synonyms.yaml")
    assert cfg.filters.verifiers[0].path == str(project / "models" / "vlm")
    assert cfg.seeds.sources[0].annotations == str(cfg_dir.resolve() / "ann" / "instances.json")
    assert cfg.out == str(cfg_dir.resolve() / "out")


def test_the_synonyms_file_a_build_reads_is_the_one_beside_the_config(tmp_path, monkeypatch):
    """The filters stage reads (and fingerprints) the synonyms file the config names, from any
    working directory."""
    cfg_dir = tmp_path / "configs"
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "syn.yaml").write_text("sits atop: on\n")
    path = _write_config(cfg_dir, filters={"backend": "rules", "synonyms": "../vocab/syn.yaml"})
    monkeypatch.chdir(tmp_path / "vocab")  # a cwd where the relative path means nothing
    cfg = load_config(path)
    fp = shard_fingerprints(STAGES, cfg, SHARD)["filters"]
    (tmp_path / "vocab" / "syn.yaml").write_text("sits atop: above\n")
    assert shard_fingerprints(STAGES, cfg, SHARD)["filters"] != fp  # its content counts


def test_input_paths_come_from_the_path_type_in_sections_in_use(tmp_path):
    path = _write_config(
        tmp_path,
        regions={
            "proposer": "precomputed",
            "precomputed": {"path": "props"},
            "transformers_sam": {"path": "unused-sam"},  # not the chosen proposer
        },
        filters={
            "backend": "rules",
            "synonyms": "syn.yaml",
            "verifiers": [
                {"kind": "openai", "model": "m"},
                {"kind": "transformers", "path": "vlm"},
            ],
        },
        robin={"checkpoint": "robin"},
    )
    cfg = load_config(path)
    base = tmp_path.resolve()
    assert input_paths(cfg) == [
        ("seeds.sources[0].annotations", str(base / "ann" / "instances.json")),
        ("regions.precomputed.path", str(base / "props")),
        ("filters.verifiers[1].path", str(base / "vlm")),
        ("filters.synonyms", str(base / "syn.yaml")),
        ("robin.checkpoint", str(base / "robin")),
    ]


class _ExtraTeacher(RuleTeacherConfig):
    new_threshold: float = 0.5


class _ExtraSpeedTeacher(RuleTeacherConfig):
    new_workers: Annotated[int, SpeedOnly()] = Field(4, ge=1)


def test_an_unmarked_new_field_changes_the_fingerprint_and_a_marked_one_does_not(tmp_path):
    cfg = demo_config(tmp_path)
    before = shard_fingerprints(STAGES, cfg, SHARD)
    teacher = cfg.teacher.model_dump()
    unmarked = cfg.model_copy(update={"teacher": _ExtraTeacher(**teacher)})
    marked = cfg.model_copy(update={"teacher": _ExtraSpeedTeacher(**teacher, new_workers=32)})
    after = shard_fingerprints(STAGES, unmarked, SHARD)
    assert after["teacher"] != before["teacher"]
    assert after["seeds"] == before["seeds"] and after["regions"] == before["regions"]
    assert shard_fingerprints(STAGES, marked, SHARD) == before


def test_speed_only_settings_of_every_stage_keep_fingerprints(tmp_path):
    cfg = demo_config(
        tmp_path,
        regions={"proposer": "transformers_sam", "transformers_sam": {"path": "/x/sam"}},
        teacher={"backend": "openai", "model": "gpt-4o"},
    )
    faster = demo_config(
        tmp_path,
        regions={
            "proposer": "transformers_sam",
            "transformers_sam": {
                "path": "/x/sam",
                "batch_size": 32,
                "device": "cuda:1",
                "whole": {"points_per_batch": 512},
            },
        },
        teacher={
            "backend": "openai",
            "model": "gpt-4o",
            "max_concurrency": 64,
            "budget_usd": 3,
            "api_key_env": "OTHER_KEY",
            "batch": True,
        },
    )
    assert shard_fingerprints(STAGES, cfg, SHARD) == shard_fingerprints(STAGES, faster, SHARD)
    hotter = demo_config(
        tmp_path, teacher={"backend": "openai", "model": "gpt-4o", "temperature": 1}
    )
    assert (
        shard_fingerprints(STAGES, hotter, SHARD)["teacher"]
        != shard_fingerprints(STAGES, cfg, SHARD)["teacher"]
    )


def test_every_config_tag_has_a_registered_backend():
    from synthvg.cli import IngestFormat
    from synthvg.config.filters import Verifier
    from synthvg.config.regions import ProposerName
    from synthvg.models.backends import PROPOSERS, VERIFIERS
    from synthvg.readers.config import SOURCES
    from synthvg.stages.teacher import TEACHERS

    assert set(PROPOSERS.tags()) == set(typing.get_args(ProposerName)) - {"none"}
    assert set(TEACHERS.tags()) == {"rules", "openai"}
    kinds = {
        typing.get_args(cls.model_fields["kind"].annotation)[0]
        for cls in typing.get_args(typing.get_args(Verifier)[0])
    }
    assert set(VERIFIERS.tags()) == kinds
    assert {f.value for f in IngestFormat} == set(SOURCES)


#: Modules of the stages package that are not stages: the only ones a stage module may import.
HELPERS = {"synthvg.stages.base", "synthvg.stages.common", "synthvg.stages.llm_stage"}


def test_stage_modules_never_import_each_other():
    folder = ROOT / "src" / "synthvg" / "stages"
    stage_modules = {cls.__module__ for cls in STAGES.values()}
    assert len(stage_modules) == len(STAGES)
    for module in stage_modules:
        tree = ast.parse((folder / f"{module.rsplit('.', 1)[1]}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "synthvg.stages":  # from synthvg.stages import regions
                    imported |= {f"synthvg.stages.{a.name}" for a in node.names}
                else:
                    imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        wrong = {m for m in imported if m.startswith("synthvg.stages.")} - HELPERS
        assert not wrong, f"{module} imports {sorted(wrong)}: shared helpers go in stages/common.py"
        assert not (imported & stage_modules) - {module}


class _Model:
    pass


LOADS: list[str] = []


class _ProbeStage(Stage):
    """A stage whose model depends on the teacher's max_subjects only."""

    name = "probe"

    def __init__(self, config):
        super().__init__(config)
        settings = {"subjects": config.teacher.max_subjects}

        def load() -> _Model:
            LOADS.append(str(settings))
            return _Model()

        self.model = shared_model(self, "model", settings, load)

    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        return StageOutput()


def test_a_model_is_kept_while_what_it_depends_on_is_unchanged(tmp_path):
    LOADS.clear()
    cfg = demo_config(tmp_path / "a")
    first = load_stage(_ProbeStage, cfg)
    more_workers = demo_config(tmp_path / "a", executor={"workers": 8})
    assert load_stage(_ProbeStage, more_workers) is first  # the executor is no stage setting
    # Another stage's setting and another dataset root: a new stage instance, the same model.
    other = demo_config(tmp_path / "b", filters={"spatial": {"near_keep": 0.07}})
    again = load_stage(_ProbeStage, other)
    assert again is not first and again.model is first.model
    assert len(LOADS) == 1
    changed = demo_config(tmp_path / "b", teacher={"max_subjects": 3})
    assert load_stage(_ProbeStage, changed).model is not first.model
    assert len(LOADS) == 2


def test_a_worker_serving_a_second_build_releases_the_first_builds_models(tmp_path):
    LOADS.clear()
    first_build = demo_config(tmp_path / "a", teacher={"max_subjects": 7})
    stage = load_stage(_ProbeStage, first_build)
    regions = load_stage(STAGES["regions"], first_build)  # a real stage's proposer
    model, proposer = weakref.ref(stage.model), weakref.ref(regions.proposer)
    assert {"probe:model", "regions:proposer"} <= set(loaded_models())
    del stage, regions
    # The second build runs no probe stage and another proposer setting.
    second = demo_config(
        tmp_path / "b", regions={"felzenszwalb": {"scale": 100, "sigma": 0.8, "min_size": 50}}
    )
    new_regions = load_stage(STAGES["regions"], second)
    gc.collect()
    assert model() is None and proposer() is None
    assert set(loaded_models()) == {"regions:proposer"}
    assert loaded_models()["regions:proposer"] is new_regions.proposer


def test_a_missing_backend_extra_is_a_one_line_model_error():
    from synthvg.models.backends import Registry
    from synthvg.models.errors import ModelLoadError

    reg: Registry[object] = Registry("depth.backend")

    @reg.register("needs-extra")
    def _needs(section, build):
        import synthvg_no_such_module  # noqa: F401

    with pytest.raises(ModelLoadError, match=r"depth.backend: needs-extra needs the models extra"):
        reg.create("needs-extra", None, None)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=r"no backend 'other' \(known: needs-extra\)"):
        reg.create("other", None, None)  # type: ignore[arg-type]


NEW_STAGE = """
from synthvg.stages.base import Stage, StageOutput


class RegionCountStage(Stage):
    name = "region_count"
    version = "1"
    reads = ("regions",)
    writes = ("region_counts",)

    @classmethod
    def skip_reason(cls, config):
        return None

    @classmethod
    def fingerprint_payload(cls, config):
        return {"min_area": 0}

    def process(self, shard, inputs, ctx):
        return StageOutput()
"""


def test_a_new_stage_module_is_a_stage_without_registering_it(tmp_path, monkeypatch):
    import synthvg.stages as stages

    (tmp_path / "region_count.py").write_text(NEW_STAGE)
    monkeypatch.setattr(stages, "__path__", [*stages.__path__, str(tmp_path)])
    found = stages._stages()
    assert list(found)[: len(STAGES)] == list(STAGES)  # the others keep their order
    assert "region_count" in found
    cfg = demo_config(tmp_path / "root")
    graph = stages.stage_graph(found, cfg)
    assert graph["region_count"].reads == {"regions": ["seeds", "regions"]}
    assert graph["region_count"].depends_on == ["regions"]
    before = shard_fingerprints(found, cfg, SHARD)
    felz = {"scale": 100, "sigma": 0.8, "min_size": 50}
    after = shard_fingerprints(
        found, demo_config(tmp_path / "root", regions={"felzenszwalb": felz}), SHARD
    )
    assert after["region_count"] != before["region_count"]  # it reads regions
    teacher = demo_config(tmp_path / "root", teacher={"max_subjects": 3})
    assert shard_fingerprints(found, teacher, SHARD)["region_count"] == before["region_count"]
    monkeypatch.delitem(__import__("sys").modules, "synthvg.stages.region_count")
