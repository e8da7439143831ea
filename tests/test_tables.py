"""Parquet tables of typed rows: columns derived from the row types, schemas checked on read, the
history merged from its per-generation parts."""

import io

import pyarrow.parquet as pq
import pytest

from esgd.core.hparams import HParams
from esgd.core.records import BlobRef, HistoryRow, Member, SchemaError
from esgd.core.tables import merge_parts, read_table, rows, schema, to_parquet

HISTORY = HistoryRow


def from_parquet(data: bytes, cls) -> list[dict]:
    return read_table(data, cls).to_pylist()


def _part(generation: int) -> bytes:
    return to_parquet(
        [
            HistoryRow(
                generation=generation,
                round=-1,
                member=f"g{generation}-m{i}",
                role="parent",
                fitness=1.0 / (i + 1),
                fitness_before=None,
                elite=i == 0,
                selected=True,
                hparams=None,
                parents=(),
                sigma=None,
                backoffs=0,
                epochs=1,
            )
            for i in range(3)
        ],
        HistoryRow,
    )


def test_history_columns_derive_from_the_row_types():
    """One column per HistoryRow field, the hyper-parameters flattened into HParams' own columns, in
    the order and with the types of history/1 (the format history.parquet has always had)."""
    names = [f.name for f in schema(HistoryRow)]
    assert names == [
        "generation",
        "round",
        "member",
        "role",
        "fitness",
        "fitness_before",
        "elite",
        "selected",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "beta1",
        "beta2",
        "batch_size",
        "parents",
        "sigma",
        "backoffs",
        "epochs",
    ]
    assert [str(f.type) for f in schema(HistoryRow)][:9] == [
        "int32",
        "int32",
        "string",
        "string",
        "double",
        "double",
        "bool",
        "bool",
        "string",
    ]
    assert schema(HistoryRow).metadata == {b"esgd.schema": b"history/1"}
    assert str(schema(Member).field("hparams").type).startswith("struct<optimizer: string, lr: double")


def test_manifest_rows_round_trip_and_other_schemas_are_refused():
    member = Member(
        "g0001-r0-o003",
        BlobRef("runs/r/x.arrow", "ab" * 32, 1 << 33),
        float("inf"),
        "offspring",
        1,
        ("init-000", "init-002"),
        True,
        HParams("adam", 1e-3, 0.0, 0.0, 0.9, 0.999, 32),
    )
    data = to_parquet([member, Member("init-001", member.checkpoint, 0.5, "parent", 0, (), False, None)], Member)
    assert rows(data, Member)[0] == member and rows(data, Member)[1].hparams is None
    with pytest.raises(SchemaError, match="schema b'manifest/2', expected b'history/1' \\(written by another version"):
        rows(data, HistoryRow, "gen-0001/parents.parquet")


def test_history_merges_only_the_new_parts_and_matches_a_full_merge():
    parts = {f"history/gen-{g:04d}.parquet": _part(g) for g in range(4)}
    reads = []

    def read(key):
        reads.append(key)
        return parts[key]

    names = sorted(parts)
    merged = None
    for count in range(1, 5):  # one more part each generation
        reads.clear()
        merged = merge_parts(merged, names[:count], read, HISTORY)
        assert reads == [names[count - 1]]  # earlier parts come from the previous merge
    assert from_parquet(merged, HISTORY) == from_parquet(merge_parts(None, names, read, HISTORY), HISTORY)
    assert [r["generation"] for r in from_parquet(merged, HISTORY)] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert merge_parts(merged, names, read, HISTORY) is None  # nothing new: nothing to write


def test_history_is_merged_again_when_the_earlier_merge_does_not_prefix_the_parts():
    parts = {f"gen-{g}": _part(g) for g in range(3)}
    stale = merge_parts(None, ["gen-0", "gen-2"], parts.get, HISTORY)
    reads = []
    merged = merge_parts(stale, ["gen-0", "gen-1", "gen-2"], lambda key: reads.append(key) or parts[key], HISTORY)
    assert reads == ["gen-0", "gen-1", "gen-2"]
    assert [r["generation"] for r in from_parquet(merged, HISTORY)] == [0] * 3 + [1] * 3 + [2] * 3


def test_a_history_merged_without_its_part_list_is_merged_again():
    parts = {f"gen-{g}": _part(g) for g in range(3)}
    old = merge_parts(None, ["gen-0", "gen-1"], parts.get, HISTORY)
    sink = io.BytesIO()  # as older versions wrote it: no part list
    pq.write_table(read_table(old, HISTORY).replace_schema_metadata(schema(HISTORY).metadata), sink)
    old = sink.getvalue()
    merged = merge_parts(old, ["gen-0", "gen-1", "gen-2"], parts.get, HISTORY)
    assert [r["generation"] for r in from_parquet(merged, HISTORY)] == [0] * 3 + [1] * 3 + [2] * 3
