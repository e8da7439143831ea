"""The task interface: what a user plugs in by import path (`task: package.module:function`).

The function receives the spec's `task_args` as keyword arguments and returns a Task. See
docs/tasks.md.
"""

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from esgd.core.errors import InputError


class TaskError(InputError):
    """A task that cannot be loaded: bad import path, bad arguments, missing data."""


@dataclass
class Task:
    model: Callable[[], torch.nn.Module]
    """Builds a fresh model (random init); called under a seeded RNG."""
    train: tuple[torch.Tensor, ...]
    """Training data as tensors with the examples along dim 0: (inputs, targets)."""
    fitness: tuple[torch.Tensor, ...]
    """Fitness data, same layout; fitness = mean loss on it, in eval mode, no grad."""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    """loss(model(inputs), targets) -> mean loss (a scalar tensor)."""
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """Optional error metric on the fitness set, e.g. error rate (reported, never optimised)."""
    metric_of_fitness: Callable[[float], float] | None = None
    """Optional metric computed from the fitness value instead, e.g. perplexity = math.exp."""
    metric_name: str = "error"
    """Name of the metric in reports."""
    eval_batch_size: int = 1024
    """Batch size for fitness evaluation."""


@lru_cache(maxsize=4)
def _load(path: str, args_json: str) -> Task:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TaskError(f"task: cannot import {module_name!r} ({error})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise TaskError(f"task: {module_name!r} has no function {attr!r}")
    try:
        task = function(**json.loads(args_json))
    except FileNotFoundError as error:
        raise TaskError(f"task: data file not found: {error.filename or error}") from None
    except (TypeError, ValueError) as error:
        raise TaskError(f"task {path} refused its task_args: {error}") from None
    if not isinstance(task, Task):
        raise TaskError(f"task: {path} returned {type(task).__name__}, expected esgd.worker.task.Task")
    return task


def load_task(path: str, args: dict) -> Task:
    """Import and call the task function (cached per process)."""
    try:
        key = json.dumps(args, sort_keys=True)
    except TypeError as error:
        raise TaskError(f"task_args must be plain YAML values (numbers, strings, lists, mappings): {error}") from None
    return _load(path, key)
