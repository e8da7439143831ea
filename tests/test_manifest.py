"""Parquet files between steps: the history is merged from its per-generation parts."""

from esgd.core.manifest import HISTORY, from_parquet, merge_parts, to_parquet


def _part(generation: int) -> bytes:
    rows = [{"generation": generation, "round": -1, "member": f"g{generation}-m{i}", "role": "parent", "fitness": 1.0 / (i + 1),
             "elite": i == 0, "selected": True, "parents": [], "backoffs": 0, "epochs": 1} for i in range(3)]
    return to_parquet(rows, HISTORY)


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
    old = to_parquet(from_parquet(old, HISTORY), HISTORY)  # as older versions wrote it: no part list
    merged = merge_parts(old, ["gen-0", "gen-1", "gen-2"], parts.get, HISTORY)
    assert [r["generation"] for r in from_parquet(merged, HISTORY)] == [0] * 3 + [1] * 3 + [2] * 3
