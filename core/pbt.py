"""Population Based Training (mode pbt): exploit and explore, as pure decisions.

After a generation's SGD step, each individual of the bottom quantile (by fitness after training)
is replaced by a copy of one drawn uniformly from the top quantile: the donor's weights (its
committed checkpoint, no new blob) and its hyper-parameters, explored (perturbed by a factor, or
drawn afresh with probability `pbt.resample`). The copy is a new member (keys.copy_id) in the
replaced individual's slot, with role COPY and parents (donor,); everyone else moves on with the
hyper-parameters it trained with. The ideas follow Ray Tune's PBT scheduler (its _quantiles and
explore), the decisions are this module's (docs/method.md, "PBT").

Every draw comes from a generator keyed by (seed, generation, the replaced member, "pbt"), so the
decisions depend on nothing but the spec and the trained population.
"""

import math
from dataclasses import dataclass, replace

import numpy as np

from esgd.core import keys
from esgd.core.hparams import DRAWN, HParams, from_range
from esgd.core.records import Member
from esgd.core.rng import generator
from esgd.core.schedules import value_at
from esgd.core.selection import rank
from esgd.core.spec import PBTSpec, Range, RunSpec

COPY = "copy"
"""The role of a PBT copy in manifests and the history (beside parent, offspring, reference, finetune)."""


@dataclass(frozen=True)
class Exploit:
    """Population slot `slot` takes a copy of slot `donor`, to train next with `hparams`."""

    slot: int
    donor: int
    hparams: HParams


def quantile_size(mu: int, quantile: float) -> int:
    """Individuals in each of the bottom and top quantiles: ⌈µ·q⌉, at most ⌊µ/2⌋ so that the two never
    overlap (Ray Tune's rule): µ = 1 exploits nobody, µ = 2 and 3 one, µ = 8 two at q = 0.25."""
    # - 1e-9: 10 × 0.3 is 3.0000000000000004 in floats, whose ceiling would be 4
    return min(math.ceil(mu * quantile - 1e-9), mu // 2)


def quantiles(losses, quantile: float) -> tuple[list[int], list[int]]:
    """(bottom, top) slots: the worst and the best quantile_size of them, each best first. Ties keep
    slot order (core.selection.rank: NaN counts as worst), so equal losses rank the lower slot better."""
    order = [int(i) for i in rank(np.asarray(losses, dtype=np.float64))]
    n = quantile_size(len(order), quantile)
    return (order[len(order) - n :] if n else []), order[:n]


def _clip(value: float, r: Range) -> float:
    return min(max(value, r.low), r.high)


def explore(rng: np.random.Generator, hp: HParams, spec: RunSpec) -> HParams:
    """`hp` explored, Ray Tune's way, within the spec's ranges: the family is kept, or with probability
    pbt.resample drawn afresh from the pool (a new family draws all its hyper-parameters from its own
    ranges: a value tuned for another optimizer means little to it); each float hyper-parameter is
    drawn afresh from its range with probability pbt.resample, else multiplied by a factor drawn from
    pbt.factors, and clipped to its range; the batch size is drawn afresh from sgd.batch_size with
    probability pbt.resample, else moves to the next larger (factor > 1) or smaller (factor < 1)
    allowed value (Ray's move for a list of choices). Ranges are those generation 0 draws from (lr
    scaled by lr_anneal's start): PBT's own perturbations schedule the lr. Every number is drawn
    whatever is used, so each decision's draw does not depend on the others."""
    pbt: PBTSpec = spec.pbt or PBTSpec()
    names = sorted(spec.sgd.optimizers)
    fresh = rng.random(len(DRAWN) + 2) < pbt.resample  # family, each float, the batch size
    factor = [pbt.factors[int(i)] for i in rng.integers(len(pbt.factors), size=len(DRAWN) + 1)]
    u = rng.random(len(DRAWN))
    family_pick, batch_pick = int(rng.integers(len(names))), int(rng.integers(len(spec.sgd.batch_size)))
    family = names[family_pick] if fresh[0] or hp.optimizer not in names else hp.optimizer
    ranges = spec.sgd.optimizers[family]
    lr_scale = value_at(spec.sgd.lr_anneal, 0, spec.generations)
    values = {}
    for i, field in enumerate(DRAWN):
        r = getattr(ranges, field)
        if field == "lr":
            r = Range(low=r.low * lr_scale, high=r.high * lr_scale)
        if family != hp.optimizer or fresh[i + 1]:
            values[field] = _clip(from_range(r, field, u[i]), r)  # clipped: exp(log(...)) may round out
        else:
            values[field] = _clip(getattr(hp, field) * factor[i], r)
    allowed = sorted(set(spec.sgd.batch_size))
    if fresh[-1] or hp.batch_size not in allowed:
        batch = int(spec.sgd.batch_size[batch_pick])
    else:
        step = factor[-1]
        at = allowed.index(hp.batch_size) + (step > 1) - (step < 1)
        batch = allowed[min(max(at, 0), len(allowed) - 1)]
    return HParams(optimizer=family, batch_size=batch, **values)


def exploits(spec: RunSpec, generation: int, members: list[str], losses, hps: list[HParams]) -> list[Exploit]:
    """Who copies whom after `generation`'s SGD step, and the explored hyper-parameters of each
    copy, in slot order: every slot of the bottom quantile takes one drawn uniformly from the top."""
    bottom, top = quantiles(losses, (spec.pbt or PBTSpec()).quantile)
    out = []
    for slot in sorted(bottom):
        rng = generator(spec.seed, generation, members[slot], "pbt")
        donor = top[int(rng.integers(len(top)))]
        out.append(Exploit(slot, donor, explore(rng, hps[donor], spec)))
    return out


def next_population(spec: RunSpec, generation: int, trained: list[Member]) -> list[Member]:
    """The population after `generation`'s select in mode pbt: `trained` (its members after their SGD
    step, with the hyper-parameters they trained with), the bottom quantile's slots taken by copies
    of the top's (the donor's checkpoint and fitness, role COPY, parents (donor,), explored hparams).
    Elite flags are left to the caller."""
    losses = [m.fitness for m in trained]
    out = list(trained)
    for e in exploits(spec, generation, [m.member for m in trained], losses, [m.hparams for m in trained]):
        donor = trained[e.donor]
        copy = keys.copy_id(generation, e.slot)
        out[e.slot] = replace(
            donor, member=copy, role=COPY, born=generation, parents=(donor.member,), hparams=e.hparams
        )
    return out
