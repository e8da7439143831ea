"""CIFAR-10 with ResNet-20 (the paper's image recipe), read from Parquet shards in a store.

Import the standard python batches once (`esgd data import cifar10 cifar-10-python.tar.gz
--store URI`, see docs/recipes.md); this task then reads only the Parquet shards, from a local
directory or S3, never the pickled batches. Images stay uint8 on the device (150 MB for the
50,000 training images); the model converts and normalises them itself, and augments them with
the standard random crop and flip while training. The augmentation draws from torch's RNG, which
the SGD step seeds from (seed, generation, member, epoch), so the history stays reproducible.
"""

from functools import partial

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from esgd.worker.data import dataset
from esgd.worker.task import Task
from esgd.worker.tasks.common import error_rate
from esgd.worker.tasks.resnet import resnet

KIND = "cifar10"
SHAPE = (3, 32, 32)


class CropFlip(nn.Module):
    """The standard CIFAR augmentation, in training mode only: pad by `pad` pixels (zeros), take a
    random crop of the original size, flip horizontally with probability 1/2. Input [N, C, H, W].
    Written without in-place ops or data-dependent branches, so it also runs packed (vmap)."""

    def __init__(self, pad: int = 4):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.pad == 0:
            return x
        n, _, h, w = x.shape
        shifts = torch.randint(0, 2 * self.pad + 1, (2, n), device=x.device)
        flip = torch.rand(n, device=x.device) < 0.5
        padded = nn.functional.pad(x, (self.pad,) * 4)
        rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, :, None]  # [N, H, 1]
        cols = shifts[1][:, None] + torch.arange(w, device=x.device)  # [N, W]
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]  # [N, 1, W]
        batch = torch.arange(n, device=x.device)[:, None, None]
        return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [N, C, H, W]


class Normalize(nn.Module):
    """uint8 images -> float, minus the per-channel mean, divided by the per-channel std."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.mean, self.std = list(mean), list(std)  # constants of the task, not state: not in checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255 - mean) / std


def images(table: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N, 3, 32, 32], int64 labels [N]) from a shard table (`image`: 3,072 bytes
    per row in CIFAR's order, red plane then green then blue, row-major; `label`)."""
    column = table.column("image").combine_chunks()
    raw = np.frombuffer(column.buffers()[1], dtype=np.uint8)
    size = int(np.prod(SHAPE))
    raw = raw[column.offset * size : (column.offset + len(column)) * size]
    x = torch.from_numpy(raw.reshape(len(column), *SHAPE).copy())
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    return x, y


def model(depth: int, mean: list[float], std: list[float], augment: bool) -> nn.Module:
    return nn.Sequential(CropFlip(4 if augment else 0), Normalize(mean, std), resnet(depth))


def task(
    data: str,
    depth: int = 20,
    fitness: str = "train",
    augment: bool = True,
    train_limit: int | None = None,
    eval_batch_size: int = 1000,
) -> Task:
    """`data`: URI of the imported dataset (`<store>/data/cifar10`, local or s3://).
    `fitness`: "train" (the whole training set, as the paper does) or "test" (the 10,000 test
    images; needs test_batch in the import). `train_limit`: use only the first N training images."""
    if fitness not in ("train", "test"):
        raise TypeError(f"fitness must be 'train' or 'test', got {fitness!r}")
    x, y = images(dataset.read_split(data, KIND, "train"))
    if train_limit is not None:
        x, y = x[:train_limit], y[:train_limit]
    scaled = x.float().div_(255)
    mean = scaled.mean(dim=(0, 2, 3)).tolist()
    std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    del scaled
    fit = (x, y) if fitness == "train" else images(dataset.read_split(data, KIND, "test"))
    return Task(
        model=partial(model, depth, mean, std, augment),
        train=(x, y),
        fitness=fit,
        metric=error_rate,
        metric_name="error rate",
        eval_batch_size=eval_batch_size,
    )
