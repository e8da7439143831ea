"""The torch side of the optimizer families (esgd.core.optimizers holds their names and what they
read): for each family, the optimizer of one model and the same update on the rows of a packed
[k, P] parameter matrix (esgd.worker.packed), one row per individual, each with its own
hyper-parameters. The packed formulas are torch.optim's (no dampening, no amsgrad, RMSprop alpha
0.99), so a packed and an unpacked run agree to float rounding (tests/test_packing.py). With
sgd.optimizer_state: carry, an individual's state (State) travels between generations as a
checkpoint blob, and enters and leaves either kind of training the same way.
"""

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from esgd.core import optimizers as families
from esgd.core.hparams import HParams
from esgd.store.checkpoint import Layout
from esgd.worker.weights import stacked_state, to_checkpoints

RMSPROP_ALPHA, EPS, ADAM_EPS = 0.99, 1e-8, 1e-8
STEP = "step"  # torch.optim's step count, and a State's in its checkpoint (Layout.ints)
MOMENTUM_BUFFER = "momentum_buffer"  # torch.optim keeps one only for a non-zero momentum


class Implementation(Protocol):
    """How one family updates weights (docs/architecture.md, "To add X, touch Y")."""

    state: tuple[str, ...]
    """Names of its per-parameter state in a pack ([k, P] tensors, zero at the start)."""

    torch_state: dict[str, str]
    """torch.optim's key for each name of `state`, and for `step` if its optimizer counts steps:
    how a carried state (sgd.optimizer_state: carry) enters the optimizer of one model and leaves it."""

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
    torch_state = {"buf": MOMENTUM_BUFFER}

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
    torch_state = {"m": "exp_avg", "v": "exp_avg_sq", STEP: STEP}

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
    torch_state = {"v": "square_avg", "buf": MOMENTUM_BUFFER, STEP: STEP}

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


# Optimizer state carried between generations (sgd.optimizer_state: carry) --------------------------


@dataclass
class State:
    """One individual's optimizer state: each of its family's `state` tensors as a vector over the
    individual's parameters, laid out as a pack's row (the model's parameters in order, a tied
    weight once), and the optimizer steps taken. A state without steps is a fresh one (zeros)."""

    step: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_checkpoint(self) -> tuple[Layout, np.ndarray]:
        """The state as a checkpoint: one entry per tensor, the step count in Layout.ints."""
        stacked = {name: t.unsqueeze(0) for name, t in self.tensors.items()}
        return to_checkpoints(stacked | {STEP: torch.tensor([self.step])}, set())[0]

    @classmethod
    def from_checkpoint(cls, layout: Layout, vector: np.ndarray, device: torch.device | str) -> "State":
        tensors = {name: t[0] for name, t in stacked_state([(layout, vector)], device).items()}
        return cls(int(tensors.pop(STEP)), tensors)


def final_state(hp: HParams, step: int, tensors: dict[str, torch.Tensor]) -> State:
    """The state an individual that trained with `hp` carries on. Without momentum there is no
    momentum buffer to carry (torch.optim keeps none; a pack's row holds the last step's direction
    there), so it is zeros: single and packed training hand on the same state."""
    keys = implementation(hp.optimizer).torch_state
    return State(
        step,
        {
            name: torch.zeros_like(t) if hp.momentum == 0 and keys[name] == MOMENTUM_BUFFER else t
            for name, t in tensors.items()
        },
    )


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def load_state(optimizer: torch.optim.Optimizer, hp: HParams, state: State) -> None:
    """Start the optimizer of one model (make_optimizer's, with `hp`) from a carried state."""
    if state.step == 0:
        return  # fresh: torch.optim starts from zeros itself
    keys, offset = implementation(hp.optimizer).torch_state, 0
    for p in _params(optimizer):
        values = {
            key: torch.tensor(float(state.step))  # the dtype and device torch.optim gives its step count
            if name == STEP
            else state.tensors[name][offset : offset + p.numel()].view_as(p).to(p, copy=True)
            for name, key in keys.items()
        }
        optimizer.state[p] = values
        offset += p.numel()


def single_state(optimizer: torch.optim.Optimizer, hp: HParams, step: int) -> State:
    """The state of the optimizer of one model after `step` steps in all (make_optimizer's, with `hp`);
    a parameter without state (it never had a gradient) has zeros."""
    impl, params = implementation(hp.optimizer), _params(optimizer)
    tensors = {
        name: torch.cat(
            [optimizer.state[p].get(impl.torch_state[name], torch.zeros_like(p)).reshape(-1) for p in params]
        )
        for name in impl.state
    }
    return final_state(hp, step, tensors)
