"""The torch side of the optimizer families (esgd.core.optimizers holds their names and what they
read): for each family, the optimizer of one model and the same update on the rows of a packed
[k, P] parameter matrix (esgd.worker.packed), one row per individual, each with its own
hyper-parameters. The packed formulas are torch.optim's (no dampening, no amsgrad, RMSprop alpha
0.99), so a packed and an unpacked run agree to float rounding (tests/test_packing.py).
"""

from typing import Protocol

import torch

from esgd.core import optimizers as families
from esgd.core.hparams import HParams

RMSPROP_ALPHA, EPS, ADAM_EPS = 0.99, 1e-8, 1e-8


class Implementation(Protocol):
    """How one family updates weights (docs/architecture.md, "To add X, touch Y")."""

    state: tuple[str, ...]
    """Names of its per-parameter state in a pack ([k, P] tensors, zero at the start)."""

    def single(self, params, hp: HParams) -> torch.optim.Optimizer:
        """The optimizer of one model."""
        ...

    def update(
        self, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], hp: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """New parameter rows from the rows `p` and their gradient `g`; updates its `state` rows in
        place. `hp`: a [k, 1] column per float field of HParams, plus `step` (steps taken so far,
        this one included, for bias corrections)."""
        ...


class SGD:
    state = ("buf",)

    def __init__(self, nesterov: bool):
        self.nesterov = nesterov

    def single(self, params, hp: HParams) -> torch.optim.Optimizer:
        nesterov = self.nesterov and hp.momentum > 0  # torch refuses Nesterov without momentum
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=nesterov)

    def update(self, p, g, state, hp):
        lr, mom = hp["lr"], hp["momentum"]
        g = torch.addcmul(g, hp["weight_decay"], p)
        state["buf"].mul_(mom).add_(g)
        direction = state["buf"]
        if self.nesterov:  # as torch.optim.SGD, rows without momentum take the plain step
            direction = torch.where(mom > 0, torch.addcmul(g, mom, state["buf"]), state["buf"])
        return torch.addcmul(p, lr, direction, value=-1)


class Adam:
    state = ("m", "v")

    def __init__(self, decoupled: bool):
        self.decoupled = decoupled  # AdamW: weight decay applied to the weights, not the gradient

    def single(self, params, hp: HParams) -> torch.optim.Optimizer:
        kind = torch.optim.AdamW if self.decoupled else torch.optim.Adam
        return kind(params, lr=hp.lr, betas=(hp.beta1, hp.beta2), weight_decay=hp.weight_decay)

    def update(self, p, g, state, hp):
        lr, wd, b1, b2, step = hp["lr"], hp["weight_decay"], hp["beta1"], hp["beta2"], hp["step"]
        if self.decoupled:
            p = p * (1 - lr * wd)
        else:
            g = torch.addcmul(g, wd, p)
        state["m"].mul_(b1).addcmul_(1 - b1, g)
        state["v"].mul_(b2).addcmul_(1 - b2, g * g)
        denom = state["v"].sqrt().div_((1 - b2**step).sqrt()).add_(ADAM_EPS)
        return p - (lr / (1 - b1**step)) * state["m"] / denom


class RMSprop:
    state = ("v", "buf")

    def single(self, params, hp: HParams) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)

    def update(self, p, g, state, hp):
        g = torch.addcmul(g, hp["weight_decay"], p)
        state["v"].mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
        state["buf"].mul_(hp["momentum"]).add_(g / (state["v"].sqrt() + EPS))
        return torch.addcmul(p, hp["lr"], state["buf"], value=-1)


IMPLEMENTATIONS: dict[str, Implementation] = {
    "sgd": SGD(nesterov=False),
    "nesterov": SGD(nesterov=True),
    "adam": Adam(decoupled=False),
    "adamw": Adam(decoupled=True),
    "rmsprop": RMSprop(),
}


def register(family: families.Family, implementation: Implementation) -> None:
    """Add an optimizer family everywhere at once: its name and reads (specs, draws, reports) and
    its torch side (single and packed training)."""
    families.register(family)
    IMPLEMENTATIONS[family.name] = implementation


def unregister(name: str) -> None:
    families.unregister(name)
    IMPLEMENTATIONS.pop(name, None)


def implementation(name: str) -> Implementation:
    families.check_name(name)  # InputError naming the known families
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(
            f"optimizer family {name!r} has no torch implementation (esgd.worker.optimizers.register)"
        ) from None


def make_optimizer(params, hp: HParams) -> torch.optim.Optimizer:
    """The torch optimizer of one model training with `hp`."""
    return implementation(hp.optimizer).single(params, hp)
