"""How sure is a score? Bootstrap confidence intervals and paired comparisons of two models.

A benchmark of 60 questions is a sample: another 60 questions like them would give another
accuracy. The percentile bootstrap estimates that spread by resampling the items with
replacement many times and reading off the middle 95% of the resampled means. Two models scored
on the *same* items are compared pair by pair (the paired bootstrap of the difference, and an
exact sign test), which is far more sensitive than comparing two separate intervals, because
the items' own difficulty cancels out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gptlab.evaluate._checks import check_int

__all__ = ["Interval", "SignTest", "bootstrap_ci", "paired_bootstrap", "sign_test"]

_CHUNK_ELEMENTS = 1 << 21  # resample indices drawn per chunk: bounds memory for big item sets


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap interval over ``n`` items."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float

    def __str__(self) -> str:
        pct = f"{self.confidence:.0%}"
        return f"{self.estimate:.4f} ({pct} CI {self.low:.4f} to {self.high:.4f}, n={self.n})"


@dataclass(frozen=True)
class SignTest:
    """Items where a scored higher, where b did, ties, and the exact two-sided p-value."""

    wins_a: int
    wins_b: int
    ties: int
    p_value: float


def _as_scores(values: Any, what: str) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of numbers, got a string")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a sequence of numbers (e.g. 0/1 per item)") from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} holds NaN or infinite values; score every item with a number")
    return array


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise TypeError(f"confidence must be a float such as 0.95, got {confidence!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(
            f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    return float(confidence)


def _resampled_means(
    values: np.ndarray, weights: np.ndarray | None, n_resamples: int, seed: int
) -> np.ndarray:
    """The (weighted) mean of ``n_resamples`` bootstrap resamples of ``values``."""
    rng = np.random.default_rng(seed)
    n = values.size
    per_chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        if weights is None:
            means[start:stop] = values[idx].mean(axis=1)
        else:
            w = weights[idx]
            means[start:stop] = (values[idx] * w).sum(axis=1) / w.sum(axis=1)
    return means


def _interval(estimate: float, means: np.ndarray, n: int, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high), n, confidence)


def bootstrap_ci(
    scores: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap interval for the mean score per item (seeded: reproducible).

    With ``weights`` the statistic is the weighted mean ``sum(w * x) / sum(w)``: e.g. bits per
    byte of chunks weighted by their bytes, which is the ratio total bits / total bytes.
    """
    values = _as_scores(scores, "scores")
    confidence = _check_confidence(confidence)
    check_int(n_resamples, "n_resamples", 100)
    check_int(seed, "seed", 0)
    w = None
    if weights is not None:
        w = _as_scores(weights, "weights")
        if w.shape != values.shape:
            raise ValueError(f"weights has {w.size} entries but scores has {values.size}")
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
    estimate = values.mean() if w is None else float((values * w).sum() / w.sum())
    means = _resampled_means(values, w, n_resamples, seed)
    if w is not None:  # a resample of only zero-weight items has no mean: leave it out
        means = means[np.isfinite(means)]
    return _interval(estimate, means, values.size, confidence)


def _paired(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_scores(a, "a"), _as_scores(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"a has {x.size} scores and b has {y.size}; a paired comparison needs both models "
            "scored on the same items, in the same order"
        )
    return x, y


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Interval for ``mean(a) - mean(b)``, resampling items (both models' scores together)."""
    x, y = _paired(a, b)
    return bootstrap_ci(x - y, confidence=confidence, n_resamples=n_resamples, seed=seed)


def sign_test(a: Sequence[float], b: Sequence[float]) -> SignTest:
    """Exact two-sided sign test on the items where the two models differ.

    For 0/1 scores this is McNemar's exact test: under "no difference" each discordant item is
    equally likely to favour either model, so the wins follow Binomial(discordant, 1/2). Exact
    integer arithmetic, so it holds for any number of items.
    """
    x, y = _paired(a, b)
    wins_a, wins_b = int(np.sum(x > y)), int(np.sum(x < y))
    ties = x.size - wins_a - wins_b
    m = wins_a + wins_b
    if m == 0:
        return SignTest(0, 0, ties, 1.0)
    tail = sum(math.comb(m, i) for i in range(min(wins_a, wins_b) + 1))
    p_value = min(1.0, 2 * tail / 2**m)
    return SignTest(wins_a, wins_b, ties, p_value)
