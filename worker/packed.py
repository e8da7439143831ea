"""Packed training: k individuals of one architecture trained at once on one device.

The k models' parameters live in one [k, P] matrix (one row per individual) and their buffers in
stacked [k, ...] tensors; the forward pass is vmap over functional_call on views of that matrix,
so one kernel launch serves all k, and the optimizer updates all parameters of all individuals in
a handful of kernels. Each individual keeps its own optimizer family and hyper-parameters (a
column of per-individual coefficients; the update formulas are torch.optim's), its own data
order, its own back-off coins and decisions: packing changes how many kernels a step takes, not
the algorithm. BatchNorm: running statistics are stacked buffers that vmap updates in place, per
individual, exactly as in an unpacked model. Individuals in one pack share a batch size (their
steps are in lockstep); the caller groups them.
"""

import copy
import functools
import math
import weakref

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from esgd.core.hparams import FLOATS, HParams
from esgd.core.rng import generator, int_seed
from esgd.store.checkpoint import Layout
from esgd.worker.optimizers import State, final_state, implementation
from esgd.worker.task import Task
from esgd.worker.train import TrainResult
from esgd.worker.weights import stacked_state, to_checkpoints

# template -> its stateless copy
_BASES: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


def _forward(base: torch.nn.Module, params: dict, buffers: dict, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
    """The stateless module on stacked parameters and buffers: vmap over functional_call."""

    def call(p, b, xi):
        return functional_call(base, (p, b), (xi,))

    return vmap(call, in_dims=(0, 0, None if shared else 0), randomness="different")(params, buffers, x)


def _views(flat: torch.Tensor, shapes: dict, aliases: dict) -> dict[str, torch.Tensor]:
    """Views of a [k, P] parameter matrix, shaped like each stacked parameter (tied ones under every
    name). One split, not a slice per parameter: the backward of a slice writes a zero-filled
    [k, P] gradient and adds it in, per parameter; the backward of a split is one concatenation."""
    pieces = flat.split([math.prod(shape) for shape in shapes.values()], dim=1)
    out = {name: piece.reshape(len(flat), *shape) for (name, shape), piece in zip(shapes.items(), pieces)}
    return out | {alias: out[name] for alias, name in aliases.items()}


class Pack:
    """k models as one parameter matrix plus stacked buffers, sharing one stateless module."""

    def __init__(self, template: torch.nn.Module, state: dict[str, torch.Tensor]):
        """template: a model of the architecture (only its structure is used); state: the k
        individuals' parameters and buffers as stacked [k, ...] tensors, by name."""
        if template not in _BASES:  # shared by the packs of one template: compiled code is reused (see _gradient)
            _BASES[template] = copy.deepcopy(template).to("meta")
        self.base = _BASES[template]
        first: dict[int, str] = {}  # tied weights: every further name of a parameter is an alias
        source: dict[str, str] = {}  # ... and, as in load_state_dict, its last name's values win
        for name, p in template.named_parameters(remove_duplicate=False):
            source[first.setdefault(id(p), name)] = name
        names = list(source)
        self.aliases = {
            name: first[id(p)] for name, p in template.named_parameters(remove_duplicate=False) if first[id(p)] != name
        }
        expected = {
            name: t.shape for name, t in [*template.named_parameters(remove_duplicate=False), *template.named_buffers()]
        }
        missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
        wrong = [name for name in expected.keys() & state.keys() if state[name].shape[1:] != expected[name]]
        if missing or unexpected or wrong:
            raise ValueError(
                f"the individuals do not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}, "
                f"wrong shape {sorted(wrong)}"
            )
        dtypes = {state[source[name]].dtype for name in names}
        if len(dtypes) > 1:
            raise ValueError(f"packing needs one parameter dtype, found {sorted(map(str, dtypes))}")
        self.k = len(state[names[0]])
        self.shapes = {name: state[name].shape[1:] for name in names}
        self.flat = torch.cat(
            [state[source[name]].detach().reshape(self.k, -1) for name in names], dim=1
        ).requires_grad_()
        self.buffers = {name: state[name] for name, _ in template.named_buffers()}
        self.state_names = list(template.state_dict())  # non-persistent buffers stay out of checkpoints
        self.param_names = {name for name, _ in template.named_parameters(remove_duplicate=False)}

    @classmethod
    def from_models(cls, models: list[torch.nn.Module]) -> "Pack":
        tensors = [{**dict(m.named_parameters(remove_duplicate=False)), **dict(m.named_buffers())} for m in models]
        return cls(models[0], {name: torch.stack([t[name].detach() for t in tensors]) for name in tensors[0]})

    @classmethod
    def from_checkpoints(cls, template: torch.nn.Module, checkpoints: list[tuple[Layout, np.ndarray]]) -> "Pack":
        """A pack straight from decoded checkpoints: one host-to-device copy, no module per individual."""
        device = next(template.parameters()).device
        state = stacked_state(checkpoints, device)
        for name, tensor in template.state_dict().items():  # load_state_dict casts to the model's dtypes too
            if name in state and state[name].dtype != tensor.dtype:
                state[name] = state[name].to(tensor.dtype)
        for name, buffer in template.named_buffers():  # non-persistent buffers: as a new model has them
            state.setdefault(name, buffer.detach().expand(len(checkpoints), *buffer.shape).clone())
        return cls(template, state)

    def params(self) -> dict[str, torch.Tensor]:
        """Views of the parameter matrix, shaped like each stacked parameter."""
        return _views(self.flat, self.shapes, self.aliases)

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """x: [k, B, ...] (one batch per individual), or [B, ...] shared by all when `shared`."""
        return _forward(self.base, self.params(), self.buffers, x, shared)

    def checkpoints(self) -> list[tuple[Layout, np.ndarray]]:
        """The k individuals as checkpoints, exactly as weights.to_checkpoint writes each model."""
        tensors = {**self.params(), **self.buffers}
        return to_checkpoints({name: tensors[name] for name in self.state_names}, self.param_names)

    def tensors(self) -> list[torch.Tensor]:
        return [self.flat] + list(self.buffers.values())


@functools.cache
def _compiler():
    """torch.compile as packs need it, set up on first use (importing the compiler costs seconds
    that uncompiled runs need not pay). Compiled and uncompiled code round differently, so which
    code runs must not depend on what the process compiled before: shapes are dynamic from the
    first call (not static first, dynamic after the first change), torch may keep more variants of
    a function than its default 8 (batch sizes, last batches, pack sizes), and running out raises
    instead of falling back to uncompiled code. (The optimizer update stays uncompiled: what
    compiling it gained and cost is in docs/PERFORMANCE.md.)"""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return functools.partial(torch.compile, dynamic=True)


def _gradient(pack: Pack, loss, bf16: bool, compiled: bool):
    """fn(flat, buffers, x, y): the gradient of the pack's summed training loss with respect to its
    parameter matrix, on a batch per individual (x: [k, B, ...]); BatchNorm buffers are updated in
    place. Kept on the pack's stateless module, one per loss, precision and compilation, so that
    every pack of a run reuses what torch.compile made for the first (it compiles again only for a
    new pack size or batch shape)."""
    cache = pack.base.__dict__.setdefault("_esgd_gradients", {})
    if (loss, bf16, compiled) not in cache:
        base, shapes, aliases = pack.base, pack.shapes, pack.aliases

        def total(flat, buffers, x, y):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                losses = vmap(loss)(_forward(base, _views(flat, shapes, aliases), buffers, x), y)
            return losses.float().sum()

        def eager(flat, buffers, x, y):  # autograd: faster than torch.func.grad uncompiled
            return torch.autograd.grad(total(flat, buffers, x, y), [flat])[0]

        cache[loss, bf16, compiled] = _compiler()(grad(total)) if compiled else eager
    return cache[loss, bf16, compiled]


def _column(values: list, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """Per-individual values as a [k, 1] column that broadcasts against the [k, P] matrix."""
    return torch.tensor(values, device=like.device, dtype=dtype or like.dtype).reshape(-1, 1)


class PackedOptimizer:
    """Every individual's own optimizer family and hyper-parameters, on the [k, P] parameter
    matrix: each family (esgd.worker.optimizers) updates only its own rows. Keep a family's
    individuals next to each other in the pack, and its rows are updated in place, without the
    gather and scatter that cost as much as the backward pass of a small MLP."""

    def __init__(self, flat: torch.Tensor, hps: list[HParams], states: list[State] | None = None):
        """`states`: each row's carried state to start from (sgd.optimizer_state: carry); None: fresh."""
        self.flat, self.hps = flat, hps
        family = [hp.optimizer for hp in hps]
        self.hp = {name: _column([getattr(hp, name) for hp in hps], flat) for name in FLOATS}
        self.hp["step"] = torch.zeros_like(self.hp["lr"])
        self.implementations = {f: implementation(f) for f in dict.fromkeys(family)}
        self.groups = {}  # family -> its rows: a slice (views, updated in place) when they are adjacent
        for f in self.implementations:
            rows = [i for i, x in enumerate(family) if x == f]
            adjacent = rows == list(range(rows[0], rows[-1] + 1))
            self.groups[f] = slice(rows[0], rows[-1] + 1) if adjacent else torch.tensor(rows, device=flat.device)
        needed = dict.fromkeys(name for impl in self.implementations.values() for name in impl.state)
        self.state = {name: torch.zeros_like(flat) for name in needed}  # only the state the pack's families use
        for row, state in enumerate(states or []):
            self.hp["step"][row] = state.step
            for name, tensor in state.tensors.items():
                self.state[name][row] = tensor

    def tensors(self) -> list[torch.Tensor]:
        return [self.hp["step"], *self.state.values()]

    def states(self) -> list[State]:
        """Each row's state as it is now, to carry on (what train.train's optimizer ends with)."""
        steps = self.hp["step"].reshape(-1).tolist()
        return [
            final_state(
                hp, int(step), {name: self.state[name][row] for name in self.implementations[hp.optimizer].state}
            )
            for row, (hp, step) in enumerate(zip(self.hps, steps))
        ]

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        self.hp["step"] += 1  # bias corrections (Adam) count the steps taken
        p = self.flat.detach()
        for family, rows in self.groups.items():
            impl = self.implementations[family]
            state = {k: self.state[k][rows] for k in impl.state}
            p[rows] = impl.update(p[rows], grad[rows], state, {k: v[rows] for k, v in self.hp.items()})
            if isinstance(rows, torch.Tensor):  # indexing gathered copies: write the state back
                for k, v in state.items():
                    self.state[k][rows] = v


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
    pack: Pack,
    task: Task,
    train_data: tuple[torch.Tensor, ...],
    fitness_data: tuple[torch.Tensor, ...],
    hps: list[HParams],
    epochs: int,
    start_fitness: list[float],
    p_backoff: float,
    seeds: list[tuple],
    halve_lr: bool = False,
    bf16: bool = False,
    compiled: bool = False,
    optimizer_states: list[State] | None = None,
    patience: int = 0,
) -> list[TrainResult]:
    """train.train for k individuals at once; the pack is updated in place. Every individual must
    have the same batch size. `compiled`: torch.compile the gradient (forward and backward).
    `optimizer_states`: as train.train's optimizer_state, one per individual; `patience`: as train.train's."""
    batch_size = hps[0].batch_size
    if any(hp.batch_size != batch_size for hp in hps):
        raise ValueError("a pack needs one batch size")
    optimizer = PackedOptimizer(pack.flat, hps, optimizer_states)
    gradient = _gradient(pack, task.loss, bf16, compiled)
    inputs, targets = train_data
    device = inputs.device
    coins = [generator(*seed, "backoff") for seed in seeds]
    results = [TrainResult(f, hp) for f, hp in zip(start_fitness, hps)]
    saved = [t.detach().clone() for t in pack.tensors() + optimizer.tensors()]  # each row's anchor
    for epoch in range(epochs):
        orders = torch.stack(
            [
                torch.randperm(len(inputs), generator=torch.Generator().manual_seed(int_seed(*seed, "data", epoch)))
                for seed in seeds
            ]
        ).to(device)
        pack.base.train()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int_seed(*seeds[0], "dropout", epoch))
            for start in range(0, len(inputs), batch_size):
                index = orders[:, start : start + batch_size]
                optimizer.step(gradient(pack.flat, pack.buffers, inputs[index], targets[index]))
        values = pack_fitness(pack, task, fitness_data)
        last = epoch == epochs - 1
        actions = [
            result.end_epoch(value, coin.random(), p_backoff, halve_lr, patience, last)
            for value, coin, result in zip(values, coins, results)
        ]
        back = [i for i, action in enumerate(actions) if action == "back"]
        if halve_lr:
            for i in back:
                optimizer.hp["lr"][i] /= 2
        anchored = [i for i, action in enumerate(actions) if action == "anchor"]
        with torch.no_grad():
            if back:
                rows = torch.tensor(back, device=device)
                for tensor, old in zip(pack.tensors() + optimizer.tensors(), saved):
                    tensor[rows] = old[rows]
            if anchored and not last:  # the last epoch's weights are never returned to
                rows = torch.tensor(anchored, device=device)
                for tensor, old in zip(pack.tensors() + optimizer.tensors(), saved):
                    old[rows] = tensor[rows]
    if optimizer_states is not None:
        for result, state in zip(results, optimizer.states()):
            result.optimizer_state = state
    return results
