"""The bundled task: handwritten digits (8x8 images, 10 classes, 1,797 examples) from
scikit-learn, which ships the data inside its package, so nothing is downloaded at run time."""

from functools import partial

import torch

from esgd.worker.task import Task
from esgd.worker.tasks.common import error_rate, split
from esgd.worker.tasks.mlp import mlp


def task(
    hidden: int = 32,
    depth: int = 2,
    batchnorm: bool = False,
    fitness: str = "validation",
    split_seed: int = 0,
    dtype: str = "float32",
    test: float = 0.0,
) -> Task:
    """MLP on scikit-learn's digits; `fitness`: "validation" (held-out 30 %) or "train";
    `dtype`: float32 or float64 (models and data); `test`: a fraction of the examples kept apart as
    a test set, scored once for the winner (docs/tasks.md)."""
    from sklearn.datasets import load_digits

    if fitness not in ("validation", "train"):
        raise TypeError(f"fitness must be 'validation' or 'train', got {fitness!r}")
    if dtype not in ("float32", "float64"):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    x, y = load_digits(return_X_y=True)
    train, fit, held = split(x / 16.0, y, fitness, split_seed, dtype=getattr(torch, dtype), test=test)
    return Task(
        model=partial(mlp, 64, hidden, depth, 10, batchnorm, getattr(torch, dtype)),
        train=train,
        fitness=fit,
        test=held,
        metric=error_rate,
        metric_name="error rate",
    )
