"""The evolve step streams its parents from the store, local and S3: with models many chunks long,
its memory stays near a few chunks per parent (far below one model, let alone µ of them), and the
offspring's bytes are exactly those of recombining whole checkpoints in memory."""

import io
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from esgd.core import keys
from esgd.core.hparams import HParams
from esgd.core.records import Member, OffspringRecord, TrainRecord
from esgd.core.spec import parse_spec
from esgd.core.tables import to_parquet
from esgd.store import checkpoint
from esgd.store.blobs import Blobs
from esgd.store.checkpoint import Entry, Layout
from esgd.store.run import RunRef
from esgd.store.s3 import S3Settings, S3Store
from esgd.store.uri import open_store
from esgd.worker import evolve as ops
from esgd.worker import steps
from esgd.worker.run import Run
from esgd.worker.transfers import Transfers

from helpers import small
from test_evolve import recombine

CHUNK = 1 << 16  # values per record batch: chunks of 256 KiB, so models are many chunks long
MU, RHO = 4, 2
PART_MB, CONCURRENCY = 5, 1  # S3: the smallest parts S3 takes, one in flight
LAMBDA = 2

SPEC = small(name="stream", seed=5, population={"mu": MU, "offspring": LAMBDA, "rho": RHO})


def big_population(run: Run, values: int) -> None:
    """Generation 0, trained: µ parents of `values` float32 values each, with their records."""
    layout = Layout(
        [
            Entry("w", [values - 1000], "float32", "param", 0),
            Entry("bn.mean", [1000], "float32", "buffer", values - 1000),
        ],
        {"bn.count": {"shape": [], "dtype": "int64", "values": [7]}},
    )
    members, hp = [], HParams("sgd", 0.1, 0.0, 0.0, 0.9, 0.999, 64)
    for i in range(MU):
        member = keys.initial_id(i)
        vector = np.random.default_rng(i).standard_normal(values).astype(np.float32)
        key = keys.train_record(run.id, 0, member)
        ref = run.blobs.put(keys.checkpoint(key, "a1"), checkpoint.encode(layout, vector))
        run.store.commit(key, TrainRecord(member, ref, 1.0 + i / 10, 2.0, hp, 0, 1, ()))
        members.append(Member(member, ref, 2.0, "parent", 0, (), False, None))
    run.store.put(keys.parents(run.id, 0), to_parquet(members, Member))


def test_evolve_memory_is_a_few_chunks_per_parent_and_bytes_are_unchanged(store_uri, monkeypatch):
    monkeypatch.setattr(checkpoint, "CHUNK", CHUNK)
    store = open_store(store_uri)
    chunk_bytes, transfer = 4 * CHUNK, 0
    # One offspring at a time: with n at once each streams on its own, and memory is n times this.
    if isinstance(store, S3Store):  # a streamed upload keeps (concurrency + 2) parts in memory
        store = S3Store(
            store.bucket, store.prefix, S3Settings(part_size_mb=PART_MB, concurrency=CONCURRENCY, objects=1)
        )
        transfer = (CONCURRENCY + 2) * PART_MB << 20
    values = 1 << 23 if transfer else 1 << 22  # 32 MiB models on S3 (above its part buffers), 16 MiB locally
    run = Run(RunRef(store, "big", parse_spec(SPEC)), "cpu")
    run.transfers = Transfers(objects=1, computing=1)
    big_population(run, values)
    model = 4 * values

    tracemalloc.start()
    try:
        steps.evolve(run, 0, 0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Recombining whole checkpoints held µ parents plus the offspring: 5 models. Streaming holds
    # about 6 chunk-sized buffers per parent plus 16 shared ones (docs/storage.md), and on S3 the
    # multipart parts in flight: less than one model, whatever the model's size. (1 MiB: slack
    # for whatever else Python allocates meanwhile.)
    bound = (6 * RHO + 16) * chunk_bytes + transfer + (1 << 20)
    print(f"evolve peak {peak / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB, model {model / 2**20:.0f} MiB")
    assert peak < bound < model, f"evolve peaked at {peak / 2**20:.1f} MiB (bound {bound / 2**20:.1f} MiB)"

    sigma = None
    for index in range(1 if transfer else LAMBDA):  # (S3: one is enough, and big objects are slow on 2 cores)
        child = keys.member_id(0, 0, index)
        record = store.read(keys.offspring_record(run.id, 0, 0, child), OffspringRecord)
        sigma = record.sigma
        parents = [store.get(keys.checkpoint(keys.train_record(run.id, 0, p), "a1")) for p in record.parents]
        expected = recombine(parents, sigma, run.seed(0, child))  # from whole checkpoints in memory
        assert run.blobs.get(record.checkpoint) == expected
    assert sigma > 0
    layout, vector = checkpoint.decode(expected)
    assert len(vector) == values and layout.ints["bn.count"]["values"] == [7]


def test_encode_stream_writes_the_bytes_of_one_arrow_stream(monkeypatch):
    monkeypatch.setattr(checkpoint, "CHUNK", 1000)
    layout = Layout([Entry("w", [4321], "float64", "param", 0)], vector_dtype="float64")
    vector = np.random.default_rng(0).standard_normal(4321)
    pieces = list(checkpoint.encode_stream(layout, iter([vector[:2500], vector[2500:]])))
    sink = pa.BufferOutputStream()  # the same record batches through Arrow's own writer, at once
    with pa.ipc.new_stream(sink, pa.ipc.open_stream(b"".join(pieces)).schema) as writer:
        for start, stop in ((0, 1000), (1000, 2000), (2000, 2500), (2500, 3500), (3500, 4321)):
            writer.write_batch(pa.record_batch([pa.array(vector[start:stop])], names=["values"]))
    assert b"".join(pieces) == sink.getvalue().to_pybytes()
    assert len(pieces) > 5  # one piece per record batch, not one blob
    streamed_layout, chunks = checkpoint.read_stream(io.BytesIO(b"".join(pieces)))
    assert streamed_layout.numel == 4321 and np.array_equal(np.concatenate(list(chunks)), vector)


@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_streamed_recombination_equals_in_memory_recombination(tmp_path, monkeypatch, sigma):
    monkeypatch.setattr(checkpoint, "CHUNK", 333)
    store = Blobs(open_store(str(tmp_path / "s")))
    layout = Layout([Entry("w", [2000], "float32", "param", 0)])
    refs, data = [], []
    for i in range(3):
        data.append(checkpoint.encode(layout, np.random.default_rng(i).standard_normal(2000).astype(np.float32)))
        refs.append(store.put(f"p{i}.arrow", data[-1]))
    streamed = b"".join(ops.recombine_stream(store, refs, sigma, (1, 0, "child")))
    assert streamed == recombine(data, sigma, (1, 0, "child"))
    relative = b"".join(ops.recombine_stream(store, refs, sigma, (1, 0, "child"), relative=True))
    scales = ops.tensor_rms(io.BytesIO(data[0]))  # the fittest parent's (the first)
    assert relative == recombine(data, sigma, (1, 0, "child"), scales)
