"""pass@k: the chance that at least one of k sampled programs passes its tests.

Drawing exactly k samples per problem and checking whether any passes gives a noisy estimate.
Chen et al. (2021, "Evaluating Large Language Models Trained on Code") draw n >= k samples, count
the c that pass, and use the unbiased estimator

    pass@k = 1 - C(n - c, k) / C(n, k),

the probability that k of the n samples drawn without replacement include a passing one. The
binomial coefficients overflow floats for large n, so it is computed as the product
``prod_{i = n-c+1}^{n} (1 - k / i)``, which equals the ratio and stays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

from gptlab.evaluate._checks import check_int

__all__ = ["mean_pass_at_k", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` passed (``k <= n``)."""
    check_int(n, "n (samples)")
    check_int(c, "c (passing samples)", 0)
    check_int(k, "k")
    if c > n:
        raise ValueError(f"c ({c}) cannot exceed n ({n}): at most every sample passes")
    if k > n:
        raise ValueError(f"k ({k}) cannot exceed n ({n}); draw at least k samples per problem")
    if n - c < k:
        return 1.0  # every set of k samples contains a passing one
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, from ``(n, c)`` per problem."""
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or not counts:
        raise ValueError("counts must be a non-empty list of (n, c) pairs, one per problem")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
