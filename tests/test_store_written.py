"""Store.keep_written: a one-process run reads back the checkpoints it wrote from memory, without a
read or a checksum, and gets exactly the bytes their references name; a store that does not keep
them (the default: pods) reads and verifies every time."""

import hashlib

import pytest

from esgd.controller.local import execute
from esgd.controller.report import read_history
from esgd.controller.runs import create_or_resume
from esgd.core.spec import parse_spec
from esgd.store.base import IntegrityError
from esgd.store.uri import open_store
from esgd.worker.run import Run

BLOB = bytes(range(256)) * 64  # 16 KiB


def damaged(store, ref: dict) -> None:
    """Overwrite the stored object behind the store's back (put does not touch what is kept)."""
    store.put(ref["checkpoint"], BLOB[:100])


def test_a_kept_blob_is_read_back_from_memory(store_uri):
    store = open_store(store_uri)
    store.keep_written(1 << 20)
    ref = store.put_blob("runs/r/a/1.arrow", BLOB)
    streamed = store.put_stream("runs/r/b/1.arrow", (BLOB[i : i + 1000] for i in range(0, len(BLOB), 1000)))
    assert streamed["sha256"] == hashlib.sha256(BLOB).hexdigest() and streamed["size"] == len(BLOB)
    for r in (ref, streamed):
        damaged(store, r)
        assert store.get_verified(r) == BLOB  # not the damaged object: it was not read
        with store.open_verified(r) as reader:
            assert reader.read(100) + reader.read() == BLOB
            reader.finish()
    assert open_store(store_uri).get(ref["checkpoint"]) == BLOB[:100]  # the store really was changed


def test_without_keeping_every_read_is_verified(store_uri):
    store = open_store(store_uri)
    ref = store.put_blob("runs/r/a/1.arrow", BLOB)
    damaged(store, ref)
    with pytest.raises(IntegrityError, match="runs/r/a/1.arrow"):
        store.get_verified(ref)


def test_only_the_referenced_blob_is_handed_back(tmp_path):
    store = open_store(str(tmp_path))
    store.keep_written(1 << 20)
    ref = store.put_blob("runs/r/a/1.arrow", BLOB)
    other = store.put_blob("runs/r/a/1.arrow", BLOB[::-1])  # the same key written again
    assert store.get_verified(other) == BLOB[::-1]
    with pytest.raises(IntegrityError):  # the first reference no longer matches what is kept or stored
        store.get_verified(ref)


def test_the_budget_drops_the_oldest_and_skips_large_blobs(tmp_path):
    store = open_store(str(tmp_path))
    store.keep_written(8 * len(BLOB))  # room for 8; a blob over 1/8 of it is never kept
    refs = [store.put_blob(f"runs/r/m{i}/1.arrow", BLOB) for i in range(10)]
    large = store.put_stream("runs/r/large/1.arrow", iter([BLOB, b"x"]))
    for ref in refs + [large]:
        damaged(store, ref)
    with pytest.raises(IntegrityError):
        store.get_verified(refs[0])  # dropped: the two oldest made room for the last two
    with pytest.raises(IntegrityError):
        store.get_verified(refs[1])
    assert all(store.get_verified(ref) == BLOB for ref in refs[2:])
    with pytest.raises(IntegrityError):
        store.get_verified(large)


def test_a_local_run_keeps_what_it_writes_and_its_history_does_not_change(tmp_path, monkeypatch):
    spec = parse_spec({"seed": 4, "task": "esgd.worker.tasks.digits:task", "task_args": {"hidden": 8}, "generations": 2,
                       "population": {"mu": 4, "offspring": 4}, "sgd": {"batch_size": [64]}})
    histories, checkpoint_reads = {}, {}
    for keep in (True, False):
        store, reads = open_store(str(tmp_path / str(keep))), []
        for name in ("get", "open_read"):  # every way an object is read
            real = getattr(store, name)
            monkeypatch.setattr(store, name, lambda key, real=real: (reads.append(key), real(key))[1])
        if not keep:  # as a pod's store: nothing kept
            monkeypatch.setattr(store, "keep_written", lambda budget: None)
        run_id, _ = create_or_resume(store, spec, "r")
        execute(Run(store, run_id, spec, "cpu"), progress=lambda line: None)
        assert store.written.budget == 0  # the caller's store holds nothing once the run is done
        histories[keep] = read_history(store, run_id)
        checkpoint_reads[keep] = sum(key.endswith(".arrow") for key in reads)
    assert checkpoint_reads[True] == 0 < checkpoint_reads[False]
    assert histories[True] == histories[False]
