"""gptlab.evaluate.uncertainty: bootstrap intervals, paired comparison, exact sign test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptlab.evaluate.uncertainty import bootstrap_ci, paired_bootstrap, sign_test


def test_all_ones_gives_a_degenerate_interval():
    ci = bootstrap_ci([1.0] * 30)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (1.0, 1.0, 1.0, 30)


def test_seeded_and_reproducible_and_contains_the_mean():
    scores = [0, 1, 1, 0, 1, 1, 1, 0, 1, 0]
    a, b = bootstrap_ci(scores, seed=3), bootstrap_ci(scores, seed=3)
    assert a == b
    assert a.low < 0.6 < a.high and a.estimate == pytest.approx(0.6)
    varied = np.random.default_rng(0).random(25)  # continuous, so another seed moves the ends
    assert bootstrap_ci(varied, seed=4) != bootstrap_ci(varied, seed=3)


def test_interval_matches_the_normal_approximation_for_a_large_sample():
    rng = np.random.default_rng(0)
    scores = rng.random(2000) < 0.3
    ci = bootstrap_ci(scores.astype(float), n_resamples=4000)
    p = scores.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 2000)
    assert ci.low == pytest.approx(p - half, abs=0.004)
    assert ci.high == pytest.approx(p + half, abs=0.004)


def test_coverage_of_the_true_mean_is_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    sims = 300
    for s in range(sims):
        data = rng.exponential(1.0, size=80)  # skewed, true mean 1
        ci = bootstrap_ci(data, n_resamples=1000, seed=s)
        hits += ci.low <= 1.0 <= ci.high
    assert 0.90 <= hits / sims <= 0.99


def test_weighted_mean_is_the_ratio_of_totals():
    nats = np.array([10.0, 30.0, 5.0])
    size = np.array([10.0, 20.0, 10.0])
    ci = bootstrap_ci(nats / size, weights=size)
    assert ci.estimate == pytest.approx(nats.sum() / size.sum())


def test_paired_bootstrap_sees_a_difference_that_unpaired_intervals_hide():
    rng = np.random.default_rng(2)
    difficulty = rng.random(100)
    a = difficulty + 0.05 + rng.normal(0, 0.01, 100)
    b = difficulty
    d = paired_bootstrap(a, b)
    assert d.low > 0.0 and d.estimate == pytest.approx(0.05, abs=0.005)
    ia, ib = bootstrap_ci(a), bootstrap_ci(b)
    assert ia.low < ib.high  # separately, the intervals overlap


def test_sign_test_exact_values():
    # 8 discordant pairs all won by a: p = 2 / 2**8
    t = sign_test([1] * 8 + [0, 1], [0] * 8 + [0, 1])
    assert (t.wins_a, t.wins_b, t.ties) == (8, 0, 2)
    assert t.p_value == pytest.approx(2 / 256)
    # 3 vs 1: p = 2 * (C(4,0) + C(4,1)) / 16 = 10 / 16
    assert sign_test([1, 1, 1, 0], [0, 0, 0, 1]).p_value == pytest.approx(10 / 16)
    assert sign_test([1, 0], [1, 0]).p_value == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: bootstrap_ci([]),
        lambda: bootstrap_ci([1.0, float("nan")]),
        lambda: bootstrap_ci([1.0], confidence=1.5),
        lambda: bootstrap_ci([1.0, 2.0], weights=[1.0]),
        lambda: paired_bootstrap([1, 0], [1]),
        lambda: bootstrap_ci("101"),
    ],
)
def test_bad_input(call):
    with pytest.raises((TypeError, ValueError)):
        call()
