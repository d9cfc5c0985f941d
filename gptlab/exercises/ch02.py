"""Checkers for the exercises of chapter 2, "Attention".

Every checker compares the reader's answer with a reference that PyTorch or gptlab computes
(``torch.softmax``, ``gptlab.attention.causal_attention``, an ``nn.Linear``) or with a closed-form
count, and recognises the common mistakes so that the hint names the one the reader made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptlab.attention import causal_attention
from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_attention_cost",
    "check_grouped_query_attention",
    "check_head_contributions",
    "check_padded_causal_mask",
    "check_softmax_backward",
]


def _tensor(result: Any, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(result, torch.Tensor):
        raise NotSolved(f"{name} must return a torch.Tensor, got {type(result).__name__}")
    if tuple(result.shape) != shape:
        raise NotSolved(f"{name} returned shape {tuple(result.shape)}, expected {shape}")
    return result


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, equal_nan: bool = False) -> bool:
    return a.shape == b.shape and bool(
        torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4, equal_nan=equal_nan)
    )


# --- 2.1 the softmax's backward pass ------------------------------------------------------------


def _shifted_softmax(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - shift)
    return e / e.sum(dim=-1, keepdim=True)


def _vjp(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``Jᵀ g`` for ``J = diag(p) - p pᵀ``: ``p ⊙ (g - <p, g>)``, without the n x n matrix."""
    return p * (g - (p * g).sum(dim=-1, keepdim=True))


# Softmaxes readers get wrong inside their backward pass, each with the hint that names the
# mistake (the hardening of the former stable-softmax exercise): a wrong answer that agrees with
# one of them (nan where it gives nan) gets that hint instead of a general one.
_SOFTMAX_MISTAKES: tuple[tuple[Callable[[torch.Tensor], torch.Tensor], str], ...] = (
    (
        lambda x: _shifted_softmax(x, x.max()),
        "your softmax subtracts the maximum of the whole tensor (x.max()), so in a row whose scores "
        "all lie far below it every exp() underflows to 0 and the row becomes 0/0 = nan. Use "
        "torch.softmax(z, dim=-1), or subtract each row's own maximum, "
        "z.max(dim=-1, keepdim=True).values",
    ),
    (
        lambda x: _shifted_softmax(x, x.min(dim=-1, keepdim=True).values),
        "your softmax subtracts the row MINIMUM: the exponents are then large and positive, so "
        "exp() can overflow, and in a masked row -inf minus -inf is nan; subtract the row maximum "
        "(or use torch.softmax(z, dim=-1))",
    ),
    (
        lambda x: torch.exp(x) / torch.exp(x).sum(dim=-1, keepdim=True),
        "your softmax overflows: exp(1000) is inf in floating point. Use torch.softmax(z, dim=-1), "
        "or subtract each row's maximum before exp()",
    ),
)


@exercise("2.1", "the softmax's backward pass")
def check_softmax_backward(answer: Any) -> str | None:
    """``softmax_backward(z, grad_p)`` must return ``∂L/∂z = Jᵀ grad_p`` for ``p = softmax(z)``.

    ``J = diag(p) - p pᵀ`` is symmetric, so the answer is ``p ⊙ (grad_p - <p, grad_p>)`` row by
    row. The checker feeds large and masked scores too, so an unstable softmax inside shows.
    """
    fn = _callable(answer, "softmax_backward", "2.1")
    gen = torch.Generator().manual_seed(21)
    cases = {
        "small random scores": torch.randn(3, 5, generator=gen, dtype=torch.float64),
        "a batch of rows (act on the last dimension)": torch.randn(
            2, 3, 4, generator=gen, dtype=torch.float64
        ),
        "a masked row with -inf entries": torch.tensor(
            [[0.5, float("-inf"), 1.5, float("-inf")]], dtype=torch.float64
        ),
        "two rows far apart, [[1000, 1001, 1002], [-1000, -1001, -1002]]": torch.tensor(
            [[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]], dtype=torch.float64
        ),
    }
    for label, z in cases.items():
        g = torch.randn(z.shape, generator=gen, dtype=torch.float64)
        try:
            got = _tensor(fn(z.clone(), g.clone()), "softmax_backward", tuple(z.shape))
        except RuntimeError as exc:
            if "must match the size" not in str(exc):
                raise
            return (
                f"on {label}, shape {tuple(z.shape)}, your code failed to broadcast ({exc}): a sum "
                "without keepdim=True drops the last axis, so it no longer lines up; pass "
                "keepdim=True"
            )
        p = torch.softmax(z, dim=-1)
        want = _vjp(p, g)
        if _close(got, want, atol=1e-8):
            continue
        for softmax, hint in _SOFTMAX_MISTAKES:
            if _close(got, _vjp(softmax(z), g), atol=1e-8, equal_nan=True):
                return f"on {label}: {hint}"
        wrong = {
            "you kept only the diagonal of J (p_i δ_ij): every p_i depends on every z_j through "
            "the normalisation, which adds the term -p_i p_j": p * g,
            "you used only the diagonal entries p_i (1 - p_i) of J: the off-diagonal -p_i p_j "
            "couple the scores too": p * (1 - p) * g,
            "the bracket is right, but each entry must still be multiplied by p_i: "
            "p ⊙ (grad_p - <p, grad_p>)": g - (p * g).sum(dim=-1, keepdim=True),
            "check the sign: J = diag(p) - p pᵀ, so subtract <p, grad_p>": p
            * (g + (p * g).sum(dim=-1, keepdim=True)),
            "apply the formula to the probabilities p = softmax(z), not to the scores z": z
            * (g - (z * g).sum(dim=-1, keepdim=True)),
        }
        for hint, variant in wrong.items():
            if _close(got, variant, atol=1e-8):
                return f"on {label}: {hint}"
        if not torch.isfinite(got).all():
            return (
                f"on {label} your answer holds nan or inf: compute p with torch.softmax(z, dim=-1) "
                "(it subtracts each row's maximum) and note that p = 0 where z = -inf"
            )
        sums = got.sum(dim=-1)
        if not torch.allclose(sums, torch.zeros_like(sums), atol=1e-8):
            return (
                f"on {label} the rows of your gradient sum to {sums.flatten()[:3].tolist()}, not 0. "
                "Adding a constant to every score leaves p unchanged, so J 1 = 0 and every row of "
                "∂L/∂z must sum to 0"
            )
        err = (got.double() - want).abs().max().item()
        return f"on {label} your gradient is off by up to {err:.3g}; derive Jᵀ grad_p row by row"
    return None


# --- 2.2 a causal mask for a left-padded batch --------------------------------------------------


def _padded_reference(lengths: list[int], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The allowed pattern for real queries, and which query rows are real: ``(B, T, T)``, ``(B, T)``."""
    pos = torch.arange(T)
    start = T - torch.tensor(lengths)[:, None]  # (B, 1): first real position of each row
    real = pos[None, :] >= start  # (B, T)
    causal = pos[None, :] <= pos[:, None]  # (T, T)
    return causal[None] & real[:, None, :], real


@exercise("2.2", "a causal mask for a left-padded batch")
def check_padded_causal_mask(answer: Any) -> str | None:
    """``padded_causal_mask(lengths, T)`` -> bool ``(B, T, T)`` for a LEFT-padded batch.

    A real query ``i`` may attend to key ``j`` iff ``j <= i`` and ``j`` is real (``j >= T - length``).
    A pad query's row is thrown away later, but it must keep at least one True: a row of only
    -inf scores is nan after the softmax, and nan times a zero weight is nan in the next layer.
    """
    fn = _callable(answer, "padded_causal_mask", "2.2")
    for lengths, T in (([3, 5, 1], 5), ([2, 6, 4, 1], 6), ([4, 4], 4)):
        call = f"padded_causal_mask(torch.tensor({lengths}), {T})"
        got = _tensor(fn(torch.tensor(lengths), T), call, (len(lengths), T, T))
        if got.dtype != torch.bool:
            return f"{call} has dtype {got.dtype}; return a bool tensor (True = may attend)"
        want, real = _padded_reference(lengths, T)
        rows = real[:, :, None].expand_as(want)  # compare the rows of real queries only
        if torch.equal(got[rows], want[rows]):
            empty = ~got.any(dim=-1)  # (B, T): rows with no True
            if empty.any():
                b, i = (int(t) for t in empty.nonzero()[0])
                return (
                    f"{call}: row {b}, query {i} (a pad token) may attend to nothing. Its scores "
                    "are all -inf, the softmax gives 0/0 = nan, and in the next layer nan times "
                    "the zero weight of a real query is still nan: let every pad query attend to "
                    "itself (keep the diagonal True)"
                )
            continue
        pos = torch.arange(T)
        eye = torch.eye(T, dtype=torch.bool)  # a variant may or may not add the diagonal
        causal = (pos[None, :] <= pos[:, None])[None].expand_as(want)
        mistakes = {
            "real tokens may attend to the pad tokens on their left. Hide the keys "
            "j < T - length of each row as well as the future": causal,
            "the batch is LEFT-padded, so the real tokens of a row of length L are its LAST L "
            "positions (j >= T - L), not its first L": causal
            & (pos[None, None, :] < torch.tensor(lengths)[:, None, None]),
            "you hid the pad keys but forgot the causal mask (key j <= query i)": real[
                :, None, :
            ].expand_as(want),
            "your mask is transposed: row i is the query, column j the key": want.transpose(-2, -1),
        }
        for hint, variant in mistakes.items():
            if torch.equal((got | eye)[rows], (variant | eye)[rows]):
                return f"{call}: {hint}"
        return (
            f"{call}: wrong pattern for the real queries; for lengths[0] = {lengths[0]} the rows "
            f"should be\n{want[0].int()}\nyours are\n{got[0].int()}"
        )
    return None


# --- 2.3 grouped-query attention -----------------------------------------------------------------


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool):
    scores = q @ k.transpose(-2, -1) * scale
    if causal:
        T = q.size(-2)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@exercise("2.3", "grouped-query attention")
def check_grouped_query_attention(answer: Any) -> str | None:
    """``gqa(q, k, v)``: causal attention where query head ``h`` reads key/value head ``h // n_rep``.

    ``q`` is ``(B, n_head, T, hs)``, ``k`` and ``v`` ``(B, n_kv_head, T, hs)``; the reference is
    :func:`gptlab.attention.causal_attention`, which follows Hugging Face's grouping.
    """
    fn = _callable(answer, "grouped_query_attention", "2.3")
    gen = torch.Generator().manual_seed(23)
    for n_head, n_kv in ((4, 2), (6, 3), (4, 1), (2, 2)):  # GQA, GQA, multi-query, multi-head
        B, T, hs = 2, 5, 8
        q = torch.randn(B, n_head, T, hs, generator=gen, dtype=torch.float64) * 2
        k = torch.randn(B, n_kv, T, hs, generator=gen, dtype=torch.float64) * 2
        v = torch.randn(B, n_kv, T, hs, generator=gen, dtype=torch.float64)
        case = f"n_head={n_head}, n_kv_head={n_kv}"
        try:
            got = fn(q.clone(), k.clone(), v.clone())
        except RuntimeError as exc:
            if "must match the size" not in str(exc):
                raise
            return (
                f"{case}: q has {n_head} heads but k and v only {n_kv}, so q @ kᵀ does not "
                f"broadcast ({exc}); give every query head its key/value head first"
            )
        got = _tensor(got, "grouped_query_attention", (B, n_head, T, hs))
        want = causal_attention(q, k, v)[0]
        if _close(got, want, atol=1e-8):
            continue
        n_rep = n_head // n_kv
        tiled = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
        if _close(got, _sdpa(q, *tiled, scale=hs**-0.5, causal=True), atol=1e-8):
            return (
                f"{case}: .repeat tiles the KV heads (0, 1, 0, 1, ...), so query head h reads KV "
                f"head h % n_kv_head. Consecutive query heads form a group: head h reads KV head "
                f"h // {n_rep}; use repeat_interleave({n_rep}, dim=1)"
            )
        grouped = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
        wrong = {
            "you forgot the causal mask: fill the scores above the diagonal with -inf": {
                "scale": hs**-0.5,
                "causal": False,
            },
            "scale the scores by 1/sqrt(hs), the size of one head, not 1/hs": {
                "scale": 1 / hs,
                "causal": True,
            },
            "you did not scale the scores: divide q @ kᵀ by sqrt(hs)": {
                "scale": 1.0,
                "causal": True,
            },
        }
        for hint, kwargs in wrong.items():
            if _close(got, _sdpa(q, *grouped, **kwargs), atol=1e-8):
                return f"{case}: {hint}"
        err = (got.double() - want).abs().max().item()
        return (
            f"{case}: your output differs from causal attention with shared KV heads by up to "
            f"{err:.3g}; check which KV head each query head reads (h // n_rep)"
        )
    return None


# --- 2.4 the cost of attention -------------------------------------------------------------------


@exercise("2.4", "the cost of attention")
def check_attention_cost(attention_cost: Any) -> str | None:
    """``attention_cost(T, d_model, n_head, bytes_per_element)`` -> ``(flops, nbytes)`` of one layer, one sequence.

    ``flops``: the two matrix products Q Kᵀ and A V over all heads, a multiply-add counted as 2 FLOPs,
    i.e. 4 T² d_model. ``nbytes``: the T x T attention weights of every head, n_head T² bytes_per_element.
    """
    fn = _callable(attention_cost, "attention_cost", "2.4")
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


# --- 2.5 what each head writes ------------------------------------------------------------------


@exercise("2.5", "what each head adds to the output")
def check_head_contributions(answer: Any) -> str | None:
    """``head_contributions(heads, c_proj)`` -> ``(B, nh, T, C)``, head r's share of ``c_proj``'s output.

    Concatenating the heads and applying ``W_O`` is a sum over heads: head ``r`` contributes
    ``heads[:, r] @ W_O[:, r*hs:(r+1)*hs].T``, and the contributions plus the bias (added once)
    equal ``c_proj(merged heads)``.
    """
    fn = _callable(answer, "head_contributions", "2.5")
    gen = torch.Generator().manual_seed(25)
    for B, nh, T, hs in ((2, 3, 5, 4), (1, 4, 3, 2)):
        C = nh * hs
        heads = torch.randn(B, nh, T, hs, generator=gen, dtype=torch.float64)
        c_proj = nn.Linear(C, C, dtype=torch.float64)
        with torch.no_grad():
            for p in c_proj.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            W, b = c_proj.weight, c_proj.bias  # (C out, C in), (C,)
            got = _tensor(fn(heads.clone(), c_proj), "head_contributions", (B, nh, T, C))
            want = torch.einsum("bhtd,chd->bhtc", heads, W.view(C, nh, hs))
            if _close(got, want, atol=1e-8):
                continue
            case = f"for {nh} heads of size {hs}"
            rows = torch.einsum("bhtd,hdc->bhtc", heads, W.view(nh, hs, C))
            interleaved = torch.einsum("bhtd,cdh->bhtc", heads, W.view(C, hs, nh))
            if _close(got, rows, atol=1e-8):
                return (
                    f"{case}: c_proj.weight is stored (out, in), so head r's channels are the "
                    "COLUMNS W[:, r*hs:(r+1)*hs] (the inputs), not the rows; multiply by their "
                    "transpose"
                )
            if _close(got, want + b, atol=1e-8):
                return (
                    f"{case}: every head added the bias, so the sum counts it {nh} times; leave "
                    "it out of the contributions (it is added once, after the sum)"
                )
            if _close(got, want + b / nh, atol=1e-8):
                return f"{case}: leave the bias out: the contributions plus the bias must equal the output"
            if _close(got, interleaved, atol=1e-8):
                return (
                    f"{case}: head r owns the contiguous channels r*hs:(r+1)*hs of the merged "
                    "vector, not every nh-th channel"
                )
            merged = heads.transpose(1, 2).reshape(B, T, C)
            if _close(got.sum(dim=1) + b, c_proj(merged), atol=1e-8):
                return (
                    f"{case}: your contributions add up to the output, but they are not split by "
                    "head: head r's term may use only heads[:, r]"
                )
            err = (got.double() - want).abs().max().item()
            return f"{case}: your contributions are off by up to {err:.3g}"
    return None
