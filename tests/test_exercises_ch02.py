"""Each chapter-2 checker accepts a right answer and rejects the usual wrong ones with a useful hint.

Exercises 2.1, 2.2, 2.3 and 2.5 were rewritten (issue 12 §3): they used to ask for code the
chapter had just shown (a stable softmax, a causal mask, single-head attention, the head split).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptlab.exercises import NotSolved, ch02, check, registered


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_2_exercises_are_registered():
    ids = [k for k in registered() if k.startswith("2.")]
    assert ids == ["2.1", "2.2", "2.3", "2.4", "2.5"]


def test_stubs_print_not_solved(capsys):
    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("2.1", "2.2", "2.3", "2.4", "2.5"):
        assert check(exercise_id, stub) is False
        assert "not solved yet" in capsys.readouterr().out


# 2.1 the softmax's backward pass --------------------------------------------------------------


def softmax_backward(z, grad_p):
    p = torch.softmax(z, dim=-1)
    return p * (grad_p - (p * grad_p).sum(dim=-1, keepdim=True))


def test_backward_accepts_the_derived_formula_and_autograd(capsys):
    def by_autograd(z, grad_p):
        with torch.enable_grad():
            z = z.clone().requires_grad_(True)
            torch.softmax(z, dim=-1).backward(grad_p)
        return z.grad

    assert check("2.1", softmax_backward) is True
    assert "correct" in capsys.readouterr().out
    assert _hint(ch02.check_softmax_backward, by_autograd) is None


def _with_softmax(softmax):
    def backward(z, g):
        p = softmax(z)
        return p * (g - (p * g).sum(dim=-1, keepdim=True))

    return backward


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda z, g: torch.softmax(z, -1) * g, "only the diagonal of J"),
        (lambda z, g: (p := torch.softmax(z, -1)) * (1 - p) * g, "diagonal entries p_i (1 - p_i)"),
        (lambda z, g: g - (torch.softmax(z, -1) * g).sum(-1, keepdim=True), "multiplied by p_i"),
        (
            lambda z, g: (p := torch.softmax(z, -1)) * (g + (p * g).sum(-1, keepdim=True)),
            "check the sign",
        ),
        (lambda z, g: z * (g - (z * g).sum(-1, keepdim=True)), "not to the scores z"),
        (
            lambda z, g: (p := torch.softmax(z, -1)) * (g - (p * g).sum(-1)),
            "keepdim=True",
        ),
    ],
)
def test_backward_rejects_wrong_derivations_with_a_hint_that_names_them(wrong, hint):
    assert hint in _hint(ch02.check_softmax_backward, wrong)


@pytest.mark.parametrize(
    ("softmax", "hint"),
    [
        (lambda x: (e := torch.exp(x - x.max())) / e.sum(-1, keepdim=True), "whole tensor"),
        (
            lambda x: (
                (e := torch.exp(x - x.min(-1, keepdim=True).values)) / e.sum(-1, keepdim=True)
            ),
            "row MINIMUM",
        ),
        (lambda x: torch.exp(x) / torch.exp(x).sum(-1, keepdim=True), "overflows"),
    ],
)
def test_backward_keeps_the_stable_softmax_hardening(softmax, hint):
    """The former exercise 2.1's cases live on: an unstable softmax inside the backward pass gives
    nan on [[1000, 1001, 1002], [-1000, -1001, -1002]] or on a masked row, and gets the hint that
    names the shift."""
    rows = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    masked = torch.tensor([[0.5, float("-inf"), 1.5, float("-inf")]])
    assert not (torch.isfinite(softmax(rows)).all() and torch.isfinite(softmax(masked)).all())
    assert hint in _hint(ch02.check_softmax_backward, _with_softmax(softmax))


def test_backward_rejects_non_callable():
    assert "pass your function itself" in _hint(ch02.check_softmax_backward, torch.zeros(3))


# 2.2 a causal mask for a left-padded batch -----------------------------------------------------


def padded_causal_mask(lengths, T):
    pos = torch.arange(T)
    causal = pos[None, :] <= pos[:, None]  # (T, T)
    real_key = pos[None, :] >= (T - lengths)[:, None]  # (B, T)
    return causal & (real_key[:, None, :] | torch.eye(T, dtype=torch.bool))


def test_padded_mask_accepts_a_mask_that_keeps_pad_rows_alive():
    assert _hint(ch02.check_padded_causal_mask, padded_causal_mask) is None


def test_padded_mask_is_what_attention_needs():
    """With the accepted mask, attention over a padded batch gives each sequence's outputs at its
    real positions, with no nan anywhere (the property the exercise asks the reader to check)."""
    gen = torch.Generator().manual_seed(0)
    lengths, T = torch.tensor([2, 4]), 4
    q, k, v = (torch.randn(2, T, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=padded_causal_mask(lengths, T))
    assert torch.isfinite(out).all()
    alone = F.scaled_dot_product_attention(q[:1, 2:], k[:1, 2:], v[:1, 2:], is_causal=True)
    torch.testing.assert_close(out[:1, 2:], alone)


def test_padded_mask_rejects_common_mistakes():
    checker = ch02.check_padded_causal_mask
    causal_only = lambda lengths, T: torch.ones(len(lengths), T, T, dtype=torch.bool).tril()  # noqa: E731
    assert "pad tokens on their left" in _hint(checker, causal_only)

    def right_padded(lengths, T):
        pos = torch.arange(T)
        causal = pos[None, :] <= pos[:, None]
        return causal & (pos[None, None, :] < lengths[:, None, None]) | torch.eye(
            T, dtype=torch.bool
        )

    assert "LEFT-padded" in _hint(checker, right_padded)

    def pad_rows_empty(lengths, T):
        pos = torch.arange(T)
        return (pos[None, :] <= pos[:, None]) & (pos[None, None, :] >= (T - lengths)[:, None, None])

    assert "attend to nothing" in _hint(checker, pad_rows_empty)

    def no_causal(lengths, T):
        pos = torch.arange(T)
        real = pos[None, None, :] >= (T - lengths)[:, None, None]
        return real.expand(len(lengths), T, T) | torch.eye(T, dtype=torch.bool)

    assert "forgot the causal mask" in _hint(checker, no_causal)
    transposed = lambda lengths, T: padded_causal_mask(lengths, T).transpose(-2, -1)  # noqa: E731
    assert "transposed" in _hint(checker, transposed)
    assert "dtype" in _hint(checker, lambda lengths, T: padded_causal_mask(lengths, T).float())
    assert "shape" in _hint(checker, lambda lengths, T: padded_causal_mask(lengths, T)[:, None])


# 2.3 grouped-query attention -------------------------------------------------------------------


def gqa(q, k, v, *, expand="interleave", scale=None, causal=True):
    n_rep = q.size(1) // k.size(1)
    if expand == "interleave":
        k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
    elif expand == "tile":
        k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else q.size(-1) ** -0.5)
    if causal:
        T = q.size(-2)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_gqa_accepts_repeat_interleave_and_torch_enable_gqa():
    assert _hint(ch02.check_grouped_query_attention, gqa) is None
    fused = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    assert _hint(ch02.check_grouped_query_attention, fused) is None


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"expand": "tile"}, "repeat_interleave"),
        ({"expand": "none"}, "does not broadcast"),
        ({"causal": False}, "causal mask"),
        ({"scale": 1 / 8}, "not 1/hs"),
        ({"scale": 1.0}, "did not scale"),
    ],
)
def test_gqa_rejects_common_mistakes(kwargs, hint):
    assert hint in _hint(ch02.check_grouped_query_attention, lambda q, k, v: gqa(q, k, v, **kwargs))


# 2.4 attention cost -------------------------------------------------------------------------


def test_cost_accepts_the_formula():
    def cost(T, d_model, n_head, bytes_per_element):
        return 4 * T * T * d_model, n_head * T * T * bytes_per_element

    assert _hint(ch02.check_attention_cost, cost) is None


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda T, d, nh, b: (2 * T * T * d, nh * T * T * b), "half the answer"),
        (lambda T, d, nh, b: (4 * T * T * (d // nh), nh * T * T * b), "one head"),
        (lambda T, d, nh, b: (4 * T * T * d, T * T * b), "heads stores"),
        (lambda T, d, nh, b: (4 * T * T * d, nh * T * T), "bytes_per_element"),
        (lambda T, d, nh, b: 4 * T * T * d, "tuple"),
        (lambda T, d, nh, b: (4 * T * d * d, nh * T * T * b), "expected"),
    ],
)
def test_cost_rejects_common_mistakes(wrong, hint):
    assert hint in ch02.check_attention_cost(wrong)


# 2.5 what each head adds to the output ----------------------------------------------------------


def head_contributions(heads, c_proj):
    B, nh, T, hs = heads.shape
    W = c_proj.weight.view(c_proj.out_features, nh, hs)  # (C, nh, hs): columns cut by head
    return torch.einsum("bhtd,chd->bhtc", heads, W)


def test_contributions_accept_a_per_head_loop_and_add_up_to_the_output():
    def loop(heads, c_proj):
        hs = heads.size(-1)
        W = c_proj.weight
        return torch.stack(
            [heads[:, r] @ W[:, r * hs : (r + 1) * hs].T for r in range(heads.size(1))], dim=1
        )

    assert _hint(ch02.check_head_contributions, head_contributions) is None
    assert _hint(ch02.check_head_contributions, loop) is None
    heads, c_proj = torch.randn(1, 3, 4, 2, dtype=torch.float64), nn.Linear(6, 6).double()
    merged = heads.transpose(1, 2).reshape(1, 4, 6)
    with torch.no_grad():
        summed = head_contributions(heads, c_proj).sum(dim=1) + c_proj.bias
        torch.testing.assert_close(summed, c_proj(merged))


def test_contributions_reject_common_mistakes():
    checker = ch02.check_head_contributions

    def rows(heads, c_proj):
        B, nh, T, hs = heads.shape
        return torch.einsum("bhtd,hdc->bhtc", heads, c_proj.weight.view(nh, hs, -1))

    assert "COLUMNS" in _hint(checker, rows)
    with_bias = lambda h, c: head_contributions(h, c) + c.bias  # noqa: E731
    assert "counts it" in _hint(checker, with_bias)
    shared_bias = lambda h, c: head_contributions(h, c) + c.bias / h.size(1)  # noqa: E731
    assert "leave the bias out" in _hint(checker, shared_bias)

    def interleaved(heads, c_proj):
        B, nh, T, hs = heads.shape
        return torch.einsum("bhtd,cdh->bhtc", heads, c_proj.weight.view(-1, hs, nh))

    assert "contiguous channels" in _hint(checker, interleaved)

    def whole_output_in_head_0(heads, c_proj):
        out = torch.zeros(*heads.shape[:3], c_proj.out_features, dtype=heads.dtype)
        out[:, 0] = head_contributions(heads, c_proj).sum(dim=1)
        return out

    assert "not split by head" in _hint(checker, whole_output_in_head_0)
    assert "shape" in _hint(checker, lambda h, c: head_contributions(h, c).transpose(1, 2))
