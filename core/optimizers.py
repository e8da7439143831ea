"""Optimizer families: the one list every layer reads (spec validation, draws, lineage, the worker).

A family is known here by its name and the hyper-parameters its update reads; how it updates
weights (a torch optimizer for one model, a formula on the rows of a packed parameter matrix)
lives in esgd.worker.optimizers under the same name. `esgd.worker.optimizers.register` adds a
family to both places at once (docs/architecture.md, "To add X, touch Y").
"""

from dataclasses import dataclass

from esgd.core.errors import InputError


@dataclass(frozen=True)
class Family:
    name: str
    """The name specs use (sgd.optimizers, single.optimizer, finetune.optimizer)."""
    reads: tuple[str, ...]
    """The hyper-parameters (fields of esgd.core.hparams.HParams) its update reads, besides the
    batch size: reports show these. Every family still gets every field drawn, so that a draw
    does not depend on the family."""


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    """Make a family known to specs and draws (its torch side: esgd.worker.optimizers.register)."""
    FAMILIES[family.name] = family


def unregister(name: str) -> None:
    FAMILIES.pop(name, None)


def check_name(name: str) -> str:
    """`name` if it is a known family; InputError (a ValueError, as spec validators raise) naming the
    known ones otherwise."""
    if name not in FAMILIES:
        raise InputError(f"unknown optimizer family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return name


for _family in (
    Family("sgd", ("lr", "momentum", "weight_decay")),  # SGD with (heavy-ball) momentum
    Family("nesterov", ("lr", "momentum", "weight_decay")),  # SGD with Nesterov momentum
    Family("adam", ("lr", "beta1", "beta2", "weight_decay")),  # Adam, L2 weight decay
    Family("adamw", ("lr", "beta1", "beta2", "weight_decay")),  # AdamW, decoupled weight decay
    Family("rmsprop", ("lr", "momentum", "weight_decay")),  # RMSprop, alpha 0.99
):
    register(_family)
