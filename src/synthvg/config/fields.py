"""Markers that config fields carry in their type, and the functions that read them.

A field's role is part of its declaration, never a list kept elsewhere:

- :data:`InputPath` (and :data:`OutputPath`): a file or folder. :func:`resolve_paths` makes it
  absolute against the config file's folder, and :func:`input_paths` lists every input path a
  build reads (the CLI and preflight check them), so a new path field needs nothing else.
- :class:`SpeedOnly`: the setting changes speed, memory, cost or where a secret lives, never
  the rows a stage writes for a shard. :func:`output_settings` leaves it out, so fingerprints
  take every other field automatically: a new unmarked field changes the fingerprint.

This module imports nothing of synthvg, so any config module (``synthvg.llm.config`` too) can
use the markers.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class SpeedOnly:
    """Metadata of a field that never changes a stage's rows (batch sizes, devices, rate limits,
    budgets, where the API key lives): fingerprints leave it out. ``why`` says so when it is
    not obvious."""

    why: str = ""


@dataclass(frozen=True)
class PathField:
    """Metadata of a path field: relative values resolve against the config file's folder;
    ``input`` paths are what a build reads (checked before it starts)."""

    input: bool = True


#: A file or folder the build reads (a relative one is relative to the config file's folder).
InputPath = Annotated[str, PathField(input=True)]
#: A file, folder or fsspec URL the build writes.
OutputPath = Annotated[str, PathField(input=False)]


def _markers(annotation: Any) -> Iterator[Any]:
    """Every ``Annotated`` metadata object inside ``annotation`` (through unions)."""
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        yield from meta
        yield from _markers(base)
        return
    for arg in typing.get_args(annotation):
        yield from _markers(arg)


def field_marker(field: FieldInfo, kind: type) -> Any | None:
    """The field's marker of type ``kind`` (None: not marked)."""
    for meta in [*field.metadata, *_markers(field.annotation)]:
        if isinstance(meta, kind):
            return meta
    return None


def _children(value: Any, key: str) -> Iterator[tuple[str, BaseModel]]:
    if isinstance(value, BaseModel):
        yield key, value
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _children(v, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _children(v, f"{key}.{k}")


def _unused(model: BaseModel) -> frozenset[str]:
    """Fields whose settings the model's own choice leaves unused (a proposer not chosen)."""
    unused = getattr(model, "unused_fields", None)
    return frozenset(unused()) if callable(unused) else frozenset()


def iter_paths(
    model: BaseModel, prefix: str = ""
) -> Iterator[tuple[str, BaseModel, str, PathField]]:
    """``(key, owner, field name, marker)`` of every set path field in ``model``, at any depth,
    skipping sections the model says it does not use."""
    skip = _unused(model)
    for name, field in type(model).model_fields.items():
        if name in skip:
            continue
        value = getattr(model, name)
        key = f"{prefix}{name}"
        marker = field_marker(field, PathField)
        if marker is not None and isinstance(value, str):
            yield key, model, name, marker
        for child_key, child in _children(value, key):
            yield from iter_paths(child, child_key + ".")


def is_url(path: str) -> bool:
    return "://" in path


def resolve_path(path: str, base: Path) -> str:
    if is_url(path) or os.path.isabs(path):
        return path
    return str((base / os.path.expanduser(path)).resolve())


M = typing.TypeVar("M", bound=BaseModel)


def resolve_paths(model: M, base: Path) -> M:
    """``model`` with every relative path field made absolute against ``base``, at any depth
    (sections not in use too: choosing one later must not change what its paths mean)."""
    update: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field_marker(field, PathField) is not None and isinstance(value, str):
            update[name] = resolve_path(value, base)
        elif isinstance(value, BaseModel):
            update[name] = resolve_paths(value, base)
        elif isinstance(value, list) and any(isinstance(v, BaseModel) for v in value):
            update[name] = [
                resolve_paths(v, base) if isinstance(v, BaseModel) else v for v in value
            ]
    changed = {k: v for k, v in update.items() if v is not getattr(model, k)}
    return model.model_copy(update=changed) if changed else model


def input_paths(model: BaseModel) -> list[tuple[str, str]]:
    """``(key, path)`` of every file or folder ``model`` says a build reads: every
    :data:`InputPath` field that is set, in sections in use (``regions.proposer`` picks one)."""
    return [
        (key, getattr(owner, name))
        for key, owner, name, marker in iter_paths(model)
        if marker.input
    ]


def output_settings(model: BaseModel) -> dict:
    """``model`` as JSON without its :class:`SpeedOnly` fields, at any depth: what a
    fingerprint hashes of a config section."""
    return _strip(model, model.model_dump(mode="json"))


def _strip(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        fields = type(value).model_fields
        return {
            k: _strip(getattr(value, k, None), v)
            for k, v in dumped.items()
            if k not in fields or field_marker(fields[k], SpeedOnly) is None
        }
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [_strip(a, b) for a, b in zip(value, dumped, strict=True)]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {k: _strip(value.get(k), v) for k, v in dumped.items()}
    return dumped
