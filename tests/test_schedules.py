"""Annealing schedules and hyper-parameter draws."""

import math

import pytest

from esgd.core import hparams
from esgd.core.schedules import value_at
from esgd.core.spec import Schedule, parse_spec


@pytest.mark.parametrize("kind", ["linear", "exponential", "cosine"])
def test_schedule_goes_from_start_to_end_monotonically(kind):
    s = Schedule(start=1.0, end=0.01, kind=kind)
    values = [value_at(s, k, 10) for k in range(10)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_exponential_is_geometric_and_constant_is_constant():
    s = Schedule(start=0.1, end=0.001, kind="exponential")
    assert value_at(s, 1, 3) == pytest.approx(0.01)
    assert value_at(Schedule(start=0.3), 5, 10) == 0.3
    assert value_at(Schedule(start=0.3, end=0.1, kind="linear"), 0, 1) == 0.3


def test_lr_is_drawn_inside_the_annealed_range():
    spec = parse_spec(
        {"generations": 5, "sgd": {"optimizers": {"sgd": {"lr": [0.01, 0.1]}}, "lr_anneal": {"start": 1, "end": 0.1}}}
    )
    for generation in range(5):
        factor = value_at(spec.sgd.lr_anneal, generation, 5)
        for member in ("a", "b", "c", "d"):
            lr = hparams.draw(spec, generation, member).lr
            assert 0.01 * factor <= lr <= 0.1 * factor + 1e-12
    assert value_at(spec.sgd.lr_anneal, 4, 5) == pytest.approx(0.1)


def test_draws_are_deterministic_and_differ_by_member_and_generation():
    spec = parse_spec({})
    assert hparams.draw(spec, 3, "x") == hparams.draw(spec, 3, "x")
    assert hparams.draw(spec, 3, "x") != hparams.draw(spec, 3, "y")
    assert hparams.draw(spec, 3, "x") != hparams.draw(spec, 4, "x")


def test_modes_choose_hyper_parameters_as_the_paper_says():
    population = parse_spec({"mode": "population"})
    assert hparams.for_generation(population, 5, "m", None) == hparams.for_generation(population, 0, "m", None)
    esgd = parse_spec({})
    assert hparams.for_generation(esgd, 5, "m", None) != hparams.for_generation(esgd, 0, "m", None)
    single = parse_spec({"mode": "single", "single": {"optimizer": "sgd", "lr": 0.2}})
    first = hparams.for_generation(single, 0, "m", None)
    assert first.optimizer == "sgd" and first.lr == 0.2
    assert hparams.for_generation(single, 1, "m", first.with_lr(0.1)).lr == 0.1


def test_kept_hyper_parameters_stay_with_a_member_and_only_offspring_draw():
    keep = parse_spec({})  # the default
    trained = hparams.for_generation(keep, 0, "m", None)
    assert hparams.for_generation(keep, 7, "m", trained) == trained  # a member that trained keeps them
    assert hparams.for_generation(keep, 7, "child", None) == hparams.draw(keep, 7, "child")  # an offspring draws
    redraw = parse_spec({"sgd": {"hparams": "redraw"}})
    assert hparams.for_generation(redraw, 7, "m", trained) == hparams.draw(redraw, 7, "m") != trained


def test_an_offspring_inherits_only_with_inherit():
    parent = hparams.draw(parse_spec({}), 2, "parent")
    inherit = parse_spec({"sgd": {"hparams": "inherit"}})
    assert hparams.for_generation(inherit, 3, "child", None, parent) == parent
    assert hparams.for_generation(inherit, 3, "child", None, None) == hparams.draw(inherit, 3, "child")
    assert hparams.for_generation(inherit, 3, "m", hparams.draw(inherit, 0, "m"), parent) == hparams.draw(
        inherit, 0, "m"
    )
    keep = parse_spec({})
    assert hparams.for_generation(keep, 3, "child", None, parent) == hparams.draw(keep, 3, "child")


def test_every_optimizer_family_gets_drawn():
    spec = parse_spec({})
    seen = {hparams.draw(spec, 0, f"m{i}").optimizer for i in range(60)}
    assert seen == {"sgd", "nesterov", "adam"}
    assert all(math.isfinite(hparams.draw(spec, 0, f"m{i}").lr) for i in range(10))
