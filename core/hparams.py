"""Which optimizer and hyper-parameters an individual trains with in a generation."""

import math

from esgd.core.rng import generator
from esgd.core.schedules import value_at
from esgd.core.spec import FixedOptimizer, RunSpec


def fixed(opt: FixedOptimizer) -> dict:
    return {
        "optimizer": opt.optimizer,
        "lr": opt.lr,
        "momentum": opt.momentum,
        "weight_decay": opt.weight_decay,
        "beta1": opt.beta1,
        "beta2": opt.beta2,
        "batch_size": opt.batch_size,
    }


def draw(spec: RunSpec, generation: int, member: str) -> dict:
    """Draw an optimizer family uniformly from the pool, then its hyper-parameters from their
    ranges (lr log-uniform, scaled by the generation's lr_anneal factor; the rest uniform)."""
    rng = generator(spec.seed, generation, member, "hparams")
    names = sorted(spec.sgd.optimizers)
    name = names[int(rng.integers(len(names)))]
    ranges = spec.sgd.optimizers[name]
    u = rng.random(5)  # always five draws, so every field's draw is independent of the family
    lr = math.exp(math.log(ranges.lr.low) + u[0] * (math.log(ranges.lr.high) - math.log(ranges.lr.low)))
    factor = value_at(spec.sgd.lr_anneal, generation, spec.generations)

    def uniform(r, x):
        return r.low + x * (r.high - r.low)

    return {
        "optimizer": name,
        "lr": lr * factor,
        "momentum": uniform(ranges.momentum, u[1]),
        "weight_decay": uniform(ranges.weight_decay, u[2]),
        "beta1": uniform(ranges.beta1, u[3]),
        "beta2": uniform(ranges.beta2, u[4]),
        "batch_size": int(spec.sgd.batch_size[int(rng.integers(len(spec.sgd.batch_size)))]),
    }


def for_generation(spec: RunSpec, generation: int, member: str, previous: dict | None) -> dict:
    """Hyper-parameters of `member` in `generation`, by mode:
    esgd and no-evolution draw afresh every generation; population draws once (generation 0's
    draw, kept); single keeps its fixed optimizer and carries its (halved) lr from `previous`."""
    if spec.mode == "single":
        return dict(previous) if previous else fixed(spec.single)
    if spec.mode == "population":
        return draw(spec, 0, member)
    return draw(spec, generation, member)
