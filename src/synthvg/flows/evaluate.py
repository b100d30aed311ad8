"""The ``evaluate`` flow: a Robin checkpoint on PSG, scored as OpenPSG scores it.

Thin over :mod:`synthvg.eval.checkpoint`: the build runs as the ``build-dataset`` subflow (its
stage tables and progress in the UI), the scoring is plain code, and the results become
artifacts: the R@K / mR@K table, recall per predicate, and a link to the results folder. A
deployment trigger starts it when a ``train-robin`` run completes (``train_flow_run_id``: the
checkpoint is that run's export); by hand, give ``checkpoint``.
"""

from __future__ import annotations

from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from synthvg.eval.sgg import MatchBy
from synthvg.flows.build import artifact_key, build_dataset
from synthvg.schemas.config import BuildConfig


def training_config_of(flow_run_id: str) -> str:
    """The ``config`` parameter of a train-robin flow run (triggers pass ``prefect.flow-run.<id>``)."""
    from prefect.client.orchestration import get_client

    run_id = flow_run_id.removeprefix("prefect.flow-run.")
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
    config = run.parameters.get("config")
    if not isinstance(config, str):
        raise ValueError(
            f"flow run {run_id} ({run.name}) has no config parameter: not a train-robin run"
        )
    return config


@flow(name="evaluate", flow_run_name="evaluate-{build.name}")
def evaluate(
    build: BuildConfig,
    checkpoint: str | None = None,
    train_flow_run_id: str | None = None,
    robin: dict | None = None,
    split: str | None = "test",
    match: MatchBy = "mask",
    ks: list[int] | None = None,
    out: str | None = None,
    embedding: bool = True,
) -> dict:
    """Run ``checkpoint`` (or the export of the train-robin run ``train_flow_run_id``) with the
    robin stage over ``build``'s PSG images, then score R@K, mR@K, ng-R@K, ng-mR@K."""
    from synthvg.eval.checkpoint import checkpoint_of_training, robin_build, score_root

    logger = get_run_logger()
    if checkpoint is None:
        if train_flow_run_id is None:
            raise ValueError("give checkpoint or train_flow_run_id")
        checkpoint = checkpoint_of_training(training_config_of(train_flow_run_id))
    cfg = BuildConfig.model_validate(
        robin_build(build.model_dump(mode="json"), checkpoint, **(robin or {}))
    )
    logger.info("evaluating %s on %s", checkpoint, cfg.out)
    build_dataset(cfg)
    report, files = score_root(
        cfg.out,
        split=split,
        match_by=match,
        ks=tuple(ks or (20, 50, 100)),
        out=out,
        embedding=embedding,
        checkpoint=checkpoint,
    )
    s = report.scores
    key = artifact_key("evaluate", cfg.name)
    metrics = [
        {"metric": name, **{f"@{k}": round(100 * values[k], 2) for k in s.ks}}
        for name, values in (
            ("R", s.recall),
            ("mR", s.mean_recall),
            ("ng-R", s.ng_recall),
            ("ng-mR", s.ng_mean_recall),
        )
    ]
    create_table_artifact(
        metrics,
        key=f"{key}-sgg",
        description=f"PSG scene-graph generation of {checkpoint} ({s.images_evaluated} images)",
    )
    create_table_artifact(
        [
            {"predicate": p, **{f"R@{k}": round(100 * s.per_predicate[k][i], 2) for k in s.ks}}
            for i, p in enumerate(report.predicate_names)
        ],
        key=f"{key}-per-predicate",
        description="recall per predicate (the mean of these is mR@K)",
    )
    create_link_artifact(
        files[0].parent.resolve().as_uri(),
        link_text=str(files[0].parent),
        key=f"{key}-results",
        description="results.json, per_predicate.parquet, mapping.parquet",
    )
    from synthvg.eval.run import format_table

    create_markdown_artifact(
        f"# Evaluation of `{checkpoint}`\n\n```\n{format_table(report)}\n```\n",
        key=f"{key}-summary",
    )
    logger.info("\n%s", format_table(report))
    return {
        "root": cfg.out,
        "checkpoint": checkpoint,
        "results": str(files[0]),
        "recall": {str(k): v for k, v in s.recall.items()},
        "mean_recall": {str(k): v for k, v in s.mean_recall.items()},
    }
