"""Checkers for the exercises of chapter 2, "Attention".

Every checker compares the reader's answer with a reference that PyTorch itself computes
(``torch.softmax``, ``torch.tril``, ``F.scaled_dot_product_attention``) or with a closed-form
count, and recognises the common mistakes so that the hint names the one the reader made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from gptlab.exercises import NotSolved, exercise

__all__ = [
    "check_attention_cost",
    "check_causal_attention",
    "check_causal_mask",
    "check_split_heads",
    "check_stable_softmax",
]


def _callable(answer: Any, what: str) -> Callable[..., Any]:
    if not callable(answer):
        raise NotSolved(f"pass your function itself, e.g. check('2.1', {what}), not its result")
    return answer


def _tensor(result: Any, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(result, torch.Tensor):
        raise NotSolved(f"{name} must return a torch.Tensor, got {type(result).__name__}")
    if tuple(result.shape) != shape:
        raise NotSolved(f"{name} returned shape {tuple(result.shape)}, expected {shape}")
    return result


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))


def _shifted_softmax(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - shift)
    return e / e.sum(dim=-1, keepdim=True)


def _whole_tensor_max(x: torch.Tensor) -> torch.Tensor:
    return _shifted_softmax(x, x.max())


def _row_min(x: torch.Tensor) -> torch.Tensor:
    return _shifted_softmax(x, x.min(dim=-1, keepdim=True).values)


def _first_axis_max(x: torch.Tensor) -> torch.Tensor:
    return _shifted_softmax(x, x.max(dim=0, keepdim=True).values)


# Shifts readers get wrong, each with the hint that names the mistake. A wrong answer that agrees
# with one of them (nan where it gives nan) gets that hint instead of a general one.
_SOFTMAX_MISTAKES: tuple[tuple[Callable[[torch.Tensor], torch.Tensor], str], ...] = (
    (
        _whole_tensor_max,
        "you subtracted the maximum of the whole tensor (x.max()), so in a row whose scores all "
        "lie far below it every exp() underflows to 0 and the row becomes 0/0 = nan. Subtract each "
        "row's own maximum, x.max(dim=-1, keepdim=True).values",
    ),
    (
        _row_min,
        "subtract the row MAXIMUM, not the minimum: after subtracting the minimum the exponents are "
        "large and positive, so exp() overflows (and -inf minus -inf is nan)",
    ),
    (
        _first_axis_max,
        "you took the maximum over dim=0, one per column; the shift must be one constant per row, "
        "x.max(dim=-1, keepdim=True).values, or it changes the differences within the row",
    ),
)


def _named_softmax_mistake(x: torch.Tensor, got: torch.Tensor) -> str | None:
    for mistake, hint in _SOFTMAX_MISTAKES:
        wrong = mistake(x)
        if wrong.shape == got.shape and torch.allclose(
            got.double(), wrong.double(), atol=1e-5, rtol=1e-4, equal_nan=True
        ):
            return hint
    return None


@exercise("2.1", "a numerically stable softmax")
def check_stable_softmax(softmax: Any) -> str | None:
    """``softmax(x)`` over the last dimension must equal ``torch.softmax(x, dim=-1)``, even for huge
    logits and for rows whose scales differ wildly within one tensor."""
    fn = _callable(softmax, "softmax")
    gen = torch.Generator().manual_seed(0)
    cases = {
        "small random logits": torch.randn(3, 5, generator=gen),
        "one row of logits": torch.tensor([2.0, 1.0, 0.1]),
        "a batch of rows (softmax must act on the last dimension)": torch.randn(
            2, 3, 4, generator=gen
        ),
        "large logits like [1000, 1001, 1002]": torch.tensor([[1000.0, 1001.0, 1002.0]]),
        "very negative logits like [-1000, -1001, -1002]": torch.tensor(
            [[-1000.0, -1001.0, -1002.0]]
        ),
        "a masked row with -inf entries": torch.tensor([[0.5, float("-inf"), 1.5, float("-inf")]]),
        "two rows far apart, [[1000, 1001, 1002], [-1000, -1001, -1002]]": torch.tensor(
            [[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]]
        ),
    }
    for label, x in cases.items():
        try:
            got = _tensor(fn(x.clone()), "softmax", tuple(x.shape))
        except RuntimeError as exc:
            if "must match the size" not in str(exc):
                raise
            return (
                f"on {label}, shape {tuple(x.shape)}, your softmax failed to broadcast ({exc}): "
                "a max or sum without keepdim=True drops the last axis, so it no longer lines up "
                "with x; pass keepdim=True"
            )
        want = torch.softmax(x, dim=-1)
        if _close(got, want):
            continue
        named = _named_softmax_mistake(x, got)
        if named is not None:
            return f"on {label}: {named}"
        if not torch.isfinite(got).all():
            return (
                f"on {label} your softmax returned nan or inf: exp() overflowed or underflowed. "
                "Subtract the row maximum (x.max(dim=-1, keepdim=True).values) before exp()."
            )
        sums = got.sum(dim=-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
            return (
                f"on {label} your rows sum to {sums.flatten()[:3].tolist()}, not 1: divide by "
                "the sum over the last dimension, with keepdim=True so it broadcasts"
            )
        return f"on {label} your values differ from torch.softmax(x, dim=-1); normalise over dim=-1"
    return None


@exercise("2.2", "the causal mask")
def check_causal_mask(causal_mask: Any) -> str | None:
    """``causal_mask(T)`` must be a bool ``(T, T)`` tensor, True where query i may attend to key j (j <= i)."""
    fn = _callable(causal_mask, "causal_mask")
    for T in (5, 1, 2, 8):  # T=5 first: at T=1 several mistakes look alike
        got = _tensor(fn(T), f"causal_mask({T})", (T, T))
        if got.dtype != torch.bool:
            return (
                f"causal_mask({T}) has dtype {got.dtype}; return a bool tensor (True = may attend)"
            )
        want = torch.tril(torch.ones(T, T, dtype=torch.bool))
        if torch.equal(got, want):
            continue
        if torch.equal(got, want.T):
            return "your mask is transposed: row i is the query, so True must lie on and BELOW the diagonal"
        if torch.equal(got, ~want):
            return "your mask is inverted: True must mean 'may attend', i.e. key j <= query i"
        if torch.equal(got, torch.tril(want, diagonal=-1)):
            return "a token may attend to itself: keep the diagonal True (torch.tril, diagonal=0)"
        return f"causal_mask({T}) is not lower-triangular with a True diagonal:\n{got.int()}"
    return None


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _variant(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool
) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) * scale
    if causal:
        T = q.size(-2)
        scores = scores.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@exercise("2.3", "single-head causal attention")
def check_causal_attention(causal_attention: Any) -> str | None:
    """``causal_attention(q, k, v)`` must equal softmax(q kᵀ/√d_k + causal mask) v for any leading dims."""
    fn = _callable(causal_attention, "causal_attention")
    gen = torch.Generator().manual_seed(0)
    shapes = [((6, 4), (6, 4), (6, 4)), ((2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 3))]
    for q_shape, k_shape, v_shape in shapes:
        q = torch.randn(q_shape, generator=gen, dtype=torch.float64) * 2
        k = torch.randn(k_shape, generator=gen, dtype=torch.float64) * 2
        v = torch.randn(v_shape, generator=gen, dtype=torch.float64)
        out_shape = (*q_shape[:-1], v_shape[-1])
        got = _tensor(fn(q.clone(), k.clone(), v.clone()), "causal_attention", out_shape)
        want = _reference_attention(q, k, v)
        if _close(got, want, atol=1e-6):
            continue
        d_k, d_v = q_shape[-1], v_shape[-1]
        wrong = {
            "you did not scale the scores: divide q @ kᵀ by sqrt(d_k)": {
                "scale": 1.0,
                "causal": True,
            },
            "divide by sqrt(d_k), not by d_k": {"scale": 1 / d_k, "causal": True},
            "you forgot the causal mask: fill scores above the diagonal with -inf before softmax": {
                "scale": 1 / math.sqrt(d_k),
                "causal": False,
            },
        }
        if d_v != d_k:
            wrong["scale by the size of the keys, d_k = q.size(-1), not of the values"] = {
                "scale": 1 / math.sqrt(d_v),
                "causal": True,
            }
        for hint, kwargs in wrong.items():
            if _close(got, _variant(q, k, v, **kwargs), atol=1e-6):
                return hint
        err = (got.double() - want).abs().max().item()
        return (
            f"for q of shape {q_shape} your output differs from softmax(q kᵀ/√d_k + mask) v by up to "
            f"{err:.3g}; check the transpose (k.transpose(-2, -1)) and that softmax runs over dim=-1"
        )
    return None


@exercise("2.4", "the cost of attention")
def check_attention_cost(attention_cost: Any) -> str | None:
    """``attention_cost(T, d_model, n_head, bytes_per_element)`` -> ``(flops, nbytes)`` of one layer, one sequence.

    ``flops``: the two matrix products Q Kᵀ and A V over all heads, a multiply-add counted as 2 FLOPs,
    i.e. 4 T² d_model. ``nbytes``: the T x T attention weights of every head, n_head T² bytes_per_element.
    """
    fn = _callable(attention_cost, "attention_cost")
    for T, d, nh, nbytes in ((1024, 768, 12, 4), (16, 64, 4, 2), (3, 10, 1, 8)):
        got = fn(T, d, nh, nbytes)
        if not (isinstance(got, tuple) and len(got) == 2):
            return "return a tuple (flops, nbytes)"
        flops, mem = got
        want_flops, want_mem = 4 * T * T * d, nh * T * T * nbytes
        call = f"attention_cost({T}, {d}, {nh}, {nbytes})"
        if flops != want_flops:
            if flops == 2 * T * T * d:
                return (
                    f"{call}: flops={flops} is half the answer: count both products (Q Kᵀ and A V) "
                    "and a multiply-add as 2 FLOPs"
                )
            if flops in (4 * T * T * (d // nh), 2 * T * T * (d // nh)):
                return f"{call}: you counted one head; the heads together have d_model = n_head * head_size"
            return f"{call}: flops={flops}, expected 2 products x 2 T² d_model = {want_flops}"
        if mem != want_mem:
            if mem == T * T * nbytes:
                return f"{call}: every one of the {nh} heads stores its own T x T matrix"
            if mem == nh * T * T:
                return f"{call}: nbytes counts bytes: multiply the elements by bytes_per_element"
            return f"{call}: nbytes={mem}, expected n_head x T x T x bytes_per_element = {want_mem}"
    return None


@exercise("2.5", "split the heads")
def check_split_heads(split_heads: Any) -> str | None:
    """``split_heads(x, n_head)`` turns ``(B, T, C)`` into ``(B, n_head, T, C // n_head)``, head h = channels h*hs:(h+1)*hs."""
    fn = _callable(split_heads, "split_heads")
    B, T, C, nh = 2, 5, 12, 3
    hs = C // nh
    x = torch.arange(B * T * C, dtype=torch.float32).reshape(B, T, C)
    got = _tensor(fn(x.clone(), nh), "split_heads", (B, nh, T, hs))
    want = x.view(B, T, nh, hs).transpose(1, 2)
    if torch.equal(got, want):
        return None
    if torch.equal(got, x.reshape(B, nh, T, hs)):
        return (
            "right shape, wrong contents: a plain reshape to (B, nh, T, hs) mixes tokens across heads. "
            "Reshape to (B, T, nh, hs) first, then swap dimensions 1 and 2"
        )
    if torch.equal(got, x.view(B, T, hs, nh).permute(0, 3, 1, 2)):
        return "head h must take the contiguous channels h*hs:(h+1)*hs; reshape to (B, T, nh, hs), not (B, T, hs, nh)"
    return f"head 0 of token 0 should hold channels 0..{hs - 1} of token 0, i.e. {want[0, 0, 0].tolist()}"
