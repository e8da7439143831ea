"""The SGD step for one individual: Ks epochs, fitness after each, back-off when it got worse."""

import copy
import math
from dataclasses import dataclass, field

import torch

from esgd.core.hparams import HParams
from esgd.core.rng import generator, int_seed
from esgd.worker.optimizers import State, load_state, make_optimizer, single_state
from esgd.worker.task import Task


def _batch_mean(fn, task: Task, data: tuple[torch.Tensor, ...]) -> float:
    """Mean of fn(x, y) over the evaluation batches of `data`, weighted by batch size."""
    inputs, targets = data
    total = 0.0
    for start in range(0, len(inputs), task.eval_batch_size):
        x, y = inputs[start : start + task.eval_batch_size], targets[start : start + task.eval_batch_size]
        total += float(fn(x, y)) * len(x)
    return total / len(inputs)


@torch.no_grad()
def fitness(model: torch.nn.Module, task: Task, data: tuple[torch.Tensor, ...]) -> float:
    """Mean loss on the fitness set, eval mode, no grad; non-finite losses count as +inf."""
    model.eval()
    value = _batch_mean(lambda x, y: task.loss(model(x), y), task, data)
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
    return _batch_mean(lambda x, y: task.metric(model(x), y), task, data)


@dataclass
class TrainResult:
    fitness: float
    hparams: HParams  # as trained with (single mode: lr after halvings)
    backoffs: int = 0
    epoch_fitness: list[float] = field(default_factory=list)
    optimizer_state: State | None = None  # after the last epoch, when the state is carried
    anchor: float = field(init=False)  # fitness of the weights a back-off returns to (first: the start's)
    stale: int = 0  # epochs in a row that ended worse than the anchor and were kept

    def __post_init__(self) -> None:
        self.anchor = self.fitness

    def end_epoch(self, value: float, draw: float, p_backoff: float, halve_lr: bool, patience: int, last: bool) -> str:
        """Record an epoch whose fitness is `value` and say what the caller does with the weights:
        "back" (return to the anchor's weights; with halve_lr train on with hparams.lr, halved here),
        "anchor" (keep them, and they are the new anchor) or "keep" (keep them, the anchor stays).

        The anchor is the best the step reached when patience > 0: an epoch worse than it is kept
        until `patience` have been in a row, or the step's last epoch is, and then it backs off with
        probability p_backoff. With patience 0 (the paper's) every worse epoch backs off with that
        probability, and every kept epoch becomes the anchor: the previous epoch's weights."""
        worse = value > self.anchor
        self.stale = self.stale + 1 if worse else 0
        if worse and (self.stale > patience or last) and draw < p_backoff:
            self.backoffs += 1
            self.stale = 0
            self.fitness = self.anchor
            if halve_lr:
                self.hparams = self.hparams.with_lr(self.hparams.lr / 2)
            action = "back"
        else:
            self.fitness = value
            action = "anchor" if patience == 0 or not worse else "keep"
            if action == "anchor":
                self.anchor = value
        self.epoch_fitness.append(self.fitness)
        return action


def train(
    model: torch.nn.Module,
    task: Task,
    train_data: tuple[torch.Tensor, ...],
    fitness_data: tuple[torch.Tensor, ...],
    hp: HParams,
    epochs: int,
    start_fitness: float,
    p_backoff: float,
    seed: tuple,
    halve_lr: bool = False,
    optimizer_state: State | None = None,
    patience: int = 0,
) -> TrainResult:
    """Train in place. After each epoch: if fitness got worse than the previous epoch's, return to
    the previous epoch's weights and optimizer state with probability p_backoff (1: strict).
    With `patience` > 0 the worse epochs are compared with the best of the step and kept until
    that many in a row (TrainResult.end_epoch), and the step ends on its best weights.
    With halve_lr (the `single` mode) the lr is also halved. `seed` = (seed, generation, member).
    With `optimizer_state` (sgd.optimizer_state: carry) the optimizer starts from it, and the
    result holds the state after the last epoch."""
    optimizer = make_optimizer(model.parameters(), hp)
    if optimizer_state is not None:
        load_state(optimizer, hp, optimizer_state)
    steps = 0 if optimizer_state is None else optimizer_state.step  # torch.optim's SGD counts none
    inputs, targets = train_data
    coin = generator(*seed, "backoff")
    result = TrainResult(start_fitness, hp)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    saved_steps = steps
    for epoch in range(epochs):
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(int_seed(*seed, "data", epoch)))
        order = order.to(inputs.device)
        model.train()
        with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
            torch.manual_seed(int_seed(*seed, "dropout", epoch))  # dropout and other in-model draws
            for start in range(0, len(order), hp.batch_size):
                batch = order[start : start + hp.batch_size]
                optimizer.zero_grad(set_to_none=True)
                task.loss(model(inputs[batch]), targets[batch]).backward()
                optimizer.step()
                steps += 1
        value = fitness(model, task, fitness_data)
        # The coin is drawn every epoch, so later draws never depend on earlier outcomes.
        action = result.end_epoch(value, coin.random(), p_backoff, halve_lr, patience, last=epoch == epochs - 1)
        if action == "back":
            model.load_state_dict(saved_model)
            optimizer.load_state_dict(copy.deepcopy(saved_opt))  # it aliases the tensors it loads
            steps = saved_steps
            if halve_lr:
                for group in optimizer.param_groups:
                    group["lr"] = result.hparams.lr
        elif action == "anchor" and epoch < epochs - 1:  # the last one is never returned to
            saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
            saved_steps = steps
    if optimizer_state is not None:
        result.optimizer_state = single_state(optimizer, result.hparams, steps)
    return result
