"""Checkers for the exercises of chapter 13, "Evaluation".

Each checker compares the reader's answer with ``gptlab.evaluate`` (``pass_at_k``,
``loss_to_bits_per_byte``, ``bootstrap_ci``) or with the formula the chapter derives, and
recognises the usual mistakes so that the hint names the one the reader made.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gptlab.evaluate.likelihood import loss_to_bits_per_byte
from gptlab.evaluate.passk import pass_at_k as _pass_at_k
from gptlab.evaluate.uncertainty import bootstrap_ci
from gptlab.exercises import as_number, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_bits_per_byte_from_loss",
    "check_items_needed",
    "check_pass_at_k",
    "check_percentile_interval",
    "items_needed",
]

LN2 = math.log(2.0)


# --- reference answers -------------------------------------------------------------------------


def items_needed(p1: float, p2: float, z: float = 1.96) -> int:
    """Items per model for the difference of two independent accuracies ``p1`` and ``p2`` to be
    ``z`` standard errors from 0: ``n = z^2 (p1(1-p1) + p2(1-p2)) / (p1 - p2)^2``, rounded up."""
    if p1 == p2:
        raise ValueError("p1 == p2: no number of items separates two equal accuracies")
    return math.ceil(z**2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)


# --- 13.1 pass@k ------------------------------------------------------------------------------


@exercise("13.1", "the unbiased pass@k estimator, without overflow")
def check_pass_at_k(answer: Any) -> str | None:
    """``pass_at_k(n, c, k)`` must equal ``1 - C(n-c, k) / C(n, k)`` for small and huge n."""
    fn = _callable(answer, "pass_at_k", "13.1")
    cases = (
        (10, 3, 1),
        (10, 3, 5),
        (5, 0, 2),
        (5, 4, 2),
        (5, 5, 5),
        (200, 37, 10),
        (5000, 15, 400),
    )
    for n, c, k in cases:
        want = _pass_at_k(n, c, k)
        try:
            got = as_number(fn(n, c, k), "pass_at_k")
        except OverflowError:
            return (
                f"for n={n}, c={c}, k={k} your code overflowed: float factorials or binomials of "
                "large n do not fit a float; write the ratio C(n-c,k)/C(n,k) as a product of "
                "factors (1 - k/i)"
            )
        if abs(got - want) <= 1e-9:
            continue
        case = f"for n={n}, c={c}, k={k} you return {got:.6g}, expected {want:.6g}"
        if abs(got - (1 - (1 - c / n) ** k)) <= 1e-9:
            return (
                f"{case}: 1 - (1 - c/n)^k draws the k samples with replacement; it is biased. "
                "Count sets of k drawn without replacement from the n you have"
            )
        if abs(got - c / n) <= 1e-9:
            return f"{case}: c/n is pass@1, whatever k is"
        if n - c < k and got < 1:
            return f"{case}: with fewer than k failures every set of k samples holds a pass"
        if abs(got - (1 - want)) <= 1e-9:
            return f"{case}: that is the chance that all k fail; pass@k is 1 minus it"
        return case
    return None


# --- 13.2 bits per byte ------------------------------------------------------------------------


@exercise("13.2", "bits per byte from a loss and a token count")
def check_bits_per_byte_from_loss(answer: Any) -> str | None:
    """``bits_per_byte(loss, n_tokens, n_bytes)`` with ``loss`` in nats per token."""
    fn = _callable(answer, "bits_per_byte", "13.2")
    for loss, n_tokens, n_bytes in ((4.29, 1000, 2920), (2.0, 500, 500), (1.1, 2402, 7998)):
        want = loss_to_bits_per_byte(loss, n_tokens, n_bytes)
        got = as_number(fn(loss, n_tokens, n_bytes), "bits_per_byte")
        if abs(got - want) <= 1e-9 * max(1.0, want):
            continue
        case = f"for loss={loss}, {n_tokens} tokens, {n_bytes} bytes you return {got:.6g}, expected {want:.6g}"
        wrongs = {
            "nats": (loss * n_tokens / n_bytes, "that is nats per byte: divide by ln 2 for bits"),
            "per_token": (loss / LN2, "that is bits per *token*; spread the total over the bytes"),
            "inverted": (
                loss * n_bytes / (LN2 * n_tokens),
                "tokens and bytes are swapped: total bits = loss x tokens / ln 2, then / bytes",
            ),
            "log10": (
                loss * n_tokens / (math.log(10) * n_bytes),
                "bits are base-2: divide nats by ln 2, not ln 10",
            ),
            "times": (loss * n_tokens * LN2 / n_bytes, "nats -> bits divides by ln 2"),
        }
        for value, hint in wrongs.values():
            if abs(got - value) <= 1e-9 * max(1.0, abs(value)):
                return f"{case}: {hint}"
        return case
    return None


# --- 13.3 a bootstrap interval -----------------------------------------------------------------


@exercise("13.3", "a percentile bootstrap interval by hand")
def check_percentile_interval(answer: Any) -> str | None:
    """``percentile_interval(scores, n_resamples, seed)`` -> ``(low, high)``, the 95% percentile
    bootstrap interval of the mean; compared with ``bootstrap_ci`` within Monte Carlo noise."""
    fn = _callable(answer, "percentile_interval", "13.3")
    rng = np.random.default_rng(13)
    for n, p in ((68, 0.6), (200, 0.3)):
        scores = [float(x) for x in rng.random(n) < p]
        ref = bootstrap_ci(scores, n_resamples=20_000, seed=0)
        out = fn(list(scores), 4000, 1)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return "return a pair (low, high)"
        low, high = (as_number(v, "percentile_interval") for v in out)
        mean = float(np.mean(scores))
        case = f"for {n} items with mean {mean:.3f} you return ({low:.3f}, {high:.3f}), expected about ({ref.low:.3f}, {ref.high:.3f})"
        if not low <= mean <= high:
            return f"{case}: the interval must contain the mean of the scores"
        width, ref_width = high - low, ref.high - ref.low
        if width < 1e-12:
            return (
                f"{case}: zero width; resample *with* replacement (a permutation has the same mean)"
            )
        sd = float(np.std(scores))
        if abs(width - 2 * 1.96 * sd) < 0.05:
            return f"{case}: that is +-1.96 standard deviations of the scores; the interval is for the *mean*, whose spread is about sd/sqrt(n)"
        if abs(width / ref_width - 1 / 1.96) < 0.1:
            return f"{case}: +-1 standard error is a 68% interval; take the 2.5th and 97.5th percentiles"
        if abs(low - ref.low) > 0.02 or abs(high - ref.high) > 0.02:
            return case
    return None


# --- 13.4 how many items ------------------------------------------------------------------------


@exercise("13.4", "how many items separate two accuracies")
def check_items_needed(answer: Any) -> str | None:
    """``items_needed(p1, p2)``: items per model (independent samples, 95%), rounded up."""
    fn = _callable(answer, "items_needed", "13.4")
    for p1, p2 in ((0.62, 0.44), (0.31, 0.28), (0.9, 0.8), (0.5, 0.55)):
        want = items_needed(p1, p2)
        got = fn(p1, p2)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            return f"items_needed({p1}, {p2}) must return a whole number of items, got {got!r}"
        if got == want:
            continue
        case = f"for p1={p1}, p2={p2} you return {got}, expected {want}"
        v1, v2, d2 = p1 * (1 - p1), p2 * (1 - p2), (p1 - p2) ** 2
        wrongs = {
            math.ceil(1.96**2 * v1 / d2): "only p1's variance: both accuracies are uncertain",
            math.ceil(1.96**2 * 2 * v1 / d2): "the variance of the difference uses p2(1-p2) too",
            math.ceil((v1 + v2) / d2): "one standard error is not 95%: multiply by z^2 = 1.96^2",
            math.ceil(1.96 * (v1 + v2) / d2): "z enters squared: n = z^2 (...) / (p1 - p2)^2",
            math.floor(1.96**2 * (v1 + v2) / d2): "round *up*: fewer items leave the gap short",
            math.ceil(1.96**2 * (v1 + v2) / abs(p1 - p2)): "divide by the *squared* difference",
        }
        return f"{case}: {wrongs[got]}" if got in wrongs else case
    return None
