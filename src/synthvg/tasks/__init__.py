"""Prefect tasks: thin wrappers over :mod:`synthvg.pipeline`, one task run per shard."""

from synthvg import prefect_env

prefect_env.configure()

from synthvg.tasks.shard import plan_task, shard_task  # noqa: E402

__all__ = ["plan_task", "shard_task"]
