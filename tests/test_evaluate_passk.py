"""gptlab.evaluate.passk: the unbiased estimator against its closed form and a simulation."""

from __future__ import annotations

import math
import random

import pytest

from gptlab.evaluate.passk import mean_pass_at_k, pass_at_k


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_product_form_equals_the_closed_form_for_many_cases():
    for n in range(1, 41):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k: every draw of 3 has a passing sample
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)


def test_large_n_stays_finite_where_binomials_overflow_floats():
    value = pass_at_k(2000, 3, 100)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(closed_form(2000, 3, 100), rel=1e-9)


def test_monte_carlo_draws_of_k_without_replacement_agree():
    rng = random.Random(0)
    n, c, k = 20, 4, 5
    samples = [True] * c + [False] * (n - c)
    trials = 20_000
    hits = sum(any(rng.sample(samples, k)) for _ in range(trials))
    assert hits / trials == pytest.approx(pass_at_k(n, c, k), abs=0.015)


def test_mean_and_bad_input():
    assert mean_pass_at_k([(4, 0), (4, 4)], 1) == 0.5
    for args in [(0, 0, 1), (3, 4, 1), (3, 1, 4), (3, 1, 0), (3.0, 1, 1)]:
        with pytest.raises((TypeError, ValueError)):
            pass_at_k(*args)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)
