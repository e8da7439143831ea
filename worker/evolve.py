"""Recombination and mutation, on flat parameter vectors, chunk by chunk (numpy only, no torch).

An offspring is the mean of its ρ parents (intermediate recombination) plus N(0, σ²) noise on
every parameter. Buffers: floating-point buffers (BatchNorm running mean and variance) are the
parents' mean, without noise, so the statistics still describe the averaged weights' activations
approximately; integer buffers (num_batches_tracked) are copied from the fittest parent, never
averaged or mutated.
"""

from typing import Iterator

import numpy as np

from esgd.core.rng import generator
from esgd.store import checkpoint
from esgd.store.checkpoint import Layout


def recombine_chunks(parents: list[bytes], sigma: float, noise_seed: tuple) -> tuple[Layout, Iterator[np.ndarray]]:
    """Stream the offspring's vector. `parents` are checkpoints, fittest first, of one layout;
    memory holds one chunk per parent at a time. The noise of chunk i comes from its own generator
    (noise_seed + ("mutation", i)), so it does not depend on how many chunks are read at once."""
    layouts = [checkpoint.read_layout(p) for p in parents]
    layout = layouts[0]
    if any(not layout.same_shape(other) for other in layouts[1:]):
        raise ValueError("parents have different architectures")
    out_layout = Layout(layout.entries, layouts[0].ints, layout.vector_dtype)
    mask = layout.param_mask()

    def chunks() -> Iterator[np.ndarray]:
        start = 0
        for index, pieces in enumerate(zip(*(checkpoint.iter_chunks(p) for p in parents))):
            mean = np.mean(np.stack([piece.astype(np.float64) for piece in pieces]), axis=0)
            if sigma > 0:
                noise = generator(*noise_seed, "mutation", index).standard_normal(len(mean))
                mean += sigma * noise * mask[start : start + len(mean)]
            start += len(mean)
            yield mean.astype(layout.vector_dtype)

    return out_layout, chunks()


def recombine(parents: list[bytes], sigma: float, noise_seed: tuple) -> bytes:
    layout, chunks = recombine_chunks(parents, sigma, noise_seed)
    return checkpoint.encode_chunks(layout, chunks)
