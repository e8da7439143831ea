"""The SGD step for one individual: strict, relaxed and patient back-off, the single mode's lr halving."""

import torch

from esgd.core.hparams import HParams
from esgd.worker.optimizers import State
from esgd.worker.task import Task
from esgd.worker.tasks.mlp import mlp
from esgd.worker.train import TrainResult, fitness, train


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


def _walk(values, patience, p_backoff=1.0, draws=None):
    """TrainResult.end_epoch over a given sequence of epoch fitness values, from fitness 1.0."""
    result = TrainResult(1.0, _hp(0.1))
    draws = draws or [0.0] * len(values)
    actions = [
        result.end_epoch(v, d, p_backoff, False, patience, last=i == len(values) - 1)
        for i, (v, d) in enumerate(zip(values, draws))
    ]
    return actions, result


def test_patience_keeps_worse_epochs_until_that_many_in_a_row_then_returns_to_the_best():
    """The anchor is the best of the step: worse epochs are kept (not the anchor) up to `patience`
    in a row; the next returns to the best, and a better epoch resets the count."""
    actions, result = _walk([0.9, 0.95, 0.97, 0.99, 0.8, 0.85, 0.7], patience=2)
    assert actions == ["anchor", "keep", "keep", "back", "anchor", "keep", "anchor"]
    assert result.epoch_fitness == [0.9, 0.95, 0.97, 0.9, 0.8, 0.85, 0.7]
    assert result.backoffs == 1 and result.fitness == 0.7


def test_patience_ends_the_step_on_its_best_weights():
    """The last epoch backs off when it is worse than the best, whatever the count: the step never
    ends worse than it started (Theorem 1 holds with any patience)."""
    actions, result = _walk([0.9, 0.95], patience=5)
    assert actions == ["anchor", "back"] and result.fitness == 0.9
    actions, result = _walk([1.2, 1.1, 1.05], patience=5)
    assert actions == ["keep", "keep", "back"] and result.fitness == 1.0
    actions, result = _walk([1.2, 1.1, 1.05], patience=5, p_backoff=0.5, draws=[0.1, 0.1, 0.7])
    assert actions == ["keep", "keep", "keep"] and result.fitness == 1.05  # relaxed: the coin says keep


def test_patience_zero_is_the_papers_back_off():
    """patience 0: every worse epoch is compared with the previous one and backs off (strict), and
    every kept one is the anchor, also a worse one that the relaxed coin kept."""
    actions, _ = _walk([0.9, 0.95, 0.8], patience=0)
    assert actions == ["anchor", "back", "anchor"]
    actions, result = _walk([0.9, 0.95, 0.93], patience=0, p_backoff=0.5, draws=[0.0, 0.9, 0.1])
    assert actions == ["anchor", "anchor", "anchor"] and result.fitness == 0.93  # 0.93 < 0.95, the anchor


def test_patient_training_returns_to_the_best_weights_and_optimizer_state():
    """train() with patience: a diverging lr keeps the worse epochs, then the step's end returns the
    model to its start exactly; with a good lr the step ends on the best epoch's fitness."""
    task = _task()
    model, f0 = _start(task)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(
        model, task, task.train, task.fitness, _hp(1e4), 3, f0, 1.0, (0, 0, "m"), optimizer_state=State(), patience=5
    )
    assert result.backoffs == 1 and result.fitness == f0 and result.epoch_fitness[-1] == f0
    assert result.optimizer_state.step == 0  # the optimizer state returned to the start's too
    assert result.epoch_fitness[0] > f0  # kept, not undone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model, f0 = _start(task)
    momentum = HParams(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.0, beta1=0.9, beta2=0.999, batch_size=32)
    result = train(model, task, task.train, task.fitness, momentum, 6, f0, 1.0, (0, 0, "m"), patience=2)
    assert result.fitness == fitness(model, task, task.fitness) <= min([f0, *result.epoch_fitness])
