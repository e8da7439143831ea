"""Imported datasets: Parquet shards in a store, written by `esgd data import`, read by the tasks.

A dataset lives under one URI (a local directory, file:// or s3://bucket/prefix), normally
`<store>/data/<name>`:

    dataset.json                            {"format", "kind", "meta", "splits": {split: [shard, ...]}}
    <split>/<import>/part-00000.parquet     one shard: a Parquet table, columns depend on the kind
    <split>/<import>/part-00001.parquet     ...

`dataset.json` is written last and names every shard with its row count, size and sha256, so a
reader only ever reads the shards it lists and checks each one. Each import writes its shards
under a fresh <import> id, so a failed or half-finished re-import leaves the previous dataset
whole (its shards stay in the store until you delete them). Nothing here unpickles: shards are
Parquet, the manifest is JSON.
"""

import io
import json
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from esgd.core.records import BlobRef
from esgd.store.base import IntegrityError, NotFound, attempt_id
from esgd.store.blobs import Blobs
from esgd.store.uri import open_store

FORMAT = "esgd-dataset/1"
MANIFEST = "dataset.json"


@lru_cache(maxsize=8)
def _store(uri: str):
    """One store object per dataset URI and process (an S3 client takes a while to set up)."""
    return open_store(uri)


def _missing(uri: str) -> FileNotFoundError:
    return FileNotFoundError(
        2, "No such file", f"{uri.rstrip('/')}/{MANIFEST} (import the data with `esgd data import`)"
    )


def manifest(uri: str, kind: str) -> dict:
    """The dataset's manifest; FileNotFoundError if there is none, TypeError if it is another kind."""
    try:
        meta = json.loads(_store(uri).get(MANIFEST))
    except NotFound:
        raise _missing(uri) from None
    if meta.get("format") != FORMAT:
        raise TypeError(f"{uri}: not an ESGD dataset (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("kind") != kind:
        raise TypeError(f"{uri} holds a {meta.get('kind')!r} dataset, this task reads {kind!r}")
    return meta


def read_split(uri: str, kind: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """All shards of one split as one table (checksums verified)."""
    meta = manifest(uri, kind)
    if split not in meta["splits"]:
        raise TypeError(f"{uri} has no split {split!r} (it has {', '.join(sorted(meta['splits']))})")
    blobs = Blobs(_store(uri))
    tables = []
    for shard in meta["splits"][split]:
        try:
            data = blobs.get(BlobRef(shard["key"], shard["sha256"], shard["size"]))
        except IntegrityError as error:
            raise IntegrityError(f"dataset {uri}: {error}") from None
        tables.append(pq.read_table(io.BytesIO(data), columns=columns))
    return pa.concat_tables(tables) if tables else pa.table({})


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index, length) of each run of equal consecutive values: the utterances of frames
    stored utterance by utterance."""
    change = np.ones(len(values), dtype=bool)
    change[1:] = values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, len(values)))


def write(
    store_uri: str, name: str, kind: str, splits: dict[str, Iterable[pa.Table]], meta: dict | None = None
) -> tuple[str, dict]:
    """Write the tables of each split as shards under `<store>/data/<name>`; returns (dataset URI,
    manifest). Each table given becomes one shard."""
    root = f"{open_store(store_uri).uri.rstrip('/')}/data/{name}"
    store = open_store(root)
    store.check_writable()
    blobs = Blobs(store)
    out = {"format": FORMAT, "kind": kind, "meta": meta or {}, "splits": {}}
    attempt = attempt_id()
    for split, tables in splits.items():
        shards = []
        for index, table in enumerate(tables):
            sink = io.BytesIO()
            pq.write_table(table, sink)
            ref = blobs.put(f"{split}/{attempt}/part-{index:05d}.parquet", sink.getvalue())
            shards.append({"key": ref.key, "rows": table.num_rows, "size": ref.size, "sha256": ref.sha256})
        out["splits"][split] = shards
    store.put(MANIFEST, json.dumps(out, indent=1, sort_keys=True).encode())
    return root, out
