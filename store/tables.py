"""Parquet tables as a store holds them (manifests, history): read with their checksum checked, a
damaged one an IntegrityError naming its URI and how to recover (esgd.core.tables does the checks)."""

import pyarrow as pa

from esgd.core import tables
from esgd.core.records import Damaged
from esgd.store.base import Store, damaged


def read_rows(store: Store, key: str, cls) -> list:
    """The rows of the table at `key` as `cls` objects; NotFound if absent, IntegrityError if its
    bytes are not those written, SchemaError if it is another schema's."""
    data = store.get(key)
    try:
        return tables.rows(data, cls, key)
    except Damaged as error:
        raise damaged(store, error) from None


def read_table(store: Store, key: str, cls) -> pa.Table:
    """read_rows(), as an Arrow table (unvalidated rows: the history, for analysis)."""
    data = store.get(key)
    try:
        return tables.read_table(data, cls, key)
    except Damaged as error:
        raise damaged(store, error) from None
