"""A feed-forward acoustic model in the style of the paper's speech recipes: frame features with a
context window in, a softmax over many classes (e.g. context-dependent HMM states) out.

The network has 6 hidden layers: ReLU in the lower three, sigmoid in the upper three. Data comes
from Parquet shards written by `esgd data import speech` (splits `train` and `valid`; columns
`utterance`, `frame`, `features` (one frame's vector) and `label`, rows in time order within an
utterance). Features are normalised per dimension with the training set's mean and std, then each
frame is spliced with `context` frames on either side (frames at an utterance's edges repeat the
first or last frame). Fitness is the cross-entropy on `valid`; the error metric is the frame
error rate.

Memory: the spliced inputs take frames x (2*context+1) x dims values; `input_dtype: float16`
halves it (the model casts each batch back to float32).
"""

from functools import partial

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from esgd.worker.data import dataset
from esgd.worker.task import Task
from esgd.worker.tasks.common import error_rate

KIND = "speech"


class Cast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def dnn(inputs: int, hidden: int, classes: int, relu_layers: int = 3, sigmoid_layers: int = 3) -> nn.Module:
    layers: list[nn.Module] = [Cast()]
    width = inputs
    for index in range(relu_layers + sigmoid_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU() if index < relu_layers else nn.Sigmoid()]
        width = hidden
    layers.append(nn.Linear(width, classes))
    return nn.Sequential(*layers)


def frames(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features [N, D] float32, labels [N] int64, first and last frame index of each frame's
    utterance [N], [N]); an utterance is a run of equal `utterance` values."""
    column = table.column("features").combine_chunks()
    x = column.flatten().to_numpy().astype(np.float32).reshape(len(column), -1)
    y = table.column("label").to_numpy().astype(np.int64)
    starts, lengths = dataset.runs(table.column("utterance").to_numpy(zero_copy_only=False))
    return x, y, np.repeat(starts, lengths), np.repeat(starts + lengths - 1, lengths)


def splice(x: np.ndarray, start_of: np.ndarray, end_of: np.ndarray, context: int, dtype: torch.dtype) -> torch.Tensor:
    """Frame t becomes frames t-context .. t+context of its own utterance, concatenated."""
    n = len(x)
    offsets = np.arange(-context, context + 1)
    out = torch.empty((n, len(offsets) * x.shape[1]), dtype=dtype)
    step = 65536  # splice in blocks, so the intermediates stay small
    for begin in range(0, n, step):
        rows = slice(begin, begin + step)
        index = np.arange(begin, min(begin + step, n))[:, None] + offsets[None, :]
        index = np.clip(index, start_of[rows, None], end_of[rows, None])
        out[rows] = torch.from_numpy(x[index].reshape(len(index), -1))
    return out


def task(
    data: str,
    hidden: int = 512,
    context: int = 5,
    classes: int | None = None,
    input_dtype: str = "float32",
    eval_batch_size: int = 4096,
) -> Task:
    """`data`: URI of the imported dataset (`<store>/data/speech`). `context`: frames on each side
    (5: an 11-frame window). `classes`: output size (default: largest label + 1)."""
    if input_dtype not in ("float32", "float16"):
        raise TypeError(f"input_dtype must be 'float32' or 'float16', got {input_dtype!r}")
    dtype = getattr(torch, input_dtype)
    x_train, y_train, *edges_train = frames(dataset.read_split(data, KIND, "train"))
    x_valid, y_valid, *edges_valid = frames(dataset.read_split(data, KIND, "valid"))
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-5
    x_train, x_valid = (x_train - mean) / std, (x_valid - mean) / std
    classes = classes or int(max(y_train.max(), y_valid.max())) + 1
    if max(y_train.max(), y_valid.max()) >= classes:
        raise TypeError(f"labels go up to {max(y_train.max(), y_valid.max())}, more than classes={classes}")
    inputs = (2 * context + 1) * x_train.shape[1]
    return Task(
        model=partial(dnn, inputs, hidden, classes),
        train=(splice(x_train, *edges_train, context, dtype), torch.from_numpy(y_train)),
        fitness=(splice(x_valid, *edges_valid, context, dtype), torch.from_numpy(y_valid)),
        metric=error_rate,
        metric_name="frame error rate",
        eval_batch_size=eval_batch_size,
    )
