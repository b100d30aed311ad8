"""The stage interface: a plain object that turns one shard's inputs into table rows.

A stage knows nothing about Prefect, threads, Dask or Ray. It is constructed once per worker
(that is where a model loads, see :func:`load_stage`) and then called for every shard it is
given. It reads upstream tables for its shard through :class:`StageInputs` and returns records
plus error rows; committing them is the runner's job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pyarrow as pa
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from synthvg.config.build import BuildConfig
from synthvg.config.fields import output_settings
from synthvg.runs import stable_hash
from synthvg.schemas import TABLES, ErrorRecord, schema_of
from synthvg.schemas.records import Record
from synthvg.storage.dataset import Dataset

#: The stage that writes relations (and descriptions) whose ``stage`` column says this.
STAGE_OF_RELATIONS = {"seed": "seeds", "teacher": "teacher", "robin": "robin", "edit": "edit"}


class StageFatal(RuntimeError):
    """No shard of this stage can succeed in this run (a rejected key, an unknown model, an
    unreachable endpoint, a spent budget): the runner stops the stage instead of trying the
    other shards, and commits none of them. The message is one line saying what to fix."""


class ShardSpec(BaseModel):
    """One unit of work: a fixed, ordered list of image ids (the same across stages)."""

    index: int
    image_ids: list[str]

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.image_ids).encode()).hexdigest()


@dataclass
class RunContext:
    run_id: str
    stage: str
    shard: int | None = None

    def error(
        self,
        kind: str,
        reason: str,
        *,
        image_id: str | None = None,
        source: str | None = None,
    ) -> ErrorRecord:
        return ErrorRecord(
            run_id=self.run_id,
            stage=self.stage,
            shard=self.shard,
            image_id=image_id,
            source=source,
            kind=kind,
            reason=reason,
            created_at=dt.datetime.now(dt.UTC),
        )


@dataclass
class StageOutput:
    """What a stage made of one shard: rows per table, plus the inputs it could not use."""

    tables: dict[str, list[Record]] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)
    #: Numbers worth summing over a run (requests, tokens, cost_usd, ...).
    metrics: dict[str, float] = field(default_factory=dict)

    def add(self, table: str, *records: Record) -> None:
        self.tables.setdefault(table, []).extend(records)

    def arrow_tables(self) -> dict[str, pa.Table]:
        from synthvg.schemas import to_table

        out = {name: to_table(TABLES[name], rows) for name, rows in self.tables.items()}
        if self.errors:
            out["errors"] = to_table(ErrorRecord, self.errors)
        return out


class StageInputs:
    """Upstream tables of one shard, read on demand from committed shards."""

    def __init__(self, dataset: Dataset, shard: int, writers: dict[str, list[str]]):
        self._dataset = dataset
        self._shard = shard
        self._writers = writers
        self._cache: dict[str, pa.Table] = {}

    def table(self, name: str) -> pa.Table:
        """All committed rows of ``name`` for this shard (empty with its schema if none)."""
        if name not in self._writers:
            raise KeyError(
                f"this stage does not declare that it reads {name!r} (add it to the stage's `reads`)"
            )
        if name not in self._cache:
            parts = [
                t
                for stage in self._writers.get(name, [])
                if (t := self._dataset.read_shard_table(name, stage, self._shard)) is not None
            ]
            schema = schema_of(TABLES[name])
            self._cache[name] = (
                pa.concat_tables([p.select(schema.names).cast(schema) for p in parts])
                if parts
                else schema.empty_table()
            )
        return self._cache[name]

    def rows(self, name: str) -> list[dict]:
        return self.table(name).to_pylist()

    def by_image(self, name: str) -> dict[str, list[dict]]:
        """Rows of ``name`` grouped by ``image_id``, in table order."""
        out: dict[str, list[dict]] = {}
        for row in self.rows(name):
            out.setdefault(row["image_id"], []).append(row)
        return out


class Stage(ABC):
    """Base class of every pipeline stage."""

    name: ClassVar[str]
    #: Bump when the stage's output for the same input and config changes.
    version: ClassVar[str] = "1"
    #: Breaks ties in the build order between stages that do not read each other (lower first).
    order: ClassVar[float] = 100
    #: Tables this stage writes (besides ``errors``).
    writes: ClassVar[tuple[str, ...]] = ()
    #: Tables this stage reads: its inputs refuse any other, and the stage graph (build order,
    #: fingerprints) is derived from them.
    reads: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: BuildConfig):
        self.config = config
        #: the :func:`shared_model` slots this instance uses
        self.model_slots: set[str] = set()

    @classmethod
    def skip_reason(cls, config: BuildConfig) -> str | None:
        """Why this stage does nothing under ``config`` (None: it runs).

        By default a stage whose config section says ``backend: none`` is skipped.
        """
        if getattr(getattr(config, cls.name, None), "backend", None) == "none":
            return f"no {cls.name} backend configured ({cls.name}.backend: none)"
        return None

    @classmethod
    def read_from(cls, config: BuildConfig, table: str) -> tuple[str, ...] | None:
        """Which stages' rows of ``table`` this stage reads under ``config`` (None: every stage
        that writes it, but itself)."""
        return None

    @classmethod
    def dry_run_mode(cls, config: BuildConfig) -> str:
        """How a dry run treats this stage under ``config``: ``free`` (CPU only, no weights, no
        API: it runs for real, since later stages' requests depend on its output), ``paid``
        (it prices its requests with :meth:`estimate`, sending nothing) or ``model`` (it loads
        weights: its shards are counted, nothing is loaded or run)."""
        return "free"

    @classmethod
    def light(cls, config: BuildConfig) -> bool:
        """Whether a shard of this stage takes about as long as an orchestrator task's own cost
        (~0.1-0.2 s for Prefect): rules and bookkeeping, no model, no API, no image decoding.
        A build whose running stages are all light runs several shards per task
        (:func:`synthvg.pipeline.task_groups`)."""
        return False

    @classmethod
    def fingerprint_payload(cls, config: BuildConfig) -> dict:
        """What, besides the shard's image ids and upstream, decides this stage's output.

        A classmethod, so fingerprints can be computed without loading any model. By default
        every setting of the stage's section but those marked
        :class:`~synthvg.config.fields.SpeedOnly`: a new field counts unless marked.
        """
        return {"config": output_settings(config.stage_config(cls.name))}

    @abstractmethod
    def process(self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext) -> StageOutput:
        """Turn one shard's inputs into rows. Bad input becomes error rows, never a crash."""

    def estimate(
        self, shard: ShardSpec, inputs: StageInputs, ctx: RunContext
    ) -> dict[str, float] | None:
        """What ``process`` would spend on this shard, without spending it (a dry run).

        None for stages that cost nothing (a dry run runs those for real). Stages that call
        paid APIs return requests, cached, estimated tokens and ``cost_usd``.
        """
        return None


_STAGE_CACHE: dict[str, tuple[str, Stage]] = {}
_STAGE_LOCK = threading.RLock()
#: slot -> (key of the settings it was loaded from, model)
_MODELS: dict[str, tuple[str, Any]] = {}

#: Build settings no stage's work depends on: changing them must not rebuild a stage.
_NOT_STAGE_SETTINGS = {"name", "limit", "shard_size", "executor"}

T = TypeVar("T")


def shared_model(stage: Stage, slot: str, settings: Any, load: Callable[[], T]) -> T:
    """The model ``stage`` keeps in ``slot``, loaded by ``load`` from ``settings`` (what the
    model depends on: its section, its files' identity; nothing else of the build).

    Reused by every later instance of the stage whose ``settings`` are the same, whatever else
    of the config changed (the executor, another stage's settings, the dataset root); loaded
    anew, the old one released first, when they differ. A model no cached stage instance uses
    any more is released by :func:`load_stage`.
    """
    name = f"{stage.name}:{slot}"
    key = stable_hash(to_jsonable_python(settings))  # config sections at any depth
    stage.model_slots.add(name)
    with _STAGE_LOCK:
        cached = _MODELS.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        _MODELS.pop(name, None)  # drop the old model before the new one takes memory
        model = load()
        _MODELS[name] = (key, model)
        return model


def loaded_models() -> dict[str, Any]:
    """The models this process holds, by slot (``stage:slot``)."""
    with _STAGE_LOCK:
        return {name: model for name, (_, model) in _MODELS.items()}


def load_stage(stage_cls: type[Stage], config: BuildConfig) -> Stage:
    """The stage instance for this config, built once per worker process and reused.

    Models load in a stage's constructor through :func:`shared_model`, so this is what makes
    "a model loads once per worker, never once per task" hold, whatever executor runs the
    shards. The instance is kept per stage under a key of the build settings (not the
    executor, the build's name or size). A worker serves one build at a time: a config with
    other settings replaces the instances built for another one, and the models no remaining
    instance uses are released, so a long-lived worker serving a second build frees the first
    build's models, while a model whose own settings did not change is kept.
    """
    key = config.model_dump_json(exclude=_NOT_STAGE_SETTINGS)
    with _STAGE_LOCK:
        cached = _STAGE_CACHE.get(stage_cls.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        for name in [n for n, (k, _) in _STAGE_CACHE.items() if k != key]:
            del _STAGE_CACHE[name]  # another build's instances (their models may be reused)
        stage = stage_cls(config)
        _STAGE_CACHE[stage_cls.name] = (key, stage)
        used = set().union(*(s.model_slots for _, s in _STAGE_CACHE.values()))
        for slot in [n for n in _MODELS if n not in used]:
            del _MODELS[slot]
        return stage
