"""Which optimizer and hyper-parameters an individual trains with in a generation.

HParams is the one definition of a hyper-parameter set: records hold it as a JSON object, Parquet
tables (manifests, history) as columns named after its fields, and the spec's ranges
(OptimizerRange) and fixed optimizers (FixedOptimizer) use the same names (a test checks it).
"""

import math
from dataclasses import dataclass, fields, replace

from pydantic import ConfigDict

from esgd.core.rng import generator
from esgd.core.schedules import value_at
from esgd.core.spec import FixedOptimizer, OptimizerRange, Range, RunSpec


@dataclass(frozen=True)
class HParams:
    """The hyper-parameters one individual trains with (history columns, in this order)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # records are validated on read (esgd.core.records)
    optimizer: str
    """Optimizer family (esgd.core.optimizers)."""
    lr: float
    momentum: float
    weight_decay: float
    beta1: float
    beta2: float
    batch_size: int

    def with_lr(self, lr: float) -> "HParams":
        return replace(self, lr=lr)


DRAWN = tuple(OptimizerRange.model_fields)
"""The hyper-parameters drawn from a family's ranges, in draw order (lr, momentum, ...)."""
LOG_UNIFORM = {"lr"}
"""Drawn log-uniformly; the others uniformly."""
FLOATS = tuple(f.name for f in fields(HParams) if f.type is float)


def fixed(opt: FixedOptimizer) -> HParams:
    """The hyper-parameters of a fixed optimizer (the single mode's, fine-tuning's)."""
    return HParams(**{f.name: getattr(opt, f.name) for f in fields(HParams)})


def from_range(r: Range, field: str, x: float) -> float:
    """The value of `field` in range `r` at the uniform draw x in [0, 1): log-uniform for the lr."""
    if field in LOG_UNIFORM:
        return math.exp(math.log(r.low) + x * (math.log(r.high) - math.log(r.low)))
    return float(r.low + x * (r.high - r.low))


def draw(spec: RunSpec, generation: int, member: str) -> HParams:
    """Draw an optimizer family uniformly from the pool, then its hyper-parameters from their
    ranges (lr log-uniform, scaled by the generation's lr_anneal factor; the rest uniform)."""
    rng = generator(spec.seed, generation, member, "hparams")
    names = sorted(spec.sgd.optimizers)
    name = names[int(rng.integers(len(names)))]
    ranges = spec.sgd.optimizers[name]
    u = rng.random(len(DRAWN))  # every field drawn, so each field's draw is independent of the family
    values = {field: from_range(getattr(ranges, field), field, x) for field, x in zip(DRAWN, u)}
    values["lr"] *= value_at(spec.sgd.lr_anneal, generation, spec.generations)
    batch_size = int(spec.sgd.batch_size[int(rng.integers(len(spec.sgd.batch_size)))])
    return HParams(optimizer=name, batch_size=batch_size, **values)


def for_generation(
    spec: RunSpec, generation: int, member: str, previous: HParams | None, inherited: HParams | None = None
) -> HParams:
    """Hyper-parameters of `member` in `generation`, by mode:
    esgd and no-evolution follow sgd.hparams: redraw draws afresh every generation; keep keeps
    `previous` for a member that trained, and an offspring draws; inherit also gives an offspring
    `inherited` (its fittest parent's, when the caller found them). population draws once
    (generation 0's draw, kept); single keeps its fixed optimizer and carries its (halved) lr from
    `previous`; pbt draws in generation 0, then keeps `previous`: what the member trained with, or
    for a copy made by the last select the donor's, explored (esgd.core.pbt)."""
    if spec.mode == "single":
        return previous or fixed(spec.single)
    if spec.mode == "population":
        return draw(spec, 0, member)
    if spec.mode == "pbt" or spec.sgd.hparams == "keep":
        return previous or draw(spec, generation, member)
    if spec.sgd.hparams == "inherit":
        return previous or inherited or draw(spec, generation, member)
    return draw(spec, generation, member)
