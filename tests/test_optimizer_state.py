"""sgd.optimizer_state: carry. An individual that trained in the previous generation with the same
optimizer family starts from the optimizer state it ended with; anything else starts fresh. reset
(the default) is the paper's and leaves runs and records as they were."""

import copy
import json
import math

import pytest
import torch

from esgd.analysis.verify import verify
from esgd.controller.local import local_engine
from esgd.core import keys
from esgd.core.hparams import HParams
from esgd.core.plan import Step
from esgd.core.records import BlobRef, TrainRecord, decode, digest, encode
from esgd.worker import steps
from esgd.worker.optimizers import State, implementation
from esgd.worker.packed import Pack, train_pack
from esgd.worker.run import Run
from esgd.worker.task import Task
from esgd.worker.tasks.mlp import mlp
from esgd.worker.train import fitness, train
from esgd.worker.weights import load_into

from helpers import all_steps, dies_after_commits, execute, history, merge, start, tiny

FAMILIES = ["sgd", "nesterov", "adam", "adamw", "rmsprop"]
IRIS = tiny(
    task="esgd.worker.tasks.toy:task",
    task_args={"dataset": "iris"},
    sgd={
        "batch_size": [16, 32],
        "optimizer_state": "carry",
        "optimizers": {f: {"lr": [0.003, 0.03], "momentum": [0.5, 0.9]} for f in FAMILIES},
        "patience": 0,  # a back-off undoes one epoch, so _steps_taken counts a state's steps exactly
    },
)


def _state(run: Run, record: TrainRecord) -> State:
    return State.from_checkpoint(*run.read_checkpoint(record.optimizer_state), "cpu")


def _records(run: Run, generation: int) -> dict[str, TrainRecord]:
    members = [k for k in run.store.list(f"{keys.gen(run.id, generation)}/train") if k.endswith(".json")]
    return {r.member: r for r in (run.store.read(k, TrainRecord) for k in members)}


def _steps_taken(run: Run, record: TrainRecord) -> int:
    """Optimizer steps of the epochs it kept (a back-off also restores the optimizer state)."""
    batches = math.ceil(len(run.task.train[0]) / record.hparams.batch_size)
    return batches * (record.epochs - record.backoffs)


def _check_starts(run: Run) -> tuple[int, int]:
    """Every record's state took its own steps on top of the state the member ended the previous
    generation with, when it trained then with the same family, else on a fresh one. Returns how
    many training steps of generations after the first carried a state and how many started fresh."""
    carried = fresh = 0
    before: dict[str, TrainRecord] = {}
    for generation in range(run.spec.generations):
        records = _records(run, generation)
        for member, record in records.items():
            state = _state(run, record)
            assert set(state.tensors) == set(implementation(record.hparams.optimizer).state)
            last = before.get(member)
            start = _state(run, last).step if last and last.hparams.optimizer == record.hparams.optimizer else 0
            assert state.step == start + _steps_taken(run, record), (generation, member)
            if generation > 0:
                carried, fresh = carried + (start > 0), fresh + (start == 0)
        before = records
    return carried, fresh


# The spec and the record ---------------------------------------------------------------------------


def test_a_record_without_optimizer_state_keeps_its_bytes_and_an_old_one_loads():
    hp = HParams("adam", 0.001, 0.0, 0.0, 0.9, 0.999, 32)
    record = TrainRecord("init-000", BlobRef("runs/r/x.arrow", "ab" * 32, 10), 0.5, 0.7, hp, 1, 2, (0.6, 0.5))
    assert b"optimizer_state" not in encode(record)
    # an old record, as written before the field existed (its checksum over exactly these fields)
    body = {
        "schema": "train/1",
        "member": "init-000",
        "checkpoint": {"key": "runs/r/x.arrow", "sha256": "ab" * 32, "size": 10},
        "fitness": 0.5,
        "fitness_before": 0.7,
        "hparams": {k: getattr(hp, k) for k in hp.__dataclass_fields__},
        "backoffs": 1,
        "epochs": 2,
        "epoch_fitness": [0.6, 0.5],
    }
    old = json.dumps({**body, "checksum": digest(json.dumps(body, sort_keys=True))}, sort_keys=True).encode()
    assert old == encode(record)
    assert decode(TrainRecord, old, "old").optimizer_state is None
    carried = TrainRecord(**{**record.__dict__, "optimizer_state": BlobRef("runs/r/y.arrow", "cd" * 32, 5)})
    assert decode(TrainRecord, encode(carried), "new") == carried


# Single and packed training carry the same state ------------------------------------------------------


def _task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return Task(
        model=lambda: mlp(6, 8, 2, 2, batchnorm=True, dtype=torch.float64), train=(x, y), fitness=(x[:80], y[:80])
    )


def _both_ways(task, alone, packed, hps, start_fitness, states, generation):
    """Train `alone` one at a time and `packed` as one pack, in place, from the same states;
    returns both lists of results."""
    seeds = [(1, generation, f"m{i}") for i in range(len(hps))]
    one_at_a_time = [
        train(m, task, task.train, task.fitness, hp, 2, f, 1.0, s, optimizer_state=state)
        for m, hp, f, s, state in zip(alone, hps, start_fitness, seeds, states)
    ]
    pack = Pack.from_models(packed)
    results = train_pack(
        pack, task, task.train, task.fitness, hps, 2, start_fitness, 1.0, seeds, optimizer_states=states
    )
    for model, weights in zip(packed, pack.checkpoints()):
        load_into(model, *weights)
    return one_at_a_time, results


def test_single_and_packed_training_start_from_and_end_with_the_same_state():
    task = _task()
    lr = {"sgd": 0.02, "nesterov": 0.02, "adam": 0.01, "adamw": 0.01, "rmsprop": 0.001}
    hps = [HParams(f, lr[f], 0.9, 1e-3, 0.9, 0.99, 32) for f in FAMILIES]
    hps.append(HParams("sgd", 0.05, 0.0, 1e-3, 0.9, 0.99, 32))  # no momentum: no buffer to carry
    hps.append(hps[2].with_lr(1e3))  # diverges: backs off every epoch, and ends with the state it started from
    torch.manual_seed(0)
    packed_models = [task.model() for _ in hps]
    models = [copy.deepcopy(m) for m in packed_models]
    start_fitness = [fitness(m, task, task.fitness) for m in models]
    states = [State() for _ in hps]
    batches = math.ceil(200 / 32)
    for generation in range(2):
        alone, packed = _both_ways(task, models, packed_models, hps, start_fitness, states, generation)
        for a, p, hp, state in zip(alone, packed, hps, states):
            assert p.backoffs == a.backoffs and p.epoch_fitness == pytest.approx(a.epoch_fitness, rel=1e-8)
            assert a.optimizer_state.step == p.optimizer_state.step == state.step + batches * (2 - a.backoffs)
            assert set(a.optimizer_state.tensors) == set(p.optimizer_state.tensors)
            for name, tensor in a.optimizer_state.tensors.items():
                assert torch.allclose(p.optimizer_state.tensors[name], tensor, rtol=1e-7, atol=1e-10), (hp, name)
        assert [a.backoffs for a in alone] == [0] * 6 + [2]
        assert packed[0].optimizer_state.tensors["buf"].any() and not packed[5].optimizer_state.tensors["buf"].any()
        # the next generation starts from the stored state (a checkpoint, as a run stores it)
        states = [State.from_checkpoint(*p.optimizer_state.to_checkpoint(), "cpu") for p in packed]
        start_fitness = [p.fitness for p in packed]
    for model, other in zip(models, packed_models):
        for name, tensor in model.state_dict().items():
            assert torch.allclose(other.state_dict()[name], tensor, rtol=1e-7, atol=1e-9), name


def test_a_carried_state_changes_the_training_that_follows():
    task = _task()
    hps = [HParams(f, 0.01, 0.9, 0.0, 0.9, 0.99, 32) for f in FAMILIES]
    torch.manual_seed(0)
    models = [task.model() for _ in hps]

    def epoch(generation: int, states: list[State]):
        pack = Pack.from_models(models)  # the same weights each time
        seeds = [(1, generation, f"m{i}") for i in range(len(hps))]
        return train_pack(pack, task, task.train, task.fitness, hps, 1, [9.0] * 5, 1.0, seeds, optimizer_states=states)

    first = epoch(0, [State()] * 5)
    carried, fresh = epoch(1, [r.optimizer_state for r in first]), epoch(1, [State()] * 5)
    assert all(c.fitness != f.fitness for c, f in zip(carried, fresh))


# Runs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population_runs(tmp_path_factory):
    """The population mode (each member keeps its family), carried and reset."""
    store = str(tmp_path_factory.mktemp("carry"))
    carried = start(store, merge(IRIS, {"mode": "population"}), "carry")
    reset = start(store, merge(IRIS, {"mode": "population", "sgd": {"optimizer_state": "reset"}}), "reset")
    execute(carried)
    execute(reset)
    return carried, reset


def test_each_generation_starts_from_the_state_the_last_one_ended_with(population_runs):
    run, _ = population_runs
    carried, fresh = _check_starts(run)
    assert carried == 2 * run.spec.mu and fresh == 0
    generations = [_records(run, g) for g in range(run.spec.generations)]
    last = generations[-1]
    for member, record in last.items():  # the steps and moments of all three generations
        state = _state(run, record)
        assert state.step == sum(_steps_taken(run, records[member]) for records in generations)
        assert all(t.abs().sum() > 0 for t in state.tensors.values())
    assert len({r.hparams.optimizer for r in last.values()}) > 1


def test_a_reset_run_stores_no_state_and_trains_otherwise(population_runs):
    carried, reset = population_runs
    for generation in range(reset.spec.generations):
        assert all(r.optimizer_state is None for r in _records(reset, generation).values())
        assert not any(".optimizer." in k for k in reset.store.list(keys.gen(reset.id, generation)))
    a, b = history(carried.uri), history(reset.uri)
    assert [r["fitness"] for r in a if r["generation"] == 0] == [r["fitness"] for r in b if r["generation"] == 0]
    assert [r["fitness"] for r in a] != [r["fitness"] for r in b]  # generation 1 on: the state carried


def test_verify_checks_the_state_blobs(population_runs):
    run, _ = population_runs
    found = verify(run.store, run.id)
    assert found.healthy and found.orphans == 0
    key = _records(run, 1)["init-000"].optimizer_state.key
    intact = run.store.get(key)
    run.store.put(key, b"damaged")
    try:
        found = verify(run.store, run.id)
    finally:
        run.store.put(key, intact)  # the run is shared by the tests of this module
    assert not found.healthy and [f.key for f in found.problems] == [key]


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("esgd", {"sgd": {"hparams": "redraw"}}),  # families change, offspring start fresh
        ("esgd", {}),  # keeps: offspring start fresh
        ("no-evolution", {"sgd": {"hparams": "redraw"}}),  # families change
        ("pbt", {"pbt": {"quantile": 0.5}}),  # copies start fresh
        ("single", {}),
    ],
)
def test_every_mode_carries_a_members_state_while_it_keeps_its_family(tmp_path, mode, extra):
    run = start(str(tmp_path), merge(IRIS, {"mode": mode, **extra}), "run")
    execute(run)
    carried, fresh = _check_starts(run)
    assert carried > 0
    if mode != "single":
        assert fresh > 0


def test_packed_and_unpacked_runs_carry_alike(tmp_path):
    data = merge(IRIS, {"mode": "population"})
    one = start(str(tmp_path), merge(data, {"pack": {"size": 1}}), "one")
    packed = start(str(tmp_path), merge(data, {"pack": {"size": "auto"}}), "packed")
    assert packed.pack_size(4) == 4
    execute(one)
    execute(packed)
    for x, y in zip(history(one.uri), history(packed.uri)):
        assert x.keys() == y.keys()
        for key, value in x.items():
            assert y[key] == (pytest.approx(value, rel=1e-5) if isinstance(value, float) else value), key
    for member, record in _records(one, 2).items():
        a, b = _state(one, record), _state(packed, _records(packed, 2)[member])
        assert a.step == b.step
        for name, tensor in a.tensors.items():
            assert torch.allclose(b.tensors[name], tensor, rtol=1e-4, atol=1e-6), name


# Determinism and resume ----------------------------------------------------------------------------------


def test_same_spec_same_history_and_state(tmp_path):
    runs = [start(str(tmp_path), IRIS, name) for name in ("a", "b")]
    for run in runs:
        execute(run)
    assert history(runs[0].uri) == history(runs[1].uri)
    for member, record in _records(runs[0], 2).items():
        assert _records(runs[1], 2)[member].optimizer_state.sha256 == record.optimizer_state.sha256


def test_stopped_between_any_two_steps_and_resumed_gives_the_same_history(tmp_path):
    data = merge(IRIS, {"generations": 2})
    reference = start(str(tmp_path), data, "uninterrupted")
    execute(reference)
    expected = history(reference.uri)
    plan = all_steps(reference.spec, *local_engine("cpu").split(reference.spec))
    for stop in range(1, len(plan)):
        run = start(str(tmp_path), data, f"stop-{stop}")
        for step in plan[:stop]:
            steps.run(run, step)
        execute(Run.open(run.uri, "cpu"))
        assert history(run.uri) == expected, f"stopped after step {stop}: {plan[stop - 1]}"


def test_a_train_step_that_died_between_two_commits_completes_identically(tmp_path):
    data = merge(IRIS, {"generations": 2, "sgd": {"hparams": "keep", "batch_size": [16]}})  # one pack of 4
    reference = start(str(tmp_path), data, "whole")
    execute(reference)
    run = start(str(tmp_path), data, "died")
    for step in (Step("init"), Step("train", 0), Step("evolve", 0, 0), Step("evaluate", 0, 0), Step("select", 0, 0)):
        steps.run(run, step)
    dies_after_commits(run.store, 2)
    with pytest.raises(KeyboardInterrupt):
        steps.run(run, Step("train", 1, members=(0, 4)))
    execute(Run.open(run.uri, "cpu"))
    assert history(run.uri) == history(reference.uri)
    assert any(_state(run, r).step > _steps_taken(run, r) for r in _records(run, 1).values())  # states carried
    for member, record in _records(reference, 1).items():
        assert _records(run, 1)[member].optimizer_state.sha256 == record.optimizer_state.sha256


def test_replay_carries_the_state_as_the_run_did(tmp_path):
    """`esgd replay` of a carried run re-trains its winner's line with the states carried the same
    way (fine-tuning fresh), so it repeats the run's numbers exactly (one at a time: no packs)."""
    from esgd.analysis.replay import replay

    data = merge(IRIS, {"mode": "population", "generations": 3, "pack": {"size": 1}, "finetune": {"epochs": 1}})
    run = start(str(tmp_path), data, "replayed")
    execute(run)
    steps, _, _ = replay(run)
    assert [s["generation"] for s in steps] == [0, 1, 2, 3]
    for s in steps:
        assert (s["replay_fitness"], s["replay_backoffs"]) == (s["run_fitness"], s["run_backoffs"]), s
