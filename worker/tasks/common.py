"""Helpers the bundled tasks share: the error-rate metric and a fixed train/held-out(/test) split."""

import numpy as np
import torch


def error_rate(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(dim=1) != target).float().mean()


def split_indices(n: int, seed: int, train_fraction: float = 0.7, test: float = 0.0):
    """(train, held-out, test) row indices of a fixed shuffle of n rows: the last `test` fraction of
    the shuffle is the test set (never trained on, never selected on), the rest is cut at
    `train_fraction` into train and held-out; with test = 0 the cut is the one runs always had."""
    order = np.random.default_rng(seed).permutation(n)
    kept = order[: n - int(test * n)]
    cut = int(train_fraction * len(kept))
    return kept[:cut], kept[cut:], order[len(kept) :]


def split(
    x: np.ndarray, y: np.ndarray, fitness: str, seed: int, train_fraction: float = 0.7, dtype=torch.float32, test=0.0
):
    """A fixed shuffled split into (train, fitness set, test set or None); fitness on the held-out
    part or the train set; a test set when `test` > 0 (a fraction of all rows, see split_indices)."""
    if not 0.0 <= test < 1.0:
        raise TypeError(f"test must be a fraction in [0, 1), got {test!r}")
    tr, va, te = split_indices(len(x), seed, train_fraction, test)
    fit = tr if fitness == "train" else va

    def as_tensors(index):
        return torch.tensor(x[index], dtype=dtype), torch.tensor(y[index], dtype=torch.long)

    return as_tensors(tr), as_tensors(fit), (as_tensors(te) if len(te) else None)
