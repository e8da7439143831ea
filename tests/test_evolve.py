"""Intermediate recombination and Gaussian mutation on checkpoints."""

import io

import numpy as np
import pytest
import torch

from esgd.core.rng import generator
from esgd.store import checkpoint
from esgd.worker.evolve import recombine_chunks, tensor_rms
from esgd.worker.tasks.mlp import mlp
from esgd.worker.weights import to_checkpoint


def recombine(parents: list[bytes], sigma: float, seed: tuple, scales=None) -> bytes:
    """The offspring checkpoint of parents given as bytes (the step streams them from the store)."""
    streams = [io.BytesIO(p) for p in parents]
    return b"".join(checkpoint.encode_stream(*recombine_chunks(streams, sigma, seed, scales)))


def param_mask(layout: checkpoint.Layout) -> np.ndarray:
    """True for the values of parameters (mutated), False for buffers."""
    mask = np.zeros(layout.numel, dtype=bool)
    for e in layout.entries:
        mask[e.offset : e.offset + e.numel] = e.kind == "param"
    return mask


def _parent(seed: int, batchnorm=True) -> tuple[bytes, np.ndarray]:
    torch.manual_seed(seed)
    model = mlp(30, 40, 2, 5, batchnorm=batchnorm)
    model.train()
    for _ in range(seed + 1):
        model(torch.randn(8, 30))  # distinct running stats and num_batches_tracked per parent
    layout, vector = to_checkpoint(model)
    return checkpoint.encode(layout, vector), vector


def test_recombination_without_noise_is_the_exact_mean():
    parents = [_parent(s) for s in range(3)]
    layout, child = checkpoint.decode(recombine([p for p, _ in parents], 0.0, (0, 0, "c")))
    expected = np.mean(np.stack([v.astype(np.float64) for _, v in parents]), axis=0).astype(np.float32)
    assert np.array_equal(child, expected)


def test_integer_buffers_come_from_the_fittest_parent_unmutated():
    parents = [_parent(s) for s in (2, 0)]  # fittest first: the parent that ran 3 batches
    layout, _ = checkpoint.decode(recombine([p for p, _ in parents], 0.5, (0, 0, "c")))
    assert layout.ints["1.num_batches_tracked"]["values"] == [3]


def test_mutation_has_std_sigma_on_parameters_only():
    parents = [_parent(s) for s in range(2)]
    sigma = 0.05
    layout, child = checkpoint.decode(recombine([p for p, _ in parents], sigma, (1, 2, "c")))
    mean = np.mean(np.stack([v.astype(np.float64) for _, v in parents]), axis=0)
    noise = child.astype(np.float64) - mean
    mask = param_mask(layout)
    assert noise[mask].std() == pytest.approx(sigma, rel=0.03)
    assert abs(noise[mask].mean()) < 3 * sigma / np.sqrt(mask.sum())
    assert np.abs(noise[~mask]).max() < 1e-6  # buffers averaged, never mutated


def test_tensor_rms_is_each_entrys_root_mean_square_whatever_the_chunks(monkeypatch):
    data, vector = _parent(0)
    layout = checkpoint.decode(data)[0]
    expected = [np.sqrt(np.mean(vector[e.offset : e.offset + e.numel].astype(np.float64) ** 2)) for e in layout.entries]
    assert tensor_rms(io.BytesIO(data)) == pytest.approx(expected, rel=1e-12)
    monkeypatch.setattr(checkpoint, "CHUNK", 7)  # entries split across many chunks
    assert tensor_rms(io.BytesIO(checkpoint.encode(layout, vector))) == pytest.approx(expected, rel=1e-12)


def test_relative_mutation_has_std_sigma_times_each_tensors_scale():
    """evolution.sigma_scale: rms: the noise on each parameter tensor has std σ·scale (the step
    passes the fittest parent's RMS per tensor); buffers stay unmutated; scale 1 everywhere is the
    absolute mutation, bit for bit."""
    parents = [_parent(s)[0] for s in range(2)]
    layout = checkpoint.decode(parents[0])[0]
    scales = [0.5 + index for index in range(len(layout.entries))]
    sigma, seed = 0.05, (1, 2, "c")
    child = checkpoint.decode(recombine(parents, sigma, seed, scales))[1].astype(np.float64)
    mean = checkpoint.decode(recombine(parents, 0.0, seed))[1].astype(np.float64)
    for e, scale in zip(layout.entries, scales):
        noise = (child - mean)[e.offset : e.offset + e.numel]
        if e.kind != "param":
            assert np.abs(noise).max() < 1e-6
        elif e.numel >= 1000:  # enough values to measure a std
            assert noise.std() == pytest.approx(sigma * scale, rel=0.1)
    assert recombine(parents, sigma, seed, [1.0] * len(scales)) == recombine(parents, sigma, seed)


def test_offspring_bits_are_the_float64_mean_plus_masked_noise():
    """The formula, to the bit (the step computes it in place; histories depend on every bit)."""
    parents = []
    for s in range(3):
        data, vector = _parent(s)
        layout = checkpoint.decode(data)[0]
        vector, buffer = vector.copy(), next(e for e in layout.entries if e.name == "4.running_var")
        vector[buffer.offset : buffer.offset + 3] = -0.0  # in every parent: np.mean makes it +0.0
        parents.append((checkpoint.encode(layout, vector), vector))
    sigma, seed = 0.05, (1, 2, "c")
    layout, child = checkpoint.decode(recombine([p for p, _ in parents], sigma, seed))
    mean = np.mean(np.stack([v.astype(np.float64) for _, v in parents]), axis=0)
    noise = generator(*seed, "mutation", 0).standard_normal(len(mean))  # one chunk: a small model
    expected = (mean + sigma * noise * param_mask(layout)).astype(np.float32)
    assert child.tobytes() == expected.tobytes()  # bits: array_equal takes -0.0 for +0.0


def test_noise_is_reproducible_and_independent_of_chunking(monkeypatch):
    parents = [_parent(s, batchnorm=False)[0] for s in range(2)]
    a = recombine(parents, 0.1, (3, 1, "child"))
    assert a == recombine(parents, 0.1, (3, 1, "child"))
    assert a != recombine(parents, 0.1, (3, 1, "other-child"))
    monkeypatch.setattr(checkpoint, "CHUNK", 64)  # the same vector in many small chunks
    small = [checkpoint.encode(*checkpoint.decode(p)) for p in parents]
    assert len(list(checkpoint.iter_chunks(small[0]))) > 10
    b = checkpoint.decode(recombine(small, 0.0, (3, 1, "child")))[1]
    assert np.array_equal(b, checkpoint.decode(recombine(parents, 0.0, (3, 1, "child")))[1])


def test_parents_of_different_architectures_are_refused():
    torch.manual_seed(0)
    other = checkpoint.encode(*to_checkpoint(mlp(30, 41, 2, 5)))
    with pytest.raises(ValueError, match="different architectures"):
        recombine([_parent(0, batchnorm=False)[0], other], 0.1, (0, 0, "c"))
