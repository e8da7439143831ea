"""Small real datasets that ship inside scikit-learn (nothing is downloaded): breast_cancer (569
tumours, 30 measurements, malignant or benign), wine (178 wines, 13 measurements, 3 cultivars)
and iris (150 flowers, 4 measurements, 3 species). An MLP classifier; features standardised with
the training part's mean and std; fitness on a fixed held-out 30 % (or on the training part)."""

from functools import partial

import numpy as np

from esgd.worker.task import Task
from esgd.worker.tasks.common import error_rate, split, split_indices
from esgd.worker.tasks.mlp import mlp

DATASETS = ("breast_cancer", "wine", "iris")


def task(
    dataset: str = "breast_cancer",
    hidden: int = 32,
    depth: int = 2,
    batchnorm: bool = False,
    fitness: str = "validation",
    split_seed: int = 0,
    test: float = 0.0,
) -> Task:
    import sklearn.datasets

    if dataset not in DATASETS:
        raise TypeError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if fitness not in ("validation", "train"):
        raise TypeError(f"fitness must be 'validation' or 'train', got {fitness!r}")
    x, y = getattr(sklearn.datasets, f"load_{dataset}")(return_X_y=True)
    x = x.astype(np.float32)
    train_part = x[split_indices(len(x), split_seed, test=test)[0]]  # the rows `split` trains on
    x = (x - train_part.mean(0)) / (train_part.std(0) + 1e-6)
    train, fit, held = split(x, y, fitness, split_seed, test=test)
    classes = int(y.max()) + 1
    return Task(
        model=partial(mlp, x.shape[1], hidden, depth, classes, batchnorm),
        train=train,
        fitness=fit,
        test=held,
        metric=error_rate,
        metric_name="error rate",
    )
