"""Roulette wheel and m-elitist selection."""

import numpy as np
import pytest

from esgd.core.selection import elitist_select, pick_parents, rank, roulette_weights


def test_roulette_probability_grows_with_fitness_quality():
    p = roulette_weights(np.array([0.5, 0.1, 0.9, 0.3]), floor=0.05)
    assert p.sum() == pytest.approx(1.0)
    assert list(np.argsort(-p)) == [1, 3, 0, 2]  # lower loss, larger share
    # weight = (L_max - L_i) + floor * spread
    spread = 0.8
    expected = np.array([0.4, 0.8, 0.0, 0.6]) + 0.05 * spread
    assert p == pytest.approx(expected / expected.sum())


def test_roulette_worst_keeps_the_floor_and_equal_losses_are_uniform():
    assert roulette_weights(np.array([1.0, 2.0]), floor=0.0)[1] == 0.0
    assert roulette_weights(np.array([1.0, 2.0]), floor=0.1)[1] > 0.0
    assert roulette_weights(np.array([0.3, 0.3, 0.3])) == pytest.approx([1 / 3] * 3)


def test_roulette_ignores_non_finite_losses():
    p = roulette_weights(np.array([0.2, np.inf, np.nan, 0.4]))
    assert p[1] == 0 and p[2] == 0 and p[0] > p[3] > 0


def test_pick_parents_are_distinct_and_follow_the_wheel():
    p = roulette_weights(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), floor=0.1)
    rng = np.random.default_rng(0)
    counts = np.zeros(5)
    for _ in range(20000):
        picks = pick_parents(rng, p, 1)
        counts[picks[0]] += 1
    assert counts / counts.sum() == pytest.approx(p, abs=0.01)
    for _ in range(200):
        picks = pick_parents(rng, p, 3)
        assert len(set(picks)) == 3


def test_elitist_keeps_best_m_and_draws_the_rest_without_replacement():
    losses = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4])
    seen_others = set()
    for seed in range(50):
        elite, others = elitist_select(np.random.default_rng(seed), losses, mu=5, m=3)
        assert elite == [1, 5, 3]
        assert len(others) == 2 and len(set(others)) == 2
        assert not set(others) & set(elite)
        seen_others.update(others)
    assert seen_others == {0, 2, 4, 6, 7}  # every non-elite can survive by the random draw


def test_elitist_counts_and_bounds():
    elite, others = elitist_select(np.random.default_rng(0), np.arange(10.0), mu=4, m=4)
    assert elite == [0, 1, 2, 3] and others == []
    with pytest.raises(ValueError):
        elitist_select(np.random.default_rng(0), np.arange(3.0), mu=4, m=2)


def test_rank_is_stable_and_puts_nan_last():
    assert list(rank(np.array([0.2, np.nan, 0.1, 0.2]))) == [2, 0, 3, 1]


def test_json_output_never_holds_infinity():
    import json

    from esgd.core.metrics import finite, summarize

    rows = [
        {
            "generation": 0,
            "member": m,
            "role": "parent",
            "fitness": f,
            "selected": True,
            "elite": e,
            "optimizer": "sgd",
            "backoffs": 0,
        }
        for m, f, e in (("a", 0.5, True), ("b", float("inf"), False))
    ]
    line = json.dumps(finite(summarize(rows, 1)[0]), allow_nan=False)
    assert json.loads(line)["mean"] is None and json.loads(line)["best"] == 0.5
