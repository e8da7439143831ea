"""The SGD step for one individual: Ks epochs, fitness after each, back-off when it got worse."""

import copy
import math
from dataclasses import dataclass, field

import torch

from esgd.core.rng import generator, int_seed
from esgd.worker.task import Task


def make_optimizer(params, hp: dict) -> torch.optim.Optimizer:
    name, lr, wd = hp["optimizer"], hp["lr"], hp["weight_decay"]
    if name in ("sgd", "nesterov"):
        nesterov = name == "nesterov" and hp["momentum"] > 0
        return torch.optim.SGD(params, lr=lr, momentum=hp["momentum"], weight_decay=wd, nesterov=nesterov)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(hp["beta1"], hp["beta2"]), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(hp["beta1"], hp["beta2"]), weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=hp["momentum"], weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}")


@torch.no_grad()
def fitness(model: torch.nn.Module, task: Task, data: tuple[torch.Tensor, ...]) -> float:
    """Mean loss on the fitness set, eval mode, no grad; non-finite losses count as +inf."""
    model.eval()
    inputs, targets = data
    total, n = 0.0, len(inputs)
    for start in range(0, n, task.eval_batch_size):
        x, y = inputs[start : start + task.eval_batch_size], targets[start : start + task.eval_batch_size]
        total += float(task.loss(model(x), y)) * len(x)
    value = total / n
    return value if math.isfinite(value) else math.inf


@torch.no_grad()
def metric(model: torch.nn.Module, task: Task, data: tuple[torch.Tensor, ...], fitness_value: float) -> float | None:
    """The task's error metric on the fitness set (batched, weighted by batch size), or the
    metric derived from the fitness value when the task defines one (perplexity)."""
    if task.metric_of_fitness is not None:
        return float(task.metric_of_fitness(fitness_value))
    if task.metric is None:
        return None
    model.eval()
    inputs, targets = data
    total = 0.0
    for start in range(0, len(inputs), task.eval_batch_size):
        x, y = inputs[start : start + task.eval_batch_size], targets[start : start + task.eval_batch_size]
        total += float(task.metric(model(x), y)) * len(x)
    return total / len(inputs)


@dataclass
class TrainResult:
    fitness: float
    hparams: dict  # as trained with (single mode: lr after halvings)
    backoffs: int = 0
    epoch_fitness: list[float] = field(default_factory=list)


def train(
    model: torch.nn.Module,
    task: Task,
    train_data: tuple[torch.Tensor, ...],
    fitness_data: tuple[torch.Tensor, ...],
    hp: dict,
    epochs: int,
    start_fitness: float,
    p_backoff: float,
    seed: tuple,
    halve_lr: bool = False,
) -> TrainResult:
    """Train in place. After each epoch: if fitness got worse than the previous epoch's, return to
    the previous epoch's weights and optimizer state with probability p_backoff (1: strict).
    With halve_lr (the `single` mode) the lr is also halved. `seed` = (seed, generation, member)."""
    optimizer = make_optimizer(model.parameters(), hp)
    hp = dict(hp)
    inputs, targets = train_data
    coin = generator(*seed, "backoff")
    result = TrainResult(start_fitness, hp)
    for epoch in range(epochs):
        saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(int_seed(*seed, "data", epoch)))
        order = order.to(inputs.device)
        model.train()
        with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
            torch.manual_seed(int_seed(*seed, "dropout", epoch))  # dropout and other in-model draws
            for start in range(0, len(order), hp["batch_size"]):
                batch = order[start : start + hp["batch_size"]]
                optimizer.zero_grad(set_to_none=True)
                task.loss(model(inputs[batch]), targets[batch]).backward()
                optimizer.step()
        value = fitness(model, task, fitness_data)
        draw = coin.random()  # drawn every epoch, so later draws never depend on earlier outcomes
        if value > result.fitness and draw < p_backoff:
            model.load_state_dict(saved_model)
            optimizer.load_state_dict(saved_opt)
            result.backoffs += 1
            if halve_lr:
                hp["lr"] /= 2
                for group in optimizer.param_groups:
                    group["lr"] = hp["lr"]
        else:
            result.fitness = value
        result.epoch_fitness.append(result.fitness)
    return result
