"""Where shards run (the runners of :mod:`synthvg.flows.runners`): threads, Dask or Ray, with
retries, GPU requests per stage and Prefect concurrency limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from synthvg.config.base import Section


class PrefectLimit(Section):
    """A Prefect global concurrency limit shared by every build that names it.

    Without ``per_second`` at most ``limit`` shards of the listed stages run at once (GPU
    stages). With it, a rate limit: each shard takes one slot per image and slots free at
    ``per_second`` (model APIs; one teacher request per image). ``synthvg setup-prefect``
    creates the limits; builds then fail fast if one is missing.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    stages: list[str] = Field(min_length=1)
    limit: int = Field(
        ge=1, description="slots: shards at once, or the rate limit's burst in images"
    )
    per_second: float | None = Field(
        None, gt=0, description="set: a rate limit, slots decaying at this rate"
    )


class ExecutorConfig(Section):
    kind: Literal["threads", "dask", "ray"] = Field(
        "threads", description="threads in the build's process, or a Dask or Ray cluster"
    )
    address: str | None = Field(
        None,
        description="Dask scheduler or Ray cluster address; none: start a local cluster per build",
    )
    workers: int = Field(
        2, ge=1, le=256, description="shards processed at once (local cluster size)"
    )
    retries: int = Field(1, ge=0, description="Prefect task retries for a failing shard")
    retry_delay_seconds: float = Field(
        2.0, ge=0, description="first retry delay; doubles each retry"
    )
    task_images: int | None = Field(
        None,
        ge=1,
        description="images per Prefect shard task: a task runs consecutive shards of one stage up to this "
        "many images, each shard still committed on its own; none: 2000 when every stage that runs is light "
        "(seeds without image files, rule teacher, rule filters: no model, no API, no image decoding), whose shards take about "
        "as long as Prefect's ~0.1-0.2 s per task, else one shard per task; a stage never gets fewer tasks "
        "than workers (benchmarks/RESULTS.md)",
    )
    gpus: dict[str, float] = Field(
        default_factory=dict, description="GPUs each shard task of a stage requests on Ray or Dask"
    )
    limits: list[PrefectLimit] = Field(default_factory=list)
    overlap: bool | None = Field(
        None,
        description="chain shard tasks per shard (a stage works on shard 1 while the stage it reads works on "
        "shard 2); false: each stage waits for every shard of the stages it reads; none: overlap on Dask and "
        "Ray, whose schedulers hold a task back until its inputs are done, and not on threads, where a waiting "
        "task holds a worker thread (measured: benchmarks/bench_overlap.py)",
    )

    @property
    def overlapped(self) -> bool:
        return self.overlap if self.overlap is not None else self.kind != "threads"

    @model_validator(mode="after")
    def _address_needs_cluster(self) -> ExecutorConfig:
        if self.address and self.kind == "threads":
            raise ValueError("address needs kind dask or ray (threads run in the build's process)")
        return self
