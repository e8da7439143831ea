"""The extension points of docs/architecture.md ("To add X, touch Y"), each used from this file alone,
without touching the package: an optimizer family, a selection operator, an engine, a task, a store
backend."""

import math
import threading
from functools import partial

import numpy as np
import pytest
import torch

from esgd.analysis.lineage import hp_text
from esgd.analysis.report import read_history
from esgd.controller.driver import Driver, PhaseFailed
from esgd.controller.local import InProcess
from esgd.controller.runs import create_or_resume
from esgd.core import optimizers as families
from esgd.core import selection
from esgd.core.hparams import HParams
from esgd.core.plan import Phase
from esgd.core.spec import RunSpec, SpecError, parse_spec
from esgd.store.base import NotFound, Store
from esgd.store.run import RunRef
from esgd.store.uri import open_store
from esgd.worker import optimizers, steps
from esgd.worker.packed import Pack, train_pack
from esgd.worker.run import Run
from esgd.worker.task import Task
from esgd.worker.tasks.mlp import mlp
from esgd.worker.train import fitness, train

from helpers import execute, history, run_cli, start, tiny, write_spec

# An optimizer family: Lion (Chen et al. 2023), sign of an interpolated momentum -----------------------


class LionOptimizer(torch.optim.Optimizer):
    """Lion for one model, written as torch optimizers are."""

    def __init__(self, params, lr: float, betas: tuple[float, float], weight_decay: float):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


class Lion:
    """The family's torch side: one model, and the same update on a pack's rows."""

    state = ("m",)

    def single(self, params, hp: HParams) -> torch.optim.Optimizer:
        return LionOptimizer(params, hp.lr, (hp.beta1, hp.beta2), hp.weight_decay)

    def update(self, p, g, state, hp):
        b1, b2 = hp["beta1"], hp["beta2"]
        p = p * (1 - hp["lr"] * hp["weight_decay"])
        p = p - hp["lr"] * torch.sign(state["m"] * b1 + g * (1 - b1))
        state["m"].mul_(b2).add_((1 - b2) * g)
        return p


@pytest.fixture
def lion():
    optimizers.register(families.Family("lion", ("lr", "beta1", "beta2", "weight_decay")), Lion())
    yield
    optimizers.unregister("lion")


def _task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] * x[:, 1] > 0).long()
    return Task(model=partial(mlp, 6, 8, 2, 2, dtype=torch.float64), train=(x, y), fitness=(x[:80], y[:80]))


def test_a_new_optimizer_family_trains_single_and_packed_alike(lion):
    task = _task()
    hps = [HParams("lion", lr, 0.0, wd, 0.9, 0.99, 32) for lr, wd in ((1e-3, 0.0), (3e-3, 1e-2), (1e2, 0.0))]
    torch.manual_seed(0)
    models = [task.model() for _ in hps]
    start_fitness = [fitness(m, task, task.fitness) for m in models]
    seeds = [(1, 0, f"m{i}") for i in range(len(hps))]
    pack = Pack.from_models(models)
    alone = [
        train(m, task, task.train, task.fitness, hp, 3, f, 1.0, s)
        for m, hp, f, s in zip(models, hps, start_fitness, seeds)
    ]
    packed = train_pack(pack, task, task.train, task.fitness, hps, 3, start_fitness, 1.0, seeds)
    for a, p in zip(alone, packed):
        assert p.backoffs == a.backoffs and p.epoch_fitness == pytest.approx(a.epoch_fitness, rel=1e-9)
    assert alone[0].fitness < start_fitness[0] and alone[2].backoffs == 3  # it learns; a huge lr backs off
    for model, (_, vector) in zip(models, pack.checkpoints()):
        flat = torch.cat([t.reshape(-1) for t in model.state_dict().values() if t.is_floating_point()])
        assert np.allclose(vector, flat.numpy(), rtol=1e-9, atol=1e-12)


def test_a_new_optimizer_family_is_known_to_specs_runs_and_reports(lion, tmp_path):
    spec = tiny(
        generations=2,
        sgd={"optimizers": {"lion": {"lr": [1e-4, 1e-3], "beta1": [0.85, 0.95]}, "adam": {"lr": [1e-3, 3e-3]}}},
    )
    run = start(str(tmp_path), spec, "lion")
    execute(run)
    rows = [r for r in history(run.uri) if r["role"] == "parent"]
    assert {r["optimizer"] for r in rows} == {"lion", "adam"}
    row = next(r for r in rows if r["optimizer"] == "lion")
    assert "betas (" in hp_text(row) and "momentum" not in hp_text(row)  # what the family reads
    carry = {**spec, "name": "lion-carry", "sgd": {**spec["sgd"], "optimizer_state": "carry"}}
    with pytest.raises(SpecError, match="family 'lion' does not say how its state is carried"):
        execute(start(str(tmp_path), carry, "lion-carry"))  # Lion has no torch_state: refused at init
    optimizers.unregister("lion")
    with pytest.raises(SpecError, match="unknown optimizer family 'lion'"):
        parse_spec(spec)


# A selection operator: the ρ fittest always, instead of the roulette wheel ---------------------------


def fittest(rng: np.random.Generator, losses: np.ndarray, rho: int, evolution) -> list[int]:
    return [int(i) for i in selection.rank(losses)[:rho]]


def test_a_new_parent_selection_is_chosen_by_name(tmp_path, monkeypatch):
    monkeypatch.setitem(selection.PARENTS, "fittest", fittest)
    run = start(str(tmp_path), tiny(generations=2, evolution={"parents": "fittest"}), "fittest")
    execute(run)
    rows = history(run.uri)
    for generation in (0, 1):
        parents = sorted(
            (r for r in rows if r["generation"] == generation and r["role"] == "parent"), key=lambda r: r["fitness"]
        )
        best_two = [r["member"] for r in parents[:2]]
        assert all(r["parents"] == best_two for r in rows if r["generation"] == generation and r["role"] == "offspring")
    with pytest.raises(SpecError, match="evolution.parents: unknown parent selection 'nope'"):
        parse_spec(tiny(evolution={"parents": "nope"}))


# An engine: stages backwards, one individual per step, and a first attempt that gives up halfway -------


class Backwards:
    """An engine written in this file: it runs each stage's steps in reverse order in this process,
    cut as finely as the plan allows, and fails the first attempt of every phase after its first
    stage (as an engine whose pods were preempted would). The driver hands the phase back."""

    name = "the backwards engine"
    attempts = 2

    def __init__(self):
        self.ran: list[tuple[str, int]] = []  # (phase tag, attempt) per stage run
        self.workers: dict[str, Run] = {}

    def split(self, spec: RunSpec) -> tuple[int, int]:
        return 1, 1

    def retry_delay(self, attempt: int) -> float:
        return 0.0  # nothing to wait for: the failure was this engine's own doing

    def run_phase(self, run: RunRef, phase: Phase, attempt: int) -> None:
        worker = self.workers.setdefault(run.uri, Run(run, "cpu"))
        for index, stage in enumerate(phase.stages):
            self.ran.append((phase.tag, attempt))
            for step in reversed(stage):
                steps.run(worker, step)
            if attempt == 0 and index == 0 and len(phase.stages) > 1:
                raise PhaseFailed(f"{phase.tag} attempt 0: preempted")


def test_a_new_engine_drives_a_run_to_the_same_history(tmp_path):
    data = tiny(generations=2, finetune={"epochs": 1}, pack={"size": 1})  # one at a time, as this engine trains
    reference = start(str(tmp_path), data, "reference")
    execute(reference)
    run, _ = create_or_resume(open_store(str(tmp_path)), parse_spec(data), "backwards")
    engine, log = Backwards(), []
    Driver(run, engine, log.append).drive()
    assert history(run.uri) == history(reference.uri)
    assert (
        "g0000 attempt 0: preempted; on to the next attempt (1 left) in 0 s" in log
        and log[-1] == "run backwards is complete"
    )
    attempts: dict[str, list[int]] = {}
    for tag, attempt in engine.ran:
        attempts.setdefault(tag, []).append(attempt)
    assert list(attempts) == ["g0000", "g0001", "final"]
    assert all(a[0] == 0 and set(a[1:]) == {1} for a in attempts.values())  # every phase, handed back once


# A task: your own model and data, named by import path -------------------------------------------------


class Bilinear(torch.nn.Module):
    """y = x^T W x: a model no bundled task has."""

    def __init__(self, size: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(size, size) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,ij,bj->b", x, self.w, x)


def task(size: int = 4, examples: int = 256) -> Task:
    """A regression task of this test file: fit y = x0 * x1 with a bilinear form (mean squared error)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(examples, size, generator=g)
    y = x[:, 0] * x[:, 1]
    return Task(
        model=partial(Bilinear, size),
        train=(x, y),
        fitness=(x[:64], y[:64]),
        loss=torch.nn.functional.mse_loss,
        metric_of_fitness=math.sqrt,
        metric_name="rmse",
    )


def test_a_task_of_your_own_runs_by_import_path(tmp_path, capsys):
    data = dict(
        tiny(task="test_extending:task", generations=3, sgd={"optimizers": {"adam": {"lr": [0.01, 0.05]}}}),
        task_args={"size": 3},
    )
    spec = write_spec(tmp_path / "spec.yaml", data)
    code, uri, err = run_cli(capsys, "run", spec, "--store", str(tmp_path / "store"))
    assert code == 0, err
    best = [min(r["fitness"] for r in history(uri) if r["generation"] == g and r["selected"]) for g in range(3)]
    assert best[-1] < best[0] and all(b <= a for a, b in zip(best, best[1:]))
    code, out, err = run_cli(capsys, "report", uri, "--out", str(tmp_path / "plots"))
    assert code == 0 and "rmse" in err
    bad = write_spec(tmp_path / "bad.yaml", dict(data, task_args={"sizes": 3}))
    code, _, err = run_cli(capsys, "run", bad, "--store", str(tmp_path / "store"))
    assert code == 2 and "refused its task_args" in err


# A store backend: objects in a dict, with the interface's atomic put_if_absent -------------------------


class MemoryStore(Store):
    """Every object in this process's memory (a backend needs these six methods; streaming reads and
    writes have defaults)."""

    uri = "memory://test"

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = bytes(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self.lock:
            if key in self.objects:
                return False
            self.objects[key] = bytes(data)
            return True

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise NotFound(f"{self.uri}/{key} not found") from None

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix.rstrip("/") + "/"))

    def check_writable(self) -> None:
        pass


def test_a_new_store_backend_holds_a_whole_run(tmp_path):
    data = tiny(generations=2, finetune={"epochs": 1})
    reference = start(str(tmp_path), data, "reference")
    execute(reference)
    store = MemoryStore()
    run, _ = create_or_resume(store, parse_spec(data), "in-memory")
    Driver(run, InProcess("cpu"), log=lambda line: None).drive()
    assert read_history(store, run.id) == history(reference.uri)
    assert any(key.endswith(".arrow") for key in store.objects)  # the checkpoints went through it too
