"""A classification task on your own table (Parquet or CSV): numeric feature columns and a label."""

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.csv
import pyarrow.parquet as pq

from esgd.worker.task import Task
from esgd.worker.tasks.common import error_rate, split
from esgd.worker.tasks.mlp import mlp


def task(
    path: str, label: str = "label", hidden: int = 64, depth: int = 2, fitness: str = "validation", split_seed: int = 0
) -> Task:
    """MLP classifier; every column but `label` is a feature; labels are mapped to 0..C-1."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(2, "No such file", str(file))
    table = pq.read_table(file) if file.suffix == ".parquet" else pyarrow.csv.read_csv(file)
    if label not in table.column_names:
        raise TypeError(f"label column {label!r} not in {file}")
    _, y = np.unique(table.column(label).to_numpy(zero_copy_only=False), return_inverse=True)
    features = [c for c in table.column_names if c != label]
    x = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in features], axis=1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train, fit, _ = split(x, y, fitness, split_seed)
    classes = int(y.max()) + 1
    return Task(
        model=partial(mlp, x.shape[1], hidden, depth, classes),
        train=train,
        fitness=fit,
        metric=error_rate,
        metric_name="error rate",
    )
