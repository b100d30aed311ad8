"""The stage graph, derived from what each stage declares it reads and writes.

A stage depends on the stages whose rows it reads: every active writer of a table it reads
(a stage never depends on itself), or the writers its config names (``filters.stages``,
``edit.source``). The build order is a topological order of that graph, ties broken by the
order stages are declared in; a shard's fingerprint for a stage hashes its own settings and the
fingerprints of the stages it reads, so a change redoes only its dependents.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from synthvg import __version__
from synthvg.runs import stable_hash
from synthvg.schemas.config import BuildConfig
from synthvg.stages.base import ShardSpec, Stage


class StageNode(BaseModel):
    """One stage in the graph of a config."""

    name: str
    skipped: str | None = Field(None, description="why the stage does nothing under this config")
    #: table -> the active stages whose rows of it this stage reads
    reads: dict[str, list[str]] = Field(default_factory=dict)
    #: the stages it reads from, without those already implied by another (transitive reduction)
    depends_on: list[str] = Field(default_factory=list)


class GraphError(ValueError):
    """The config makes the stages depend on each other in a circle."""


def stage_graph(stages: dict[str, type[Stage]], config: BuildConfig) -> dict[str, StageNode]:
    """Every stage's node, in build order (a topological order of the read dependencies)."""
    skipped = {name: cls.skip_reason(config) for name, cls in stages.items()}
    writers: dict[str, list[str]] = {}
    for name, cls in stages.items():
        for table in cls.writes:
            writers.setdefault(table, []).append(name)
    nodes: dict[str, StageNode] = {}
    for name, cls in stages.items():
        reads = {}
        for table in cls.reads if skipped[name] is None else ():  # a skipped stage reads nothing
            wanted = cls.read_from(config, table)
            reads[table] = [
                w
                for w in writers.get(table, [])
                if w != name and skipped[w] is None and (wanted is None or w in wanted)
            ]
        nodes[name] = StageNode(name=name, skipped=skipped[name], reads=reads)
    direct = {n: {w for ws in node.reads.values() for w in ws} for n, node in nodes.items()}
    order = _topological(list(stages), direct)
    closure: dict[str, set[str]] = {}
    for name in order:
        closure[name] = set(direct[name]).union(*(closure[d] for d in direct[name]))
        implied = set().union(*(closure[d] for d in direct[name]))
        nodes[name].depends_on = [d for d in order if d in direct[name] and d not in implied]
    return {name: nodes[name] for name in order}


def _topological(declared: list[str], deps: dict[str, set[str]]) -> list[str]:
    order: list[str] = []
    left = list(declared)
    while left:
        ready = next((n for n in left if deps[n] <= set(order)), None)
        if ready is None:
            raise GraphError(
                f"stages read each other's output in a circle: {', '.join(left)}; "
                "check filters.stages and edit.source"
            )
        order.append(ready)
        left.remove(ready)
    return order


def shard_fingerprints(
    stages: dict[str, type[Stage]], config: BuildConfig, shard: ShardSpec
) -> dict[str, str]:
    """Every stage's fingerprint for ``shard``: its name, version, the code version, its own
    settings and what it reads (the fingerprints of its direct dependencies, or the shard's
    image ids for a stage that reads no other stage)."""
    out: dict[str, str] = {}
    for name, node in stage_graph(stages, config).items():
        cls = stages[name]
        payload = {"skipped": True} if node.skipped else cls.fingerprint_payload(config)
        deps = [out[d] for d in node.depends_on]
        upstream = shard.digest() if not deps else deps[0] if len(deps) == 1 else deps
        out[name] = stable_hash([name, cls.version, __version__, payload, upstream])
    return out
