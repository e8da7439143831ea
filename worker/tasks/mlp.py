"""A plain multi-layer perceptron, optionally with BatchNorm (to exercise buffers)."""

import torch
from torch import nn


def mlp(
    inputs: int, hidden: int, depth: int, outputs: int, batchnorm: bool = False, dtype: torch.dtype = torch.float32
) -> nn.Module:
    layers: list[nn.Module] = []
    width = inputs
    for _ in range(depth):
        layers.append(nn.Linear(width, hidden))
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        width = hidden
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers).to(dtype)
