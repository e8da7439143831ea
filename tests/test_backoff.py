"""The SGD step for one individual: strict and relaxed back-off, the single mode's lr halving."""

import torch

from esgd.core.hparams import HParams
from esgd.worker.task import Task
from esgd.worker.tasks.mlp import mlp
from esgd.worker.train import fitness, train


def _task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(model=lambda: mlp(6, 8, 1, 2), train=(x, y), fitness=(x[:64], y[:64]))


def _hp(lr):
    return HParams(optimizer="sgd", lr=lr, momentum=0.0, weight_decay=0.0, beta1=0.9, beta2=0.999, batch_size=32)


def _start(task):
    torch.manual_seed(1)
    model = task.model()
    return model, fitness(model, task, task.fitness)


def test_strict_backoff_returns_to_the_previous_weights_when_fitness_gets_worse():
    task = _task()
    model, f0 = _start(task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, task, task.train, task.fitness, _hp(1e4), 3, f0, 1.0, (0, 0, "m"))  # lr that diverges
    assert result.backoffs == 3 and result.fitness == f0 and result.epoch_fitness == [f0] * 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fitness(model, task, task.fitness) == f0


def test_strict_backoff_never_gets_worse_and_improves_with_a_good_lr():
    task = _task()
    model, f0 = _start(task)
    result = train(model, task, task.train, task.fitness, _hp(0.5), 4, f0, 1.0, (0, 0, "m"))
    assert result.fitness < f0
    assert all(b <= a for a, b in zip([f0] + result.epoch_fitness, result.epoch_fitness))


def test_relaxed_backoff_with_probability_zero_keeps_the_worse_weights():
    task = _task()
    model, f0 = _start(task)
    result = train(model, task, task.train, task.fitness, _hp(1e4), 2, f0, 0.0, (0, 0, "m"))
    assert result.backoffs == 0 and result.fitness > f0


def test_relaxed_backoff_backs_off_about_p_of_the_time():
    task = _task()
    backoffs = 0
    for member in range(40):
        model, f0 = _start(task)
        backoffs += train(model, task, task.train, task.fitness, _hp(1e4), 1, f0, 0.5, (0, 0, f"m{member}")).backoffs
    assert 10 <= backoffs <= 30


def test_single_mode_halves_the_lr_on_each_backoff():
    task = _task()
    model, f0 = _start(task)
    result = train(model, task, task.train, task.fitness, _hp(1e4), 3, f0, 1.0, (0, 0, "m"), halve_lr=True)
    assert result.backoffs >= 1
    assert result.hparams.lr == 1e4 / 2**result.backoffs


def test_training_is_deterministic():
    task = _task()
    results = []
    for _ in range(2):
        model, f0 = _start(task)
        results.append(train(model, task, task.train, task.fitness, _hp(0.3), 2, f0, 1.0, (5, 1, "m")).epoch_fitness)
    assert results[0] == results[1]
