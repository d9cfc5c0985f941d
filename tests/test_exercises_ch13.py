"""Each chapter-13 checker accepts a right answer and rejects the usual wrong ones, naming them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptlab.evaluate import bootstrap_ci, loss_to_bits_per_byte, pass_at_k
from gptlab.exercises import NotSolved, ch13, check, registered


def _hint(checker, answer) -> str | None:
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_13_exercises_are_registered():
    assert [k for k in registered() if k.startswith("13.")] == ["13.1", "13.2", "13.3", "13.4"]


def test_stubs_and_non_callables(capsys):
    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("13.1", "13.2", "13.3", "13.4"):
        assert not check(exercise_id, stub)
        assert "NotImplementedError" in capsys.readouterr().out
        assert not check(exercise_id, 42)
        assert "pass your function itself" in capsys.readouterr().out


def test_pass_at_k():
    assert _hint(ch13.check_pass_at_k, pass_at_k) is None

    def with_replacement(n, c, k):
        return 1 - (1 - c / n) ** k

    def factorials(n, c, k):
        if n - c < k:
            return 1.0
        f = math.factorial
        return 1 - (f(n - c) / (f(k) * f(n - c - k))) / (f(n) / (f(k) * f(n - k)))

    def no_edge(n, c, k):
        return 0.0 if n - c < k else pass_at_k(n, c, k)

    assert "with replacement" in _hint(ch13.check_pass_at_k, with_replacement)
    assert "pass@1" in _hint(ch13.check_pass_at_k, lambda n, c, k: c / n)
    assert "fewer than k failures" in _hint(ch13.check_pass_at_k, no_edge)
    assert "all k fail" in _hint(ch13.check_pass_at_k, lambda n, c, k: 1 - pass_at_k(n, c, k))
    assert "overflow" in _hint(ch13.check_pass_at_k, factorials)


def test_bits_per_byte():
    def by_hand(loss, n_tokens, n_bytes):
        return loss * n_tokens / math.log(2) / n_bytes

    assert _hint(ch13.check_bits_per_byte_from_loss, loss_to_bits_per_byte) is None
    assert _hint(ch13.check_bits_per_byte_from_loss, by_hand) is None
    assert "nats per byte" in _hint(ch13.check_bits_per_byte_from_loss, lambda x, t, b: x * t / b)
    assert "per *token*" in _hint(
        ch13.check_bits_per_byte_from_loss, lambda x, t, b: x / math.log(2)
    )
    assert "swapped" in _hint(
        ch13.check_bits_per_byte_from_loss, lambda x, t, b: x * b / (math.log(2) * t)
    )
    assert "ln 10" in _hint(
        ch13.check_bits_per_byte_from_loss, lambda x, t, b: x * t / (math.log(10) * b)
    )


def test_percentile_interval():
    def right(scores, n_resamples, seed):
        ci = bootstrap_ci(scores, n_resamples=n_resamples, seed=seed)
        return ci.low, ci.high

    def by_hand(scores, n_resamples, seed):
        rng = np.random.default_rng(seed)
        x = np.asarray(scores)
        means = x[rng.integers(0, len(x), (n_resamples, len(x)))].mean(axis=1)
        return tuple(np.quantile(means, [0.025, 0.975]))

    def permutation(scores, n_resamples, seed):
        rng = np.random.default_rng(seed)
        means = [np.mean(rng.permutation(scores)) for _ in range(n_resamples)]
        return tuple(np.quantile(means, [0.025, 0.975]))

    def sd_of_scores(scores, n_resamples, seed):
        m, s = np.mean(scores), np.std(scores)
        return m - 1.96 * s, m + 1.96 * s

    def one_se(scores, n_resamples, seed):
        m, s = np.mean(scores), np.std(scores) / math.sqrt(len(scores))
        return m - s, m + s

    assert _hint(ch13.check_percentile_interval, right) is None
    assert _hint(ch13.check_percentile_interval, by_hand) is None
    assert "with* replacement" in _hint(ch13.check_percentile_interval, permutation)
    assert "standard deviations" in _hint(ch13.check_percentile_interval, sd_of_scores)
    assert "68%" in _hint(ch13.check_percentile_interval, one_se)
    assert "pair" in _hint(ch13.check_percentile_interval, lambda s, n, seed: 0.5)


def test_items_needed():
    assert _hint(ch13.check_items_needed, ch13.items_needed) is None

    def only_p1(p1, p2):
        return math.ceil(1.96**2 * p1 * (1 - p1) / (p1 - p2) ** 2)

    def no_z(p1, p2):
        return math.ceil((p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)

    def floor(p1, p2):
        return math.floor(1.96**2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)

    assert "both accuracies" in _hint(ch13.check_items_needed, only_p1)
    assert "1.96^2" in _hint(ch13.check_items_needed, no_z)
    assert "round *up*" in _hint(ch13.check_items_needed, floor)
    assert "whole number" in _hint(ch13.check_items_needed, lambda p1, p2: 12.5)
    with pytest.raises(ValueError, match="equal"):
        ch13.items_needed(0.5, 0.5)
