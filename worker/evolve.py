"""Recombination and mutation, on flat parameter vectors, chunk by chunk (numpy only, no torch).

An offspring is the mean of its ρ parents (intermediate recombination) plus N(0, σ²) noise on
every parameter (with evolution.sigma_scale: rms, N(0, (σ·r)²) on each tensor, r its root mean
square in the fittest parent). Buffers: floating-point buffers (BatchNorm running mean and
variance) are the parents' mean, without noise, so the statistics still describe the averaged
weights' activations approximately; integer buffers (num_batches_tracked) are copied from the
fittest parent, never averaged or mutated.
"""

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from esgd.core.records import BlobRef
from esgd.core.rng import generator
from esgd.store import checkpoint
from esgd.store.base import IntegrityError
from esgd.store.blobs import Blobs
from esgd.store.checkpoint import Layout


def recombine_chunks(
    parents: list[BinaryIO], sigma: float, noise_seed: tuple, scales: list[float] | None = None
) -> tuple[Layout, Iterator[np.ndarray]]:
    """Stream the offspring's vector. `parents` are checkpoints as readable binary streams, fittest
    first, of one layout; memory holds one chunk per parent at a time. The noise of chunk i comes
    from its own generator (noise_seed + ("mutation", i)), so it does not depend on how many
    chunks are read at once. `scales`: a factor on σ per layout entry (tensor_rms), or None (1)."""
    opened = [checkpoint.read_stream(p) for p in parents]
    layouts = [layout for layout, _ in opened]
    layout = layouts[0]
    if any(not layout.same_shape(other) for other in layouts[1:]):
        raise ValueError("parents have different architectures")
    out_layout = Layout(layout.entries, layouts[0].ints, layout.vector_dtype)

    def chunks() -> Iterator[np.ndarray]:
        start = 0
        for index, pieces in enumerate(zip(*(parent_chunks for _, parent_chunks in opened))):
            # In place, in float64, the operations of np.mean(np.stack(pieces), axis=0) + sigma *
            # noise * mask in their order (the sum starts from +0.0, so -0.0 sums to +0.0 as there):
            # the same bits (but for numpy's pairwise order in a chunk of one value, ρ >= 8).
            mean = np.add(pieces[0], 0.0, dtype=np.float64)
            for piece in pieces[1:]:
                mean += piece
            mean /= len(pieces)
            if sigma > 0:
                noise = generator(*noise_seed, "mutation", index).standard_normal(len(mean))
                noise *= sigma
                noise *= _noise_scale(layout, start, start + len(mean), scales)
                mean += noise
            start += len(mean)
            yield mean.astype(layout.vector_dtype)

    return out_layout, chunks()


def _within(layout: Layout, start: int, stop: int) -> Iterator[tuple[int, slice]]:
    """Each layout entry that values start..stop of the vector hold part of: its index, and that
    part as a slice of the chunk."""
    for index, e in enumerate(layout.entries):
        lo, hi = max(e.offset, start), min(e.offset + e.numel, stop)
        if lo < hi:
            yield index, slice(lo - start, hi - start)


def _noise_scale(layout: Layout, start: int, stop: int, scales: list[float] | None) -> np.ndarray:
    """The factor on σ for values start..stop of the vector: 0 for buffers (never mutated), for
    parameters their entry's scale, or 1 (multiplying by 1.0 keeps the noise's bits)."""
    out = np.zeros(stop - start)
    for index, part in _within(layout, start, stop):
        if layout.entries[index].kind == "param":
            out[part] = 1.0 if scales is None else scales[index]
    return out


def tensor_rms(source: BinaryIO) -> list[float]:
    """The root mean square of every layout entry of a checkpoint read as a stream, in layout order."""
    layout, chunks = checkpoint.read_stream(source)
    sums, start = np.zeros(len(layout.entries)), 0
    for chunk in chunks:
        squares = np.square(chunk, dtype=np.float64)
        for index, part in _within(layout, start, start + len(chunk)):
            sums[index] += squares[part].sum()
        start += len(chunk)
    return [float(np.sqrt(total / e.numel)) if e.numel else 0.0 for total, e in zip(sums, layout.entries)]


def recombine_stream(
    blobs: Blobs, parents: list[BlobRef], sigma: float, noise_seed: tuple, relative: bool = False
) -> Iterator[bytes]:
    """The offspring's checkpoint as byte pieces (for Blobs.put_stream), its parents (checkpoint
    references, fittest first) read as streams: memory holds a few chunks per parent, never a whole
    model. Every parent's size and checksum are checked before the last piece is handed out, so an
    offspring of a truncated or altered parent is never completed (IntegrityError names the key).
    `relative`: σ is scaled per tensor by its root mean square in the fittest parent (read once
    more before, as a stream)."""
    scales = None
    if relative and sigma > 0:
        with blobs.open(parents[0]) as first:
            scales = tensor_rms(first)
            first.finish()
    streams = [blobs.open(p) for p in parents]
    try:
        try:
            layout, chunks = recombine_chunks(streams, sigma, noise_seed, scales)

            def checked() -> Iterator[np.ndarray]:
                yield from chunks
                for stream in streams:
                    stream.finish()

            yield from checkpoint.encode_stream(layout, checked())
        except IntegrityError:
            raise
        except Exception:  # unreadable bytes: a failed checksum is the better explanation
            for stream in streams:
                try:
                    stream.finish()
                except IntegrityError:
                    raise
                except Exception:  # noqa: BLE001 - keep the original error
                    pass
            raise
    finally:
        for stream in streams:
            stream.close()
