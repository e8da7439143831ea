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

RMSPROP_ALPHA, EPS, ADAM_EPS = 0.99, 1e-8, 1e-8


class Pack:
    """k models as stacked parameter and buffer tensors, sharing one stateless module."""

    def __init__(self, models: list[torch.nn.Module]):
        self.k = len(models)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.params, self.buffers = stack_module_state(models)
        self.persistent = set(models[0].state_dict())  # non-persistent buffers stay out of checkpoints

    def _call(self, params, buffers, x):
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x: [k, B, ...] (one batch per individual), or [B, ...] shared by all when `shared`."""
        return vmap(self._call, in_dims=(0, 0, None if shared else 0), randomness="different")(self.params, self.buffers, x)

    def state_dict(self, i: int) -> dict:
        return {name: t[i].detach() for name, t in {**self.params, **self.buffers}.items() if name in self.persistent}

    def tensors(self) -> list[torch.Tensor]:
        return list(self.params.values()) + list(self.buffers.values())


def _per(values: list[float], device, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, device=device, dtype=dtype)


def _b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-individual [k] tensor against a stacked [k, ...] tensor."""
    v = v if v.dtype == torch.bool else v.to(like.dtype)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class PackedOptimizer:
    """SGD (plain and Nesterov), Adam, AdamW and RMSprop with per-individual hyper-parameters.

    The update formulas are torch.optim's (no dampening, no amsgrad, RMSprop alpha 0.99). Each
    family updates only its own individuals (all of them at once when the pack has one family).
    """

    def __init__(self, params: dict[str, torch.Tensor], hps: list[dict]):
        device = next(iter(params.values())).device
        self.params = list(params.values())
        family = [hp["optimizer"] for hp in hps]
        self.hp = {
            name: _per([hp[name] for hp in hps], device) for name in ("lr", "momentum", "weight_decay", "beta1", "beta2")
        }
        self.hp["nesterov"] = _per([f == "nesterov" and hp["momentum"] > 0 for f, hp in zip(family, hps)], device, torch.bool)
        self.step_count = torch.zeros(len(hps), device=device, dtype=torch.float64)
        self.adam_like = _per([float(f in ("adam", "adamw")) for f in family], device)
        self.groups = {  # family -> indices of its individuals (None: every individual)
            f: None if len(set(family)) == 1 else torch.tensor([i for i, x in enumerate(family) if x == f], device=device)
            for f in dict.fromkeys(family)
        }
        self.state = [{"buf": torch.zeros_like(p), "m": torch.zeros_like(p), "v": torch.zeros_like(p)} for p in self.params]

    def tensors(self) -> list[torch.Tensor]:
        return [self.step_count] + [t for s in self.state for t in s.values()]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.step_count += self.adam_like  # Adam's bias correction counts its own steps
        for family, idx in self.groups.items():
            hp = {k: v if idx is None else v[idx] for k, v in self.hp.items()}
            hp["step"] = self.step_count if idx is None else self.step_count[idx]
            for p, g, s in zip(self.params, grads, self.state):
                if idx is None:
                    p.copy_(_update(family, p, g, s, hp))
                else:
                    sub = {k: v[idx] for k, v in s.items()}
                    p[idx] = _update(family, p[idx], g[idx], sub, hp)
                    for k, v in sub.items():
                        s[k][idx] = v


def _update(family: str, p: torch.Tensor, g: torch.Tensor, s: dict, hp: dict) -> torch.Tensor:
    """The new parameters of one family's individuals; updates their state `s` in place."""
    lr, mom, wd = _b(hp["lr"], p), _b(hp["momentum"], p), _b(hp["weight_decay"], p)
    if family in ("sgd", "nesterov"):
        g = g + wd * p
        s["buf"].mul_(mom).add_(g)
        return p - lr * torch.where(_b(hp["nesterov"], p), g + mom * s["buf"], s["buf"])
    if family in ("adam", "adamw"):
        b1, b2, step = _b(hp["beta1"], p), _b(hp["beta2"], p), _b(hp["step"], p)
        if family == "adamw":
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        s["m"].mul_(b1).add_((1 - b1) * g)
        s["v"].mul_(b2).add_((1 - b2) * g * g)
        return p - (lr / (1 - b1**step)) * s["m"] / (s["v"].sqrt() / (1 - b2**step).sqrt() + ADAM_EPS)
    if family == "rmsprop":
        g = g + wd * p
        s["v"].mul_(RMSPROP_ALPHA).add_((1 - RMSPROP_ALPHA) * g * g)
        s["buf"].mul_(mom).add_(g / (s["v"].sqrt() + EPS))
        return p - lr * s["buf"]
    raise ValueError(f"unknown optimizer {family!r}")


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
                    optimizer.hp["lr"][i] /= 2
            else:
                result.fitness = value
            result.epoch_fitness.append(result.fitness)
        if back:
            mask = torch.zeros(pack.k, dtype=torch.bool, device=device)
            mask[back] = True
            with torch.no_grad():
                for tensor, old in zip(pack.tensors() + optimizer.tensors(), saved):
                    tensor.copy_(torch.where(_b(mask, tensor), old, tensor))
    for i, model in enumerate(models):
        model.load_state_dict(pack.state_dict(i))
    return results
