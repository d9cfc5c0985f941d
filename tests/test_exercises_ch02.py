"""Each chapter-2 checker accepts a right answer and rejects the usual wrong ones with a useful hint."""

from __future__ import annotations

import math

import pytest
import torch

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


# 2.1 stable softmax -------------------------------------------------------------------------


def stable_softmax(x):
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def naive_softmax(x):
    e = torch.exp(x)
    return e / e.sum(dim=-1, keepdim=True)


def test_softmax_accepts_stable_version(capsys):
    assert check("2.1", stable_softmax) is True
    assert "correct" in capsys.readouterr().out


def test_softmax_rejects_naive_version_with_overflow_hint():
    assert "Subtract the row maximum" in _hint(ch02.check_stable_softmax, naive_softmax)


def test_softmax_rejects_whole_tensor_max_with_a_hint_that_names_it(capsys):
    """Subtracting x.max() passed the old checker, whose large and very negative rows came in
    separate tensors; on [[1000, 1001, 1002], [-1000, -1001, -1002]] it gives nan (issue 12 §3)."""

    def whole_tensor_max(x):
        e = torch.exp(x - x.max())
        return e / e.sum(dim=-1, keepdim=True)

    rows = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    assert torch.isnan(whole_tensor_max(rows)[1]).all()  # the failure the checker must catch
    assert check("2.1", whole_tensor_max) is False
    out = capsys.readouterr().out
    assert "not solved yet" in out and "maximum of the whole tensor" in out
    assert "x.max(dim=-1, keepdim=True).values" in out
    torch_max = lambda x: naive_softmax(x - torch.max(x))  # noqa: E731  the same mistake
    assert "whole tensor" in _hint(ch02.check_stable_softmax, torch_max)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda x: naive_softmax(x - x.min(dim=-1, keepdim=True).values), "not the minimum"),
        (lambda x: naive_softmax(x - x.max(dim=0, keepdim=True).values), "one per column"),
        (lambda x: naive_softmax(x - x.max(dim=-1).values), "keepdim=True"),
        (
            lambda x: (e := torch.exp(x - x.max(dim=-1, keepdim=True).values)) / e.sum(dim=-1),
            "keepdim=True",
        ),
    ],
)
def test_softmax_rejects_other_wrong_shifts_with_a_hint_that_names_them(wrong, hint):
    """The min shift and the per-column max used to get the generic "values differ" hint, and a
    missing keepdim a bare RuntimeError."""
    assert hint in _hint(ch02.check_stable_softmax, wrong)


def test_softmax_rejects_wrong_axis_and_missing_keepdim():
    wrong_axis = lambda x: torch.softmax(x, dim=0)  # noqa: E731
    assert _hint(ch02.check_stable_softmax, wrong_axis) is not None

    def no_normalisation(x):
        return torch.exp(x - x.max(dim=-1, keepdim=True).values)

    assert "sum to" in _hint(ch02.check_stable_softmax, no_normalisation)


def test_softmax_rejects_non_callable_and_stub(capsys):
    assert "pass your function itself" in _hint(ch02.check_stable_softmax, torch.zeros(3))

    def stub(x):
        raise NotImplementedError

    assert check("2.1", stub) is False
    assert "not solved yet" in capsys.readouterr().out


# 2.2 causal mask ----------------------------------------------------------------------------


def test_mask_accepts_lower_triangle():
    assert _hint(ch02.check_causal_mask, lambda T: torch.ones(T, T).tril().bool()) is None


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "transposed"),
        (lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(), "inverted"),
        (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "attend to itself"),
        (lambda T: torch.ones(T, T).tril(), "bool"),
        (lambda T: torch.ones(T, T, dtype=torch.bool), "lower-triangular"),
        (lambda T: torch.ones(T, T + 1, dtype=torch.bool).tril(), "shape"),
    ],
)
def test_mask_rejects_common_mistakes(wrong, hint):
    assert hint in _hint(ch02.check_causal_mask, wrong)


# 2.3 single-head causal attention ----------------------------------------------------------


def causal_attention(q, k, v, scale=None, causal=True):
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.size(-1)))
    if causal:
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_attention_accepts_explicit_formula():
    assert _hint(ch02.check_causal_attention, causal_attention) is None


def test_attention_rejects_missing_scale_missing_mask_and_wrong_scale():
    checker = ch02.check_causal_attention
    assert "did not scale" in checker(lambda q, k, v: causal_attention(q, k, v, scale=1.0))
    assert "not by d_k" in checker(lambda q, k, v: causal_attention(q, k, v, scale=1 / q.size(-1)))
    assert "causal mask" in checker(lambda q, k, v: causal_attention(q, k, v, causal=False))
    value_scale = lambda q, k, v: causal_attention(q, k, v, scale=1 / math.sqrt(v.size(-1)))  # noqa: E731
    assert "size of the keys" in checker(value_scale)


def test_attention_rejects_softmax_over_wrong_axis():
    def wrong(q, k, v):
        T = q.size(-2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        return torch.nan_to_num(torch.softmax(scores, dim=-2)) @ v

    assert "differs" in ch02.check_causal_attention(wrong)


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


# 2.5 split heads ----------------------------------------------------------------------------


def test_split_accepts_view_transpose_and_einops_style_permute():
    def split(x, n_head):
        B, T, C = x.shape
        return x.view(B, T, n_head, C // n_head).transpose(1, 2)

    def split_permute(x, n_head):
        B, T, C = x.shape
        return x.reshape(B, T, n_head, -1).permute(0, 2, 1, 3)

    assert _hint(ch02.check_split_heads, split) is None
    assert _hint(ch02.check_split_heads, split_permute) is None


def test_split_rejects_plain_reshape_and_interleaved_heads_and_wrong_shape():
    plain = lambda x, nh: x.reshape(x.size(0), nh, x.size(1), -1)  # noqa: E731
    assert "right shape, wrong contents" in ch02.check_split_heads(plain)

    def interleaved(x, nh):
        B, T, C = x.shape
        return x.view(B, T, C // nh, nh).permute(0, 3, 1, 2)

    assert "contiguous channels" in ch02.check_split_heads(interleaved)
    no_transpose = lambda x, nh: x.view(x.size(0), x.size(1), nh, -1)  # noqa: E731
    assert "shape" in _hint(ch02.check_split_heads, no_transpose)
