"""Checkpoint format: Arrow IPC round trips, buffers, chunking, integrity."""

import numpy as np
import pytest
import torch

from esgd.store import checkpoint
from esgd.store.base import IntegrityError
from esgd.store.blobs import Blobs
from esgd.store.local import LocalStore
from esgd.worker.tasks.mlp import mlp
from esgd.worker.weights import load_into, to_checkpoint


def _bn_model(dtype=torch.float32):
    model = mlp(5, 6, 2, 3, batchnorm=True).to(dtype)
    model.train()
    model(torch.randn(16, 5, dtype=dtype))  # moves running stats and num_batches_tracked
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_round_trip_restores_every_tensor(dtype):
    model = _bn_model(dtype)
    data = checkpoint.encode(*to_checkpoint(model))
    copy = mlp(5, 6, 2, 3, batchnorm=True).to(dtype)
    load_into(copy, *checkpoint.decode(data))
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


def test_layout_marks_params_buffers_and_integer_buffers():
    layout, vector = to_checkpoint(_bn_model())
    kinds = {e.name: e.kind for e in layout.entries}
    assert kinds["0.weight"] == "param" and kinds["1.running_mean"] == "buffer"
    assert "1.num_batches_tracked" in layout.ints and layout.ints["1.num_batches_tracked"]["values"] == [1]
    assert sum(e.numel for e in layout.entries if e.kind == "param") == sum(p.numel() for p in _bn_model().parameters())
    assert len(vector) == layout.numel


def test_large_vectors_are_split_into_chunks(monkeypatch):
    monkeypatch.setattr(checkpoint, "CHUNK", 100)
    layout, vector = to_checkpoint(mlp(20, 16, 2, 4))
    data = checkpoint.encode(layout, vector)
    chunks = list(checkpoint.iter_chunks(data))
    assert len(chunks) == -(-len(vector) // 100) and max(map(len, chunks)) == 100
    assert np.array_equal(checkpoint.decode(data)[1], vector)


def test_not_a_checkpoint_is_refused():
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, pa.schema([("values", pa.float32())])) as w:
        w.write_batch(pa.record_batch([pa.array([1.0], pa.float32())], names=["values"]))
    with pytest.raises(ValueError, match="not an ESGD checkpoint"):
        checkpoint.decode(sink.getvalue().to_pybytes())


def test_altered_or_truncated_objects_fail_with_the_key(tmp_path):
    store = LocalStore(tmp_path)
    data = checkpoint.encode(*to_checkpoint(mlp(4, 4, 1, 2)))
    blobs = Blobs(store)
    ref = blobs.put("runs/r/x/a1.arrow", data)
    assert blobs.get(ref) == data
    store.put("runs/r/x/a1.arrow", data[:-10])
    with pytest.raises(IntegrityError, match="runs/r/x/a1.arrow"):
        blobs.get(ref)
    altered = bytearray(data)
    altered[len(altered) // 2] ^= 0xFF
    store.put("runs/r/x/a1.arrow", bytes(altered))
    with pytest.raises(IntegrityError, match="runs/r/x/a1.arrow"):
        blobs.get(ref)


def test_put_if_absent_commits_once(tmp_path):
    store = LocalStore(tmp_path)
    assert store.put_if_absent("a/rec.json", b"1") is True
    assert store.put_if_absent("a/rec.json", b"2") is False
    assert store.get("a/rec.json") == b"1"
    assert store.list("a") == ["a/rec.json"]  # no temporary files left behind
