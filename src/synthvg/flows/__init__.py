"""Prefect flows: thin orchestration over :mod:`synthvg.pipeline`."""

from synthvg import prefect_env

prefect_env.configure()

from synthvg.flows.build import BuildIncomplete, build_dataset, publish_flow, shards_flow  # noqa: E402
from synthvg.flows.report import dataset_report  # noqa: E402

__all__ = ["BuildIncomplete", "build_dataset", "dataset_report", "publish_flow", "shards_flow"]
