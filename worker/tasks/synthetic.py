"""Synthetic classification tasks known to be hard for gradient descent, small enough for a CPU.

Each is an ordinary task function (docs/tasks.md): the data is drawn from `seed` alone (numpy's
generator), so the same arguments give the same examples everywhere; a fixed 70 % trains and the
held-out 30 % is the fitness set (`fitness: train` uses the training part), as in the bundled tasks.

- checkerboard: a high-frequency decision boundary. Points in the square [-1, 1]², labelled by the
  colour of a `periods` × `periods` checkerboard. Networks fit low frequencies first (spectral
  bias): the many cells of a fine board come late, one by one.
- parity: a plateau. `bits` random ±1 inputs, labelled by the parity of `k` of them (chosen by the
  seed). No single input, nor any set of fewer than k, says anything about the label, so the
  gradient carries almost no signal until the network stumbles on the right bits: the loss sits
  at ln 2 for a long time, then drops (sparse parity; k = 4 of 30 bits: a plain MLP trained with
  Adam for 12 epochs leaves the plateau for some seeds and not for others).
- spirals: two interleaved spirals of `turns` turns, learnt by a deep narrow MLP (ReLU, default
  init). It starts out predicting nearly the class prior, and its first steps seldom lower the
  loss: a long flat stretch, which many runs never leave (with strict back-off, none of the
  single-model runs of bench/results.py's seed 0 did in 50 epochs).
- many_classes: many classes with few examples each: `classes` Gaussian clusters in `dims`
  dimensions, `per_class` examples of each, with noise on the order of the clusters' spread, so
  that fitting the few training examples and generalising pull apart.
"""

from functools import partial

import numpy as np

from esgd.worker.task import Task
from esgd.worker.tasks.common import error_rate, split
from esgd.worker.tasks.mlp import mlp


def _task(
    x: np.ndarray, y: np.ndarray, classes: int, hidden: int, depth: int, fitness: str, seed: int, test: float
) -> Task:
    """An MLP classifier on (x, y) with the bundled tasks' split: 70 % trains, 30 % held out (of
    what a `test` fraction leaves)."""
    if fitness not in ("validation", "train"):
        raise TypeError(f"fitness must be 'validation' or 'train', got {fitness!r}")
    train, fit, held = split(x.astype(np.float32), y.astype(np.int64), fitness, seed, test=test)
    return Task(
        model=partial(mlp, x.shape[1], hidden, depth, classes),
        train=train,
        fitness=fit,
        test=held,
        metric=error_rate,
        metric_name="error rate",
    )


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise TypeError(f"{name} must be a positive integer, got {value!r}")


def checkerboard(
    periods: int = 5,
    n: int = 2000,
    hidden: int = 32,
    depth: int = 2,
    fitness: str = "validation",
    seed: int = 0,
    test: float = 0.0,
) -> Task:
    """A periods × periods checkerboard on [-1, 1]², n points drawn uniformly, 2 classes."""
    _positive(periods=periods, n=n, hidden=hidden, depth=depth)
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2))
    cell = np.floor((x + 1.0) / 2.0 * periods).clip(0, periods - 1).astype(np.int64)
    return _task(x, cell.sum(1) % 2, 2, hidden, depth, fitness, seed, test)


def parity(
    bits: int = 30,
    k: int = 4,
    n: int = 3000,
    hidden: int = 64,
    depth: int = 2,
    fitness: str = "validation",
    seed: int = 0,
    test: float = 0.0,
) -> Task:
    """n random ±1 vectors of `bits` entries, labelled by the parity of k of them (drawn by the seed)."""
    _positive(bits=bits, k=k, n=n, hidden=hidden, depth=depth)
    if k > bits:
        raise TypeError(f"k ({k}) must not exceed bits ({bits})")
    rng = np.random.default_rng(seed)
    relevant = rng.choice(bits, size=k, replace=False)
    x = rng.choice([-1.0, 1.0], size=(n, bits))
    return _task(x, (x[:, relevant].prod(1) < 0).astype(np.int64), 2, hidden, depth, fitness, seed, test)


def spirals(
    turns: float = 2.0,
    n: int = 2000,
    noise: float = 0.02,
    hidden: int = 8,
    depth: int = 6,
    fitness: str = "validation",
    seed: int = 0,
    test: float = 0.0,
) -> Task:
    """Two interleaved spirals of `turns` turns in [-1, 1]² (n points, Gaussian noise of std `noise`),
    for a deep narrow MLP (`depth` hidden layers of `hidden` units)."""
    _positive(n=n, hidden=hidden, depth=depth)
    if not turns > 0 or not noise >= 0:
        raise TypeError(f"turns must be > 0 and noise >= 0, got turns={turns!r}, noise={noise!r}")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    t = np.sqrt(rng.uniform(0.0, 1.0, size=n))  # sqrt: points spread evenly along the arm, not bunched at the centre
    angle = 2 * np.pi * turns * t + np.pi * y  # the second spiral is the first turned by half a turn
    x = np.stack([t * np.cos(angle), t * np.sin(angle)], 1) + rng.normal(0.0, noise, size=(n, 2))
    return _task(x, y, 2, hidden, depth, fitness, seed, test)


def many_classes(
    classes: int = 50,
    per_class: int = 12,
    dims: int = 16,
    spread: float = 1.0,
    hidden: int = 64,
    depth: int = 2,
    fitness: str = "validation",
    seed: int = 0,
    test: float = 0.0,
) -> Task:
    """`classes` Gaussian clusters (centres N(0, 1) in `dims` dimensions, examples N(centre, spread²)),
    `per_class` examples each: about 70 % of them train, the rest are held out."""
    _positive(classes=classes, per_class=per_class, dims=dims, hidden=hidden, depth=depth)
    if not spread > 0:
        raise TypeError(f"spread must be > 0, got {spread!r}")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes, dims))
    y = np.repeat(np.arange(classes), per_class)
    x = centres[y] + rng.normal(0.0, spread, size=(len(y), dims))
    return _task(x, y, classes, hidden, depth, fitness, seed, test)
