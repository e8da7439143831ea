"""Blobs keeping what this process wrote (Kept): a one-process run reads back the checkpoints it
wrote from memory, without a read or a checksum, and gets exactly the bytes their references name;
Blobs that keep nothing (the default: pods) read and verify every time."""

import hashlib

import pytest

from esgd.analysis.report import read_history
from esgd.controller.driver import Driver
from esgd.controller.local import InProcess
from esgd.controller.runs import create_or_resume
from esgd.core.records import BlobRef
from esgd.core.spec import parse_spec
from esgd.store.base import IntegrityError
from esgd.store.blobs import Blobs
from esgd.store.uri import open_store

from helpers import small

BLOB = bytes(range(256)) * 64  # 16 KiB


def damaged(blobs: Blobs, ref: BlobRef) -> None:
    """Overwrite the stored object behind the Blobs' back (the store's put does not touch what is kept)."""
    blobs.store.put(ref.key, BLOB[:100])


def test_a_kept_blob_is_read_back_from_memory(store_uri):
    blobs = Blobs(open_store(store_uri), keep=1 << 20)
    ref = blobs.put("runs/r/a/1.arrow", BLOB)
    streamed = blobs.put_stream("runs/r/b/1.arrow", (BLOB[i : i + 1000] for i in range(0, len(BLOB), 1000)))
    assert streamed.sha256 == hashlib.sha256(BLOB).hexdigest() and streamed.size == len(BLOB)
    for r in (ref, streamed):
        damaged(blobs, r)
        assert blobs.get(r) == BLOB  # not the damaged object: it was not read
        with blobs.open(r) as reader:
            assert reader.read(100) + reader.read() == BLOB
            reader.finish()
    assert open_store(store_uri).get(ref.key) == BLOB[:100]  # the store really was changed


def test_without_keeping_every_read_is_verified(store_uri):
    blobs = Blobs(open_store(store_uri))
    ref = blobs.put("runs/r/a/1.arrow", BLOB)
    damaged(blobs, ref)
    with pytest.raises(IntegrityError, match="runs/r/a/1.arrow"):
        blobs.get(ref)


def test_only_the_referenced_blob_is_handed_back(tmp_path):
    blobs = Blobs(open_store(str(tmp_path)), keep=1 << 20)
    ref = blobs.put("runs/r/a/1.arrow", BLOB)
    other = blobs.put("runs/r/a/1.arrow", BLOB[::-1])  # the same key written again
    assert blobs.get(other) == BLOB[::-1]
    with pytest.raises(IntegrityError):  # the first reference no longer matches what is kept or stored
        blobs.get(ref)


def test_the_budget_drops_the_oldest_and_skips_large_blobs(tmp_path):
    blobs = Blobs(open_store(str(tmp_path)), keep=8 * len(BLOB))  # room for 8; a blob over 1/8 of it is never kept
    refs = [blobs.put(f"runs/r/m{i}/1.arrow", BLOB) for i in range(10)]
    large = blobs.put_stream("runs/r/large/1.arrow", iter([BLOB, b"x"]))
    for ref in refs + [large]:
        damaged(blobs, ref)
    with pytest.raises(IntegrityError):
        blobs.get(refs[0])  # dropped: the two oldest made room for the last two
    with pytest.raises(IntegrityError):
        blobs.get(refs[1])
    assert all(blobs.get(ref) == BLOB for ref in refs[2:])
    with pytest.raises(IntegrityError):
        blobs.get(large)


def test_the_in_process_engine_keeps_what_it_writes_and_the_history_does_not_change(tmp_path, monkeypatch):
    spec = parse_spec(small(seed=4))
    histories, checkpoint_reads = {}, {}
    for keep in (True, False):
        store, reads = open_store(str(tmp_path / str(keep))), []
        for name in ("get", "open_read"):  # every way an object is read
            real = getattr(store, name)
            monkeypatch.setattr(store, name, lambda key, real=real, reads=reads: (reads.append(key), real(key))[1])
        run, _ = create_or_resume(store, spec, "r")
        engine = InProcess("cpu") if keep else InProcess("cpu", keep=0)  # keep=0: as a pod, nothing kept
        Driver(run, engine, log=lambda line: None).drive()
        histories[keep] = read_history(store, run.id)
        checkpoint_reads[keep] = sum(key.endswith(".arrow") for key in reads)
    assert checkpoint_reads[True] == 0 < checkpoint_reads[False]
    assert histories[True] == histories[False]
