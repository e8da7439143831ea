"""Packing many individuals per device must not change the algorithm."""

import copy

import pytest
import torch

from esgd.core.hparams import HParams
from esgd.core.plan import pack_groups
from esgd.worker.packed import Pack, train_pack
from esgd.worker.task import Task
from esgd.worker.tasks.mlp import mlp
from esgd.worker.train import fitness, train
from esgd.worker.weights import load_into, to_checkpoint

from helpers import execute, history, start

FAMILIES = ["sgd", "nesterov", "adam", "adamw", "rmsprop"]


def _train_models(models, *args, **kwargs):
    """train_pack on models, which are updated in place through their checkpoints."""
    pack = Pack.from_models(models)
    results = train_pack(pack, *args, **kwargs)
    for model, weights in zip(models, pack.checkpoints()):
        load_into(model, *weights)
    return results


def test_pack_groups_share_a_batch_size_and_respect_the_size():
    assert pack_groups([32, 64, 32, 32, 64], 2) == [[0, 2], [3], [1, 4]]
    assert pack_groups([8] * 5, 64) == [[0, 1, 2, 3, 4]]
    assert pack_groups([8] * 3, 1) == [[0], [1], [2]]


def _task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return Task(
        model=lambda: mlp(6, 8, 2, 2, batchnorm=True, dtype=torch.float64), train=(x, y), fitness=(x[:80], y[:80])
    )


@pytest.mark.parametrize("patience", [0, 1])
def test_packed_training_matches_one_at_a_time_for_every_optimizer_and_backoff(patience):
    """Also with back-off patience: the rows that keep a worse epoch and later return to their best
    restore the same weights and optimizer state as one model alone does."""
    task = _task()
    hps = [
        HParams(
            optimizer=f,
            lr=0.01 if f.startswith("adam") else 0.05,
            momentum=0.0 if f == "sgd" else 0.9,
            weight_decay=1e-3,
            beta1=0.9,
            beta2=0.99,
            batch_size=32,
        )
        for f in FAMILIES
    ]
    hps.append(hps[0].with_lr(1e3))  # diverges: backs off every epoch
    torch.manual_seed(0)
    models = [task.model() for _ in hps]
    start_fitness = [fitness(m, task, task.fitness) for m in models]
    seeds = [(1, 0, f"m{i}") for i in range(len(hps))]
    alone = [copy.deepcopy(m) for m in models]
    expected = [
        train(m, task, task.train, task.fitness, hp, 4, f, 1.0, s, patience=patience)
        for m, hp, f, s in zip(alone, hps, start_fitness, seeds)
    ]
    packed = _train_models(models, task, task.train, task.fitness, hps, 4, start_fitness, 1.0, seeds, patience=patience)
    for e, p, a, m in zip(expected, packed, alone, models):
        assert p.backoffs == e.backoffs
        assert p.epoch_fitness == pytest.approx(e.epoch_fitness, rel=1e-8)
        for name, tensor in a.state_dict().items():
            assert torch.allclose(m.state_dict()[name].double(), tensor.double(), rtol=1e-7, atol=1e-9), name
    assert packed[-1].backoffs == (4 if patience == 0 else 2)  # diverging: epochs 2 and 4 (the last) back off


def test_packed_and_unpacked_runs_give_the_same_history(store_uri):
    data = {
        "seed": 3,
        "task": "esgd.worker.tasks.digits:task",
        "task_args": {"hidden": 8, "dtype": "float64"},
        "generations": 3,
        "population": {"mu": 6, "offspring": 4, "elite": 3},
        "sgd": {
            "epochs": 2,
            "batch_size": [64],
            "optimizers": {f: {"lr": [0.001, 0.05], "momentum": [0.5, 0.9]} for f in FAMILIES},
        },
    }
    one = start(store_uri, dict(data, pack={"size": 1}), "one-at-a-time")
    packed = start(store_uri, dict(data, pack={"size": "auto"}), "packed")
    assert packed.pack_size(6) == 6
    execute(one)
    execute(packed)
    a, b = history(one.uri), history(packed.uri)
    assert len(a) == len(b) == 3 * (6 + 4)
    assert {r["optimizer"] for r in a} >= set(FAMILIES)
    for x, y in zip(a, b):
        for key, value in x.items():
            if isinstance(value, float):
                assert y[key] == pytest.approx(value, rel=1e-9), key
            else:
                assert y[key] == value, key


class _Scaled(torch.nn.Module):
    """A model with a non-persistent buffer (not in its state_dict, so not in checkpoints)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(2.0, dtype=torch.float64), persistent=False)
        self.net = mlp(6, 8, 1, 2, dtype=torch.float64)

    def forward(self, x):
        return self.net(x * self.scale)


def test_models_with_non_persistent_buffers_pack():
    task = _task()
    task.model = _Scaled
    models = [_Scaled() for _ in range(3)]
    hps = [HParams("sgd", lr=0.1, momentum=0.0, weight_decay=0.0, beta1=0.9, beta2=0.999, batch_size=50)] * 3
    results = _train_models(
        models, task, task.train, task.fitness, hps, 1, [9.0] * 3, 1.0, [(0, 0, f"m{i}") for i in range(3)]
    )
    assert all(r.fitness < 9.0 for r in results) and "scale" not in models[0].state_dict()


class _Tied(torch.nn.Module):
    """Input and output layers sharing one weight, as in language models with tied embeddings."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4, bias=False, dtype=torch.float64)
        self.b = torch.nn.Linear(4, 4, bias=False, dtype=torch.float64)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))[:, :2]


def test_tied_weights_pack_and_mutate():
    from esgd.store import checkpoint

    from test_evolve import recombine

    task = _task()
    task.model = _Tied
    g = torch.Generator().manual_seed(0)
    task.train = (torch.randn(64, 4, generator=g, dtype=torch.float64), task.train[1][:64])
    torch.manual_seed(0)
    models = [_Tied() for _ in range(2)]
    hps = [HParams("sgd", lr=0.01, momentum=0.0, weight_decay=0.0, beta1=0.9, beta2=0.999, batch_size=32)] * 2
    alone = [copy.deepcopy(m) for m in models]
    for model, hp, seed in zip(alone, hps, ("a", "b")):
        train(model, task, task.train, task.train, hp, 1, 9.0, 1.0, (0, 0, seed))
    _train_models(models, task, task.train, task.train, hps, 1, [9.0] * 2, 1.0, [(0, 0, "a"), (0, 0, "b")])
    assert models[0].b.weight is models[0].a.weight  # still tied after loading the pack's checkpoints
    for packed, single in zip(models, alone):  # and trained exactly as one at a time
        assert torch.allclose(packed.a.weight, single.a.weight, rtol=1e-9, atol=1e-12)
    assert all(torch.isfinite(m.a.weight).all() for m in models)
    parents = [checkpoint.encode(*to_checkpoint(m)) for m in models]
    child = _Tied()
    load_into(child, *checkpoint.decode(recombine(parents, 0.5, (0, 0, "c"))))
    mean = (models[0].a.weight + models[1].a.weight) / 2
    assert (child.a.weight - mean).abs().max() > 0.1  # the mutation reached the shared weight


@pytest.mark.parametrize("model", [lambda: mlp(6, 8, 2, 2, batchnorm=True, dtype=torch.float64), _Scaled, _Tied])
def test_a_pack_reads_and_writes_checkpoints_exactly_as_single_models(model):
    from esgd.store import checkpoint

    torch.manual_seed(1)
    models = [model() for _ in range(3)]
    for m in models:  # integer buffers that differ per individual
        for name, buffer in m.named_buffers():
            if not buffer.is_floating_point():
                buffer.fill_(len(name) + id(m) % 7)
    singles = [checkpoint.encode(*to_checkpoint(m)) for m in models]
    assert [checkpoint.encode(*w) for w in Pack.from_models(models).checkpoints()] == singles
    pack = Pack.from_checkpoints(model(), [checkpoint.decode(data) for data in singles])
    assert [checkpoint.encode(*w) for w in pack.checkpoints()] == singles


def test_a_pack_of_tied_weights_takes_the_values_load_state_dict_takes():
    layout, vector = to_checkpoint(_Tied())
    vector = vector.copy()
    b = next(e for e in layout.entries if e.name == "b.weight")
    vector[b.offset : b.offset + b.numel] += 1.0  # the two names of the weight disagree, as after a mutation
    single = _Tied()
    load_into(single, layout, vector)
    pack = Pack.from_checkpoints(_Tied(), [(layout, vector)] * 2)
    assert torch.equal(pack.params()["a.weight"][1], single.a.weight.detach())


def test_a_checkpoint_of_another_architecture_does_not_fit_a_pack():
    weights = to_checkpoint(mlp(6, 8, 2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not fit the model: missing .*wrong shape"):
        Pack.from_checkpoints(mlp(6, 9, 3, 2, dtype=torch.float64), [weights, weights])


def test_a_compiled_pack_trains_as_the_uncompiled_one():
    task = _task()
    hps = [
        HParams(
            optimizer=f,
            lr=0.01 if f == "adam" else 0.05,
            momentum=0.9,
            weight_decay=1e-3,
            beta1=0.9,
            beta2=0.99,
            batch_size=64,
        )
        for f in ("adam", "adam", "nesterov", "nesterov")
    ]
    torch.manual_seed(0)
    models = [task.model() for _ in hps]
    start_fitness = [fitness(m, task, task.fitness) for m in models]
    seeds = [(2, 0, f"m{i}") for i in range(len(hps))]
    results, packs = [], []
    for compiled in (False, True):
        pack = Pack.from_checkpoints(task.model(), [to_checkpoint(m) for m in models])
        results.append(
            train_pack(pack, task, task.train, task.fitness, hps, 2, start_fitness, 1.0, seeds, compiled=compiled)
        )
        packs.append(pack)
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] >= 1  # the gradient was compiled, not run eagerly
    for eager, compiled in zip(*results):
        assert compiled.backoffs == eager.backoffs
        assert compiled.epoch_fitness == pytest.approx(eager.epoch_fitness, rel=1e-9)
    assert torch.allclose(packs[1].flat, packs[0].flat, rtol=1e-9, atol=1e-12)
    for name, buffer in packs[0].buffers.items():  # BatchNorm statistics too
        assert torch.allclose(packs[1].buffers[name].double(), buffer.double(), rtol=1e-9, atol=1e-12), name
