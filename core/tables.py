"""Parquet tables of typed rows: population manifests (records.Member) and the history
(records.HistoryRow). A table's columns derive from its row type's fields; each file carries the
row type's schema name and version in its metadata, and a reader refuses a file of another schema
instead of misreading it. Each file also carries a SHA-256 of its values and of what they are
(CHECKSUM_KEY: schema name, part list, and each column as JSON, as a reader gets them), checked on
read: a torn or altered file raises records.Damaged naming its key, whatever byte was hit. Files
written before checksums existed have none and are read unchecked (a torn one still fails to parse,
and says so).
"""

import hashlib
import io
import json
import types
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from functools import cache

import pyarrow as pa
import pyarrow.parquet as pq

from esgd.core.records import OTHER_VERSION, Damaged, SchemaError, to_dict, validate

SCHEMA_KEY = b"esgd.schema"
PARTS_KEY = b"esgd.parts"  # merged files (history.parquet): the part keys they hold, in order
CHECKSUM_KEY = b"esgd.sha256"  # SHA-256 of the values and of what they are (_checksum), hex
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


def _checksum(table: pa.Table, metadata: dict) -> bytes:
    """The SHA-256 of what a reader gets: the metadata that says what the rows are (schema, parts)
    and each column's values as JSON (Python's values, as Table.to_pylist gives them: exact floats,
    NaN included), in the schema's order."""
    digest = hashlib.sha256()
    said = [(k.decode(), metadata[k].decode(errors="replace")) for k in (SCHEMA_KEY, PARTS_KEY) if k in metadata]
    digest.update(json.dumps(said).encode())
    for name, column in zip(table.column_names, table.columns):
        digest.update(b"\n" + json.dumps([name, column.to_pylist()], sort_keys=True, default=str).encode())
    return digest.hexdigest().encode()


def _write(table: pa.Table, metadata: dict) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({**metadata, CHECKSUM_KEY: _checksum(table, metadata)}), sink)
    return sink.getvalue()


def to_parquet(rows: list, cls) -> bytes:
    table = pa.Table.from_pylist([_flat(cls, to_dict(row)) for row in rows], schema=schema(cls))
    return _write(table, schema(cls).metadata)


def _read(data: bytes, cls, what: str) -> pa.Table:
    """The table, its checksum checked (when it has one); Damaged naming `what` if the bytes do
    not parse or do not match, SchemaError if it is another schema's."""
    try:
        table = pq.read_table(io.BytesIO(data))
        metadata = table.schema.metadata or {}
        expected = metadata.get(CHECKSUM_KEY)
        matches = expected is None or _checksum(table, metadata) == expected
    except (pa.ArrowException, OSError, ValueError, EOFError):
        raise Damaged(what, "not a readable Parquet file: torn or altered") from None
    if not matches:
        raise Damaged(what, "checksum mismatch: altered since it was written")
    found = metadata.get(SCHEMA_KEY)
    if found is None:  # every version wrote one: its metadata was hit
        raise Damaged(what, "its metadata is gone: altered, or not a table esgd wrote")
    if found != cls.SCHEMA.encode():
        raise SchemaError(f"{what}: schema {found!r}, expected {cls.SCHEMA.encode()!r} ({OTHER_VERSION})")
    return table


def read_table(data: bytes, cls, what: str = "file") -> pa.Table:
    """The table in `data` (Parquet), its checksum checked; Damaged or SchemaError naming `what`."""
    return _read(data, cls, what)


def rows(data: bytes, cls, what: str = "file") -> list:
    """The table's rows as `cls` objects, each validated."""
    return [validate(cls, row, what) for row in _read(data, cls, what).to_pylist()]


def merge_parts(
    previous: bytes | None, part_keys: list[str], read: Callable[[str], bytes], cls, what: str = "merged file"
) -> bytes | None:
    """One table of the parts (in the order of `part_keys`), with the keys it holds in its metadata;
    None when `previous` (an earlier merge, `what`) holds exactly these parts already. When
    `previous` holds the first of them, only the newer parts are read: a run's history is merged
    every generation, and reading every part again would make each generation cost O(generations).
    Every table read is checked: Damaged names `what` or the part's key (the caller rebuilds it)."""
    metadata = schema(cls).metadata
    tables, done = [], []
    if previous is not None:
        table = _read(previous, cls, what)
        held = (table.schema.metadata or {}).get(PARTS_KEY)  # absent: written before parts were recorded
        try:
            done = json.loads(held) if held else None
        except ValueError:  # a file without a checksum (an older version's), its part list altered
            raise Damaged(what, "its part list is not readable: altered") from None
        if done == part_keys:
            return None
        if done is not None and done == part_keys[: len(done)]:
            tables.append(table)
        else:  # unknown parts, a part removed or new in the middle: merge everything again
            done = []
    tables += [_read(read(key), cls, key) for key in part_keys[len(done) :]]
    tables = [t.replace_schema_metadata(metadata) for t in tables]
    table = pa.concat_tables(tables) if tables else schema(cls).empty_table()
    return _write(table, {**metadata, PARTS_KEY: json.dumps(part_keys).encode()})
