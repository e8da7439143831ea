"""Checkpoint format: Arrow IPC, no pickle.

A checkpoint is one flat vector of floating-point values (every float parameter and buffer,
flattened in state-dict order) written as an Arrow IPC stream, one record batch per chunk of
CHUNK values, so a reader can stream it chunk by chunk. The schema's metadata holds the layout:
name, shape, dtype and kind (param or buffer) of every entry and its offset in the vector, plus
the integer buffers (BatchNorm's num_batches_tracked, ...), which are tiny and kept as JSON.
The checksum lives in the record that references the checkpoint (esgd.store.blobs.Blobs.put).
"""

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

CHUNK = 1 << 20  # values per record batch: 4 MiB of float32
FORMAT = b"esgd-checkpoint/1"


@dataclass
class Entry:
    name: str
    shape: list[int]
    dtype: str  # torch dtype name, e.g. "float32", "bfloat16"
    kind: str  # "param" (mutated) or "buffer" (averaged, never mutated)
    offset: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Layout:
    entries: list[Entry]
    ints: dict[str, dict] = field(default_factory=dict)  # name -> {shape, dtype, values}
    vector_dtype: str = "float32"  # float32, or float64 when any entry is float64

    @property
    def numel(self) -> int:
        return sum(e.numel for e in self.entries)

    def to_json(self) -> bytes:
        return json.dumps(
            {"entries": [e.__dict__ for e in self.entries], "ints": self.ints, "vector_dtype": self.vector_dtype}
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Layout":
        raw = json.loads(data)
        return cls([Entry(**e) for e in raw["entries"]], raw["ints"], raw["vector_dtype"])

    def same_shape(self, other: "Layout") -> bool:
        return [(e.name, e.shape) for e in self.entries] == [(e.name, e.shape) for e in other.entries]


def _schema(layout: Layout) -> pa.Schema:
    return pa.schema(
        [("values", pa.from_numpy_dtype(np.dtype(layout.vector_dtype)))],
        metadata={b"esgd.format": FORMAT, b"esgd.layout": layout.to_json()},
    )


def _batches(chunks: Iterator[np.ndarray]) -> Iterator[pa.RecordBatch]:
    """Record batches of CHUNK values (the last of each chunk shorter) of the vector's chunks."""
    for chunk in chunks:
        for start in range(0, len(chunk), CHUNK):
            yield pa.record_batch([pa.array(chunk[start : start + CHUNK])], names=["values"])


class _Pieces:
    """A write-only file that keeps what is written until it is drained."""

    closed = False

    def __init__(self):
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(self.parts[-1])
        return len(self.parts[-1])

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def encode_stream(layout: Layout, chunks: Iterator[np.ndarray]) -> Iterator[bytes]:
    """A checkpoint from vector chunks (any sizes, in order), as byte pieces, one record batch at a
    time: never all in memory. The same bytes as encode() of the whole vector cut the same way."""
    sink = _Pieces()
    with pa.ipc.new_stream(sink, _schema(layout)) as writer:
        for batch in _batches(chunks):
            writer.write_batch(batch)
            yield sink.drain()
    yield sink.drain()


def read_stream(source) -> tuple[Layout, Iterator[np.ndarray]]:
    """Layout and vector chunks of a checkpoint read from a binary file object (e.g. a
    Blobs.open stream), one record batch at a time: memory holds a chunk, not the checkpoint."""
    reader = _open(source)
    layout = Layout.from_json(reader.schema.metadata[b"esgd.layout"])
    return layout, (batch.column(0).to_numpy(zero_copy_only=True) for batch in reader)


def encode(layout: Layout, vector: np.ndarray) -> bytes:
    if len(vector) != layout.numel:
        raise ValueError(f"vector has {len(vector)} values, layout {layout.numel}")
    sink = pa.BufferOutputStream()  # at once: a third of the cost of joining encode_stream's pieces
    with pa.ipc.new_stream(sink, _schema(layout)) as writer:
        for batch in _batches([np.ascontiguousarray(vector, dtype=layout.vector_dtype)]):
            writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _open(data) -> pa.ipc.RecordBatchStreamReader:
    """A reader over checkpoint bytes or a readable binary file object."""
    reader = pa.ipc.open_stream(pa.BufferReader(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
    if (reader.schema.metadata or {}).get(b"esgd.format") != FORMAT:
        raise ValueError("not an ESGD checkpoint (format marker missing)")
    return reader


def read_layout(data: bytes) -> Layout:
    return Layout.from_json(_open(data).schema.metadata[b"esgd.layout"])


def iter_chunks(data: bytes) -> Iterator[np.ndarray]:
    """The vector, one record batch at a time (zero-copy views into `data`)."""
    for batch in _open(data):
        yield batch.column(0).to_numpy(zero_copy_only=True)


def decode(data: bytes) -> tuple[Layout, np.ndarray]:
    layout = read_layout(data)
    chunks = list(iter_chunks(data))
    if len(chunks) == 1:
        vector = chunks[0]  # a read-only view into `data`, not a copy: packs stack their vectors anyway
    else:
        vector = np.concatenate(chunks) if chunks else np.zeros(0, dtype=layout.vector_dtype)
    if len(vector) != layout.numel:
        raise ValueError(f"checkpoint holds {len(vector)} values, its layout {layout.numel}")
    return layout, vector
