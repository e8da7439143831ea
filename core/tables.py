"""Parquet tables of typed rows: population manifests (records.Member) and the history
(records.HistoryRow). A table's columns derive from its row type's fields; each file carries the
row type's schema name and version in its metadata, and a reader refuses a file of another schema
instead of misreading it.
"""

import io
import json
import types
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from functools import cache

import pyarrow as pa
import pyarrow.parquet as pq

from esgd.core.records import OTHER_VERSION, SchemaError, to_dict, validate

SCHEMA_KEY = b"esgd.schema"
PARTS_KEY = b"esgd.parts"  # merged files (history.parquet): the part keys they hold, in order
_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int32(), bool: pa.bool_()}


def _arrow_type(annotation, field) -> pa.DataType:
    if field is not None and "arrow" in field.metadata:
        return getattr(pa, field.metadata["arrow"])()
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _arrow_type(args[0], field)  # X | None: every column is nullable
    if typing.get_origin(annotation) is tuple:  # tuple[X, ...]
        return pa.list_(_arrow_type(args[0], None))
    if is_dataclass(annotation):
        return pa.struct(_fields(annotation))
    return _ARROW[annotation]


def _inner(annotation):
    """The dataclass in `X | None`, or X."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _fields(cls) -> list[pa.Field]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.metadata.get("flatten"):
            out += _fields(_inner(hints[f.name]))
        else:
            out.append(pa.field(f.name, _arrow_type(hints[f.name], f)))
    return out


@cache
def schema(cls) -> pa.Schema:
    """The Parquet schema of a row type: a column per field (nested rows as structs, or as their
    own columns where the field says `flatten`), its SCHEMA name in the metadata."""
    return pa.schema(_fields(cls), metadata={SCHEMA_KEY: cls.SCHEMA.encode()})


@cache
def _flattened(cls) -> dict[str, tuple[str, ...]]:
    """The fields of `cls` that become columns of their own: field -> the nested fields' names."""
    hints = typing.get_type_hints(cls)
    flat = [f.name for f in fields(cls) if f.metadata.get("flatten")]
    return {name: tuple(x.name for x in fields(_inner(hints[name]))) for name in flat}


def _flat(cls, row: dict) -> dict:
    for name, columns in _flattened(cls).items():
        row.update(row.pop(name) or dict.fromkeys(columns))
    return row


def to_parquet(rows: list, cls) -> bytes:
    table = pa.Table.from_pylist([_flat(cls, to_dict(row)) for row in rows], schema=schema(cls))
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_table(data: bytes, cls, what: str = "file") -> pa.Table:
    table = pq.read_table(io.BytesIO(data))
    found = (table.schema.metadata or {}).get(SCHEMA_KEY)
    if found != cls.SCHEMA.encode():
        raise SchemaError(f"{what}: schema {found!r}, expected {cls.SCHEMA.encode()!r} ({OTHER_VERSION})")
    return table


def rows(data: bytes, cls, what: str = "file") -> list:
    """The table's rows as `cls` objects, each validated."""
    return [validate(cls, row, what) for row in read_table(data, cls, what).to_pylist()]


def merge_parts(previous: bytes | None, part_keys: list[str], read: Callable[[str], bytes], cls) -> bytes | None:
    """One table of the parts (in the order of `part_keys`), with the keys it holds in its metadata;
    None when `previous` (an earlier merge) holds exactly these parts already. When `previous`
    holds the first of them, only the newer parts are read: a run's history is merged every
    generation, and reading every part again would make each generation cost O(generations)."""
    metadata = schema(cls).metadata
    tables, done = [], []
    if previous is not None:
        table = read_table(previous, cls)
        held = (table.schema.metadata or {}).get(PARTS_KEY)  # absent: written before parts were recorded
        done = json.loads(held) if held else None
        if done == part_keys:
            return None
        if done is not None and done == part_keys[: len(done)]:
            tables.append(table)
        else:  # unknown parts, a part removed or new in the middle: merge everything again
            done = []
    tables += [read_table(read(key), cls, key) for key in part_keys[len(done) :]]
    tables = [t.replace_schema_metadata(metadata) for t in tables]
    table = pa.concat_tables(tables) if tables else schema(cls).empty_table()
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({**metadata, PARTS_KEY: json.dumps(part_keys).encode()}), sink)
    return sink.getvalue()
