"""Checkers for the exercises of chapter 5, "Sampling and decoding".

Each checker runs the reader's function on inputs built here and compares it with
:mod:`gptlab.sampling` (the reference) or with the formula, and recognises the usual mistakes so
the hint names the one the reader made.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable
from gptlab.sampling import apply_repetition_penalty, top_k_filter, top_p_filter

__all__ = [
    "check_generation_flops",
    "check_repetition_penalty",
    "check_temperature_softmax",
    "check_top_k",
    "check_top_p",
    "generation_flops",
    "processed_positions",
]


def processed_positions(prompt_len: int, new_tokens: int, use_cache: bool) -> int:
    """Token positions the model runs on to generate ``new_tokens`` after a ``prompt_len`` prompt.

    Without a cache the step that picks the token at position ``t`` re-runs all ``t`` positions
    before it: ``P + (P + 1) + ... + (P + N - 1) = N·P + N(N-1)/2``. With a cache the prompt runs
    once (``P`` positions, the prefill) and each of the other ``N - 1`` steps runs one position.
    Assumes ``P + N - 1 <= block_size`` (no sliding window).
    """
    for name, value in (("prompt_len", prompt_len), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if prompt_len == 0:
        raise ValueError("prompt_len must be >= 1: generation needs at least one token to start")
    N, P = new_tokens, prompt_len
    if N == 0:
        return 0
    if use_cache:
        return P + (N - 1)
    return N * P + N * (N - 1) // 2


def generation_flops(n_params: int, prompt_len: int, new_tokens: int, use_cache: bool) -> int:
    """Forward FLOPs of the weight matrix products, ``2 · n_params`` per processed position.

    Each parameter takes part in one multiply and one add per position (Kaplan et al., 2020); the
    attention scores themselves are left out, so this is a slight undercount for long contexts.
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 1:
        raise ValueError(f"n_params must be a positive int, got {n_params!r}")
    return 2 * n_params * processed_positions(prompt_len, new_tokens, use_cache)


def _tensor(out: Any, name: str, shape: torch.Size) -> Tensor:
    if not isinstance(out, Tensor):
        raise NotSolved(f"{name} should return a torch.Tensor, got {type(out).__name__}")
    if out.shape != shape:
        raise NotSolved(
            f"{name} should keep the shape of the logits {tuple(shape)}, got {tuple(out.shape)}"
        )
    return out


def _same_filter(got: Tensor, want: Tensor) -> bool:
    """Same kept set (finite entries) and the same values on it."""
    kept = torch.isfinite(want)
    if not torch.equal(torch.isfinite(got), kept):
        return False
    return torch.allclose(got[kept].double(), want[kept].double(), atol=1e-6, rtol=0)


def _logits(gen: torch.Generator, *shape: int, scale: float = 2.0) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


# --- 5.1 temperature softmax ----------------------------------------------------------------------


@exercise("5.1", "softmax with a temperature")
def check_temperature_softmax(answer: Any) -> str | None:
    """``temperature_softmax(logits, T)`` must return ``softmax(logits / T)`` over the last axis."""
    fn = _callable(answer, "temperature_softmax", "5.1")
    gen = torch.Generator().manual_seed(51)
    cases = [(_logits(gen, 2, 11), T) for T in (1.0, 0.5, 2.0, 0.1)]
    cases.append((_logits(gen, 3, 7, scale=40.0), 0.05))  # z / T reaches ~±2000: exp overflows
    for logits, T in cases:
        want = torch.softmax(logits / T, dim=-1)
        got = _tensor(fn(logits.clone(), T), "temperature_softmax", logits.shape).double()
        if torch.allclose(got, want, atol=1e-6, rtol=0):
            continue
        if torch.isnan(got).any() or torch.isinf(got).any():
            return (
                "you get nan/inf when logits / T is large: subtract the row maximum before exp "
                "(or use torch.softmax, which does)"
            )
        if torch.allclose(got, torch.softmax(logits * T, dim=-1), atol=1e-6, rtol=0):
            return "divide the logits by the temperature, do not multiply: p ∝ exp(z / T)"
        if torch.allclose(got, torch.softmax(logits, dim=-1) / T, atol=1e-6, rtol=0):
            return (
                "apply the temperature to the logits BEFORE the softmax, not to the probabilities"
            )
        if torch.allclose(got, torch.softmax(logits / T, dim=0), atol=1e-6, rtol=0):
            return "normalise over the vocabulary, the last axis (dim=-1), not dim=0"
        if not torch.allclose(got.sum(-1), torch.ones_like(got.sum(-1)), atol=1e-6):
            return "each row should be a probability distribution that sums to 1"
        err = (got - want).abs().max().item()
        return f"at T={T} the probabilities are off by up to {err:.3g}; compute softmax(z / T)"
    return None


# --- 5.2 top-k ------------------------------------------------------------------------------------


@exercise("5.2", "a top-k filter")
def check_top_k(answer: Any) -> str | None:
    """``top_k(logits, k)`` must keep the ``k`` largest logits per row and set the rest to -inf."""
    fn = _callable(answer, "top_k", "5.2")
    gen = torch.Generator().manual_seed(52)
    for shape, k in (((1, 20), 5), ((3, 17), 1), ((4, 9), 3), ((2, 6), 6)):
        logits = _logits(gen, *shape)
        want = top_k_filter(logits, k)
        got = _tensor(fn(logits.clone(), k), "top_k", logits.shape)
        if _same_filter(got, want):
            continue
        if torch.isfinite(got).all():
            rows_sum_to_one = torch.allclose(got.double().sum(-1), torch.ones(shape[0]).double())
            if torch.all(got >= 0) and rows_sum_to_one:
                return "return filtered LOGITS (with -inf), not probabilities; sample later"
            if int((got == 0).sum()) >= shape[0] * (shape[1] - k) > 0:
                return "set the removed logits to -inf, not 0: exp(0) = 1 still gives them mass"
            return f"with k={k} some logits should be -inf, but none are"
        n_kept = torch.isfinite(got).sum(-1)
        if (n_kept == k + 1).all():
            return f"you keep {k + 1} tokens per row for k={k}: keep exactly k (check < versus <=)"
        if (n_kept == k - 1).all():
            return f"you keep {k - 1} tokens per row for k={k}: keep exactly k (check < versus <=)"
        if not torch.equal(n_kept, torch.full_like(n_kept, k)):
            return (
                f"each row should keep exactly k={k} tokens, yours keep {n_kept.tolist()}: find "
                "the k largest per row (dim=-1), e.g. with torch.topk"
            )
        return "you keep k tokens per row, but not the k LARGEST ones, or their values changed"
    return None


# --- 5.3 top-p ------------------------------------------------------------------------------------


@exercise("5.3", "a top-p (nucleus) filter")
def check_top_p(answer: Any) -> str | None:
    """``top_p(logits, p)``: keep the fewest most likely tokens whose probabilities reach ``p``."""
    fn = _callable(answer, "top_p", "5.3")
    gen = torch.Generator().manual_seed(53)
    peaked = torch.tensor([[6.0, 1.0, 0.5, 0.0, -1.0, -2.0]], dtype=torch.float64)
    cases = [(_logits(gen, 1, 12), 0.9), (_logits(gen, 3, 15), 0.5), (peaked, 0.8)]
    cases += [(_logits(gen, 2, 10, scale=0.3), 0.75), (_logits(gen, 2, 8), 1.0)]
    for logits, p in cases:
        want = top_p_filter(logits, p)
        got = _tensor(fn(logits.clone(), p), "top_p", logits.shape)
        if _same_filter(got, want):
            continue
        if torch.isfinite(got).all() and p < 1:
            if (got == 0).any():
                return "set the removed logits to -inf, not 0: exp(0) = 1 still gives them mass"
            return f"with p={p} some tokens should be removed (-inf), but none are"
        kept_rows = torch.isfinite(got).sum(-1)
        if (kept_rows == 0).any():
            return (
                "a row lost every token: always keep the most likely one, even when its "
                "probability alone exceeds p"
            )
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cum = torch.cumsum(sorted_probs, -1)
        kept = torch.isfinite(got)
        for inside in (cum <= p, cum < p):  # only the tokens fully inside p
            if torch.equal(kept, torch.zeros_like(inside).scatter(-1, order, inside)):
                return (
                    "keep the token that crosses p too: the nucleus is the smallest set whose "
                    "mass is >= p, so test the mass BEFORE each token (cumsum - probs < p)"
                )
        want_sorted = torch.isfinite(want).gather(-1, order)  # True for the first n in sorted order
        if torch.equal(kept, want_sorted):
            return (
                "your mask is in sorted order: map it back to vocabulary order (scatter it with "
                "the indices that torch.sort returned)"
            )
        if torch.equal(kept, torch.isfinite(want)):
            return "the kept set is right, but leave the kept logits unchanged"
        return (
            f"for p={p} you keep {kept.sum(-1).tolist()} tokens per row, the nucleus has "
            f"{torch.isfinite(want).sum(-1).tolist()}: sort, add up the probabilities, cut"
        )
    return None


# --- 5.4 repetition penalty -----------------------------------------------------------------------


@exercise("5.4", "the repetition penalty")
def check_repetition_penalty(answer: Any) -> str | None:
    """``repetition_penalty(logits, previous, penalty)`` as in CTRL: seen tokens lose, once each."""
    fn = _callable(answer, "repetition_penalty", "5.4")
    gen = torch.Generator().manual_seed(54)
    V = 10
    logits = _logits(gen, 2, V)
    previous = torch.tensor([[1, 3, 3, 7, 1, 3], [0, 0, 0, 9, 2, 2]])  # (B, T) with repeats
    for penalty in (1.3, 2.0, 0.8):
        want = apply_repetition_penalty(logits, previous, penalty)
        got = _tensor(
            fn(logits.clone(), previous.clone(), penalty), "repetition_penalty", logits.shape
        )
        got = got.double()
        if torch.allclose(got, want, atol=1e-6, rtol=0):
            continue
        if torch.allclose(got, logits, atol=1e-9, rtol=0):
            return "the logits came back unchanged: lower those of the tokens in `previous`"
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, previous, True)
        if not torch.allclose(got[~seen], logits[~seen], atol=1e-9, rtol=0):
            return "only tokens that appear in `previous` (in the same row) may change"
        divided = logits.scatter(1, previous, logits.gather(1, previous) / penalty)
        if torch.allclose(got, divided, atol=1e-6, rtol=0):
            return (
                "dividing a NEGATIVE logit by the penalty moves it towards 0, i.e. makes the "
                "token MORE likely: multiply negative logits by the penalty instead"
            )
        counts = torch.zeros_like(logits).scatter_add(
            1, previous, torch.ones_like(previous).double()
        )
        repeated = torch.where(logits > 0, logits / penalty**counts, logits * penalty**counts)
        if torch.allclose(got, repeated, atol=1e-6, rtol=0):
            return (
                "a token that appears several times was penalised several times: apply the "
                "penalty once per distinct token (gather the seen logits, then scatter them back)"
            )
        return (
            f"with penalty={penalty} the seen logits are wrong: z / penalty where z > 0, "
            "z * penalty where z <= 0"
        )
    return None


# --- 5.5 what the KV cache saves --------------------------------------------------------------------


@exercise("5.5", "count the FLOPs the KV cache saves")
def check_generation_flops(answer: Any) -> str | None:
    """``generation_flops(n_params, prompt_len, new_tokens, use_cache)`` with ``2·n_params`` FLOPs/position."""
    fn = _callable(answer, "generation_flops", "5.5")
    for n_params, P, N in ((1000, 4, 3), (85_056_000, 10, 100), (7, 1, 1), (3, 5, 0), (50, 1, 64)):
        for use_cache in (False, True):
            want = generation_flops(n_params, P, N, use_cache)
            got = fn(n_params, P, N, use_cache)
            if isinstance(got, Tensor) and got.numel() == 1:
                got = got.item()
            if isinstance(got, float) and got.is_integer():
                got = int(got)
            if isinstance(got, bool) or not isinstance(got, int):
                return f"return an int number of FLOPs, got {type(got).__name__}"
            if got == want:
                continue
            case = f"n_params={n_params}, prompt_len={P}, new_tokens={N}, use_cache={use_cache}"
            positions = want // (2 * n_params)
            if use_cache and got == 2 * n_params * (P + N):
                return (
                    f"{case}: the last new token is never fed back in, so the cache runs the "
                    "prompt once and then N - 1 single tokens"
                )
            if use_cache and got == 2 * n_params * N:
                return f"{case}: with a cache, the prompt still has to run once (the prefill)"
            if not use_cache and got == 2 * n_params * N * (P + N):
                return (
                    f"{case}: the step that picks token t runs the t tokens BEFORE it, from P "
                    "up to P + N - 1"
                )
            if not use_cache and got == 2 * n_params * N * P:
                return f"{case}: without a cache the context grows by one token every step"
            if got == want // 2:
                return f"{case}: each parameter costs 2 FLOPs per position (a multiply and an add)"
            return (
                f"{case}: expected {want:,} FLOPs ({positions} positions x 2 x n_params), got "
                f"{got:,}"
            )
    return None
