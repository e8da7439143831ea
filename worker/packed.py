"""Packed training: k individuals of one architecture trained at once on one device.

The k models are stacked (torch.func.stack_module_state) and run with vmap over functional_call,
so one kernel launch serves all k. Each individual keeps its own optimizer family and
hyper-parameters (per-individual tensors; the update formulas are torch.optim's), its own data
order, its own back-off coins and decisions: packing does not change the algorithm, only how
many kernels it takes. BatchNorm: running statistics are stacked buffers updated in place under
vmap, per individual, exactly as in an unpacked model. Individuals in one pack share a batch
size (steps are in lockstep); the caller groups them.
"""

import copy
import math

import torch
from torch.func import functional_call, stack_module_state, vmap

from esgd.core.rng import generator, int_seed
from esgd.worker.task import Task
from esgd.worker.train import TrainResult

RMSPROP_ALPHA, EPS = 0.99, 1e-8
ADAM_EPS = 1e-8


class Pack:
    """k models as stacked parameter and buffer tensors, sharing one stateless module."""

    def __init__(self, models: list[torch.nn.Module]):
        self.k = len(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)

    def _call(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x: [k, B, ...] (one batch per individual), or [B, ...] shared by all when `shared`."""
        return vmap(self._call, in_dims=(0, 0, None if shared else 0), randomness="different")(self.params, self.buffers, x)

    def state_dict(self, i: int) -> dict:
        return {name: t[i].detach() for name, t in {**self.params, **self.buffers}.items()}

    def tensors(self) -> list[torch.Tensor]:
        return list(self.params.values()) + list(self.buffers.values())


def _per(values: list[float], device, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, device=device, dtype=dtype)


def _b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-individual [k] tensor against a stacked [k, ...] tensor."""
    v = v if v.dtype == torch.bool else v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class PackedOptimizer:
    """SGD (plain and Nesterov), Adam, AdamW and RMSprop with per-individual hyper-parameters."""

    def __init__(self, params: dict[str, torch.Tensor], hps: list[dict]):
        device = next(iter(params.values())).device
        self.params = list(params.values())
        self.family = [hp["optimizer"] for hp in hps]
        self.lr = _per([hp["lr"] for hp in hps], device)
        self.momentum = _per([hp["momentum"] for hp in hps], device)
        self.wd = _per([hp["weight_decay"] for hp in hps], device)
        self.beta1 = _per([hp["beta1"] for hp in hps], device)
        self.beta2 = _per([hp["beta2"] for hp in hps], device)
        self.nesterov = _per([f == "nesterov" and hp["momentum"] > 0 for f, hp in zip(self.family, hps)], device, torch.bool)
        self.masks = {f: _per([float(x == f) for x in self.family], device).bool() for f in set(self.family)}
        self.adam_like = _per([float(f in ("adam", "adamw")) for f in self.family], device)
        self.step_count = torch.zeros(len(hps), device=device, dtype=torch.float64)
        self.state = [{"buf": torch.zeros_like(p), "m": torch.zeros_like(p), "v": torch.zeros_like(p)} for p in self.params]

    def tensors(self) -> list[torch.Tensor]:
        return [self.step_count] + [t for s in self.state for t in s.values()]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.step_count += self.adam_like  # Adam's bias correction counts its own steps
        for p, g, s in zip(self.params, grads, self.state):
            new = p
            for family, mask in self.masks.items():
                new = torch.where(_b(mask, p), self._update(family, p, g, s, mask), new)
            p.copy_(new)

    def _update(self, family: str, p, g, s, mask) -> torch.Tensor:
        lr, mom, wd = _b(self.lr, p), _b(self.momentum, p), _b(self.wd, p)
        keep = _b(mask, p)
        if family in ("sgd", "nesterov"):
            g = g + wd * p
            buf = mom * s["buf"] + g
            s["buf"].copy_(torch.where(keep, buf, s["buf"]))
            direction = torch.where(_b(self.nesterov, p), g + mom * buf, buf)
            return p - lr * direction
        if family in ("adam", "adamw"):
            b1, b2 = _b(self.beta1, p), _b(self.beta2, p)
            if family == "adamw":
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
            m = b1 * s["m"] + (1 - b1) * g
            v = b2 * s["v"] + (1 - b2) * g * g
            s["m"].copy_(torch.where(keep, m, s["m"]))
            s["v"].copy_(torch.where(keep, v, s["v"]))
            step = _b(self.step_count.clamp(min=1), p)
            bc1, bc2 = 1 - b1**step, 1 - b2**step
            return p - (lr / bc1) * m / (v.sqrt() / bc2.sqrt() + ADAM_EPS)
        if family == "rmsprop":
            g = g + wd * p
            v = RMSPROP_ALPHA * s["v"] + (1 - RMSPROP_ALPHA) * g * g
            buf = mom * s["buf"] + g / (v.sqrt() + EPS)
            s["v"].copy_(torch.where(keep, v, s["v"]))
            s["buf"].copy_(torch.where(keep, buf, s["buf"]))
            return p - lr * buf
        raise ValueError(f"unknown optimizer {family!r}")

    def set_lr(self, lr: torch.Tensor) -> None:
        self.lr = lr


@torch.no_grad()
def pack_fitness(pack: Pack, task: Task, data: tuple[torch.Tensor, ...]) -> list[float]:
    """Fitness of every individual of the pack: mean loss on the fitness set, eval mode."""
    pack.base.eval()
    inputs, targets = data
    total = torch.zeros(pack.k, dtype=torch.float64, device=inputs.device)
    for start in range(0, len(inputs), task.eval_batch_size):
        x, y = inputs[start : start + task.eval_batch_size], targets[start : start + task.eval_batch_size]
        losses = vmap(task.loss, in_dims=(0, None))(pack.forward(x, shared=True), y)
        total += losses.double() * len(x)
    values = (total / len(inputs)).tolist()
    return [v if math.isfinite(v) else math.inf for v in values]


def train_pack(
    models: list[torch.nn.Module],
    task: Task,
    train_data: tuple[torch.Tensor, ...],
    fitness_data: tuple[torch.Tensor, ...],
    hps: list[dict],
    epochs: int,
    start_fitness: list[float],
    p_backoff: float,
    seeds: list[tuple],
    halve_lr: bool = False,
    bf16: bool = False,
) -> list[TrainResult]:
    """train.train for k individuals at once; the models are updated in place.
    Every individual must have the same batch size."""
    batch_size = hps[0]["batch_size"]
    if any(hp["batch_size"] != batch_size for hp in hps):
        raise ValueError("a pack needs one batch size")
    pack = Pack(models)
    optimizer = PackedOptimizer(pack.params, hps)
    inputs, targets = train_data
    device = inputs.device
    coins = [generator(*seed, "backoff") for seed in seeds]
    results = [TrainResult(f, dict(hp)) for f, hp in zip(start_fitness, hps)]
    lr = optimizer.lr.clone()
    for epoch in range(epochs):
        saved = [t.detach().clone() for t in pack.tensors() + optimizer.tensors()]
        orders = torch.stack([
            torch.randperm(len(inputs), generator=torch.Generator().manual_seed(int_seed(*seed, "data", epoch)))
            for seed in seeds
        ]).to(device)
        pack.base.train()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int_seed(*seeds[0], "dropout", epoch))
            for start in range(0, len(inputs), batch_size):
                index = orders[:, start : start + batch_size]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    losses = vmap(task.loss)(pack.forward(inputs[index]), targets[index])
                grads = torch.autograd.grad(losses.float().sum(), list(pack.params.values()))
                optimizer.step(list(grads))
        values = pack_fitness(pack, task, fitness_data)
        back = []
        for i, (value, coin, result) in enumerate(zip(values, coins, results)):
            draw = coin.random()
            if value > result.fitness and draw < p_backoff:
                back.append(i)
                result.backoffs += 1
                if halve_lr:
                    result.hparams["lr"] /= 2
                    lr[i] /= 2
            else:
                result.fitness = value
            result.epoch_fitness.append(result.fitness)
        if back:
            mask = torch.zeros(pack.k, dtype=torch.bool, device=device)
            mask[back] = True
            with torch.no_grad():
                for tensor, old in zip(pack.tensors() + optimizer.tensors(), saved):
                    tensor.copy_(torch.where(_b(mask, tensor), old, tensor))
            optimizer.set_lr(lr.clone())
    for i, model in enumerate(models):
        model.load_state_dict(pack.state_dict(i))
    return results
