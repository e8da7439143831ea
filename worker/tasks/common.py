"""Helpers the bundled tasks share: the error-rate metric and a fixed train/held-out split."""

import numpy as np
import torch


def error_rate(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(dim=1) != target).float().mean()


def split(x: np.ndarray, y: np.ndarray, fitness: str, seed: int, train_fraction: float = 0.7, dtype=torch.float32):
    """A fixed shuffled split into (train, held-out); fitness on the held-out part or the train set."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(train_fraction * len(x))
    tr, va = order[:cut], order[cut:]
    fit = tr if fitness == "train" else va

    def as_tensors(index):
        return torch.tensor(x[index], dtype=dtype), torch.tensor(y[index], dtype=torch.long)

    return as_tensors(tr), as_tensors(fit)
