"""A task's optional test set (Task.test): rows never trained or selected on, on which the winner
alone is scored when the run finishes. The bundled tasks keep their split when `test` is 0 (the
runs they made stay the runs they are), and with `test` > 0 the three sets are disjoint."""

import numpy as np
import pytest
import torch

import esgd
from esgd.worker.tasks import digits, synthetic, toy
from esgd.worker.tasks.common import split, split_indices
from esgd.worker.train import fitness

from helpers import tiny


def test_without_a_test_fraction_the_split_is_the_one_runs_always_had():
    order = np.random.default_rng(3).permutation(100)
    train, held, test = split_indices(100, 3)
    assert list(train) == list(order[:70]) and list(held) == list(order[70:]) and len(test) == 0


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_train_fitness_and_test_rows_are_disjoint_and_cover_every_row(fraction):
    train, held, test = split_indices(200, 1, test=fraction)
    assert len(test) == int(fraction * 200)
    assert sorted([*train, *held, *test]) == list(range(200))
    x = np.arange(200, dtype=np.float32)[:, None]
    (xt, _), (xf, _), (xs, _) = split(x, np.zeros(200, dtype=np.int64), "validation", 1, test=fraction)
    assert not set(xt[:, 0].tolist()) & set(xs[:, 0].tolist()) and not set(xf[:, 0].tolist()) & set(xs[:, 0].tolist())


@pytest.mark.parametrize(
    "make", [lambda **a: digits.task(**a), lambda **a: toy.task("wine", **a), lambda **a: synthetic.parity(**a)]
)
def test_bundled_tasks_take_a_test_fraction_and_keep_their_split_without_one(make):
    plain, with_test = make(), make(test=0.2)
    assert plain.test is None and with_test.test is not None
    sizes = [len(t[0]) for t in (with_test.train, with_test.fitness, with_test.test)]
    assert sum(sizes) == len(plain.train[0]) + len(plain.fitness[0])
    with pytest.raises(TypeError, match="test must be a fraction"):
        make(test=1.5)


def test_a_finished_run_scores_its_winner_on_the_test_set(tmp_path):
    spec = tiny(generations=1, task_args={"hidden": 8, "test": 0.2})
    run = esgd.run(spec, store=str(tmp_path), progress=lambda line: None)
    final = run.final()
    task = digits.task(hidden=8, test=0.2)
    model = run.best().eval()
    with torch.no_grad():
        assert final.test_fitness == pytest.approx(fitness(model, task, task.test), rel=1e-6)
        error = (model(task.test[0]).argmax(1) != task.test[1]).float().mean().item()
    assert final.test_metric == pytest.approx(error, abs=1e-6)
    assert final.test_fitness != final.best_fitness  # another set than the one it was chosen on


def test_a_run_without_a_test_set_says_none(tmp_path):
    run = esgd.run(tiny(generations=1), store=str(tmp_path), progress=lambda line: None)
    assert run.final().test_fitness is None and run.final().test_metric is None
