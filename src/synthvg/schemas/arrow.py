"""Arrow schemas derived from the pydantic records, so the two can never drift.

Every table's Parquet schema is computed from its record model: adding a field to a record
adds the column. Nested models become structs, ``list[X]`` becomes ``list<X>``, ``X | None``
becomes a nullable column, ``Literal``/``Enum`` become strings.
"""

from __future__ import annotations

import datetime as dt
import enum
import types
import typing
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np
import pyarrow as pa
from pydantic import BaseModel

_SCALARS: dict[type, pa.DataType] = {
    bool: pa.bool_(),
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    bytes: pa.binary(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}


def _unwrap_optional(tp: typing.Any) -> tuple[typing.Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"only X | None unions map to Arrow, got {tp!r}")
        return args[0], True
    return tp, False


def arrow_type(tp: typing.Any) -> pa.DataType:
    """The Arrow type of one annotation (nullability is handled by the caller)."""
    tp, _ = _unwrap_optional(tp)
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return pa.string()
    if origin in (list, tuple, Sequence):
        args = typing.get_args(tp)
        return pa.list_(arrow_type(args[0]))
    if origin is dict:
        key, value = typing.get_args(tp)
        return pa.map_(arrow_type(key), arrow_type(value))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return pa.string()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return pa.struct(_fields(tp))
    if tp in _SCALARS:
        return _SCALARS[tp]
    raise TypeError(f"no Arrow type for {tp!r}")


def _fields(model: type[BaseModel]) -> list[pa.Field]:
    out = []
    for name, info in model.model_fields.items():
        _, nullable = _unwrap_optional(info.annotation)
        field = pa.field(name, arrow_type(info.annotation), nullable=nullable)
        if info.description:
            field = field.with_metadata({"description": info.description})
        out.append(field)
    return out


@cache
def schema_of(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a record model (cached: models are immutable classes)."""
    doc = (model.__doc__ or "").strip().splitlines()
    meta = {"record": model.__name__}
    if doc:
        meta["description"] = doc[0]
    return pa.schema(_fields(model), metadata=meta)


def to_table(model: type[BaseModel], records: Iterable[BaseModel]) -> pa.Table:
    """Records -> Arrow table with exactly the model's schema (empty input gives an empty table)."""
    rows = [r.model_dump(mode="python") for r in records]
    return pa.Table.from_pylist(rows, schema=schema_of(model))


def _repeat(scalar: pa.Scalar, rows: int) -> pa.Array:
    """``scalar`` on ``rows`` rows (``pa.repeat`` refuses an empty list)."""
    if not scalar.is_valid:
        return pa.nulls(rows, scalar.type)
    if pa.types.is_list(scalar.type):
        values = scalar.values
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * len(values))
        tiled = values.take(pa.array(np.tile(np.arange(len(values)), rows)))
        return pa.ListArray.from_arrays(offsets, tiled, type=scalar.type)
    if pa.types.is_string(scalar.type) and len(scalar.as_py().encode()) * rows < 2**31:
        # pa.repeat copies the string value by value: build the buffers at once
        data = scalar.as_py().encode()
        offsets = np.arange(rows + 1, dtype=np.int32) * len(data)
        return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data * rows))
    return pa.repeat(scalar, rows)


def table_from_columns(
    model: type[BaseModel], columns: dict[str, typing.Any], rows: int
) -> pa.Table:
    """Columns -> Arrow table with exactly the model's schema, without records in between (the
    vectorised writers' :func:`to_table`). A column is an Arrow array or a list of values; a
    ``pa.Scalar`` or plain scalar is repeated on every row; a field left out takes its default,
    as ``model_dump`` would write it (a required field left out is an error)."""
    schema = schema_of(model)
    arrays = []
    for f in schema:
        if f.name in columns:
            value = columns[f.name]
        else:
            info = model.model_fields[f.name]
            if info.is_required():
                raise ValueError(f"{model.__name__}.{f.name} is required")
            value = pa.scalar(info.get_default(call_default_factory=True), type=f.type)
        if isinstance(value, (pa.Array, pa.ChunkedArray)):  # chunks are kept, not copied
            array = value if value.type == f.type else value.cast(f.type)
        elif isinstance(value, list):
            array = pa.array(value, type=f.type)
        else:
            scalar = value if isinstance(value, pa.Scalar) else pa.scalar(value, type=f.type)
            array = _repeat(scalar.cast(f.type), rows)
        if len(array) != rows:
            raise ValueError(f"{model.__name__}.{f.name}: {len(array)} values for {rows} rows")
        arrays.append(array if isinstance(array, pa.ChunkedArray) else pa.chunked_array([array]))
    return pa.Table.from_arrays(arrays, schema=schema)


def from_table(model: type[BaseModel], table: pa.Table) -> list[BaseModel]:
    """Arrow table -> validated records (used where a stage wants typed rows back)."""
    return [model.model_validate(row) for row in table.to_pylist()]
