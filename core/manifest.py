"""Parquet schemas of manifests (the population between steps) and of the history.

Each file carries its schema name and version in the Parquet metadata; a reader refuses a file
whose schema it does not know, instead of misreading it.
"""

import io
import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_KEY = b"esgd.schema"
PARTS_KEY = b"esgd.parts"  # merged files (history.parquet): the part keys they hold, in order

MANIFEST = pa.schema(
    [
        ("member", pa.string()),
        ("checkpoint", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("fitness", pa.float64()),
        ("role", pa.string()),  # parent, offspring or reference: what it was in the pool it survived
        ("born", pa.int32()),  # generation it was made in (0 for the initial population)
        ("parents", pa.list_(pa.string())),
        ("elite", pa.bool_()),
        ("hparams", pa.string()),  # JSON of the hyper-parameters it last trained with ("" if none)
    ],
    metadata={SCHEMA_KEY: b"manifest/1"},
)

HISTORY = pa.schema(
    [
        ("generation", pa.int32()),
        ("round", pa.int32()),  # evolution round an offspring was born in; -1 for parents
        ("member", pa.string()),
        ("role", pa.string()),  # parent, offspring, reference or finetune
        ("fitness", pa.float64()),  # after training (parents) or at birth (offspring)
        ("fitness_before", pa.float64()),  # parents: fitness when the generation began
        ("elite", pa.bool_()),
        ("selected", pa.bool_()),  # survives into the next generation
        ("optimizer", pa.string()),
        ("lr", pa.float64()),
        ("momentum", pa.float64()),
        ("weight_decay", pa.float64()),
        ("beta1", pa.float64()),
        ("beta2", pa.float64()),
        ("batch_size", pa.int32()),
        ("parents", pa.list_(pa.string())),
        ("sigma", pa.float64()),  # mutation std an offspring was made with
        ("backoffs", pa.int32()),
        ("epochs", pa.int32()),
    ],
    metadata={SCHEMA_KEY: b"history/1"},
)


class SchemaError(ValueError):
    """A Parquet file of an unknown or different schema."""


def to_parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_table(data: bytes, schema: pa.Schema, what: str = "file") -> pa.Table:
    table = pq.read_table(io.BytesIO(data))
    found = (table.schema.metadata or {}).get(SCHEMA_KEY)
    if found != schema.metadata[SCHEMA_KEY]:
        raise SchemaError(f"{what}: schema {found!r}, expected {schema.metadata[SCHEMA_KEY]!r}")
    return table


def from_parquet(data: bytes, schema: pa.Schema, what: str = "file") -> list[dict]:
    return read_table(data, schema, what).to_pylist()


def merge_parts(previous: bytes | None, part_keys: list[str], read: Callable[[str], bytes], schema: pa.Schema) -> bytes | None:
    """One table of the parts (in the order of `part_keys`), with the keys it holds in its metadata;
    None when `previous` (an earlier merge) holds exactly these parts already. When `previous`
    holds the first of them, only the newer parts are read: a run's history is merged every
    generation, and reading every part again would make each generation cost O(generations)."""
    tables, done = [], []
    if previous is not None:
        table = read_table(previous, schema)
        held = (table.schema.metadata or {}).get(PARTS_KEY)  # absent: written before parts were recorded
        done = json.loads(held) if held else None
        if done == part_keys:
            return None
        if done is not None and done == part_keys[: len(done)]:
            tables.append(table)
        else:  # unknown parts, a part removed or new in the middle: merge everything again
            done = []
    tables += [read_table(read(key), schema, key) for key in part_keys[len(done) :]]
    tables = [t.replace_schema_metadata(schema.metadata) for t in tables]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({**schema.metadata, PARTS_KEY: json.dumps(part_keys).encode()}), sink)
    return sink.getvalue()
