"""Each chapter-5 checker accepts a right answer and rejects the usual wrong ones with a useful hint."""

from __future__ import annotations

import pytest
import torch

from gptlab.exercises import NotSolved, ch05, check, registered
from gptlab.model import GPT, GPTConfig
from gptlab.sampling import generate


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_5_exercises_are_registered():
    ids = [k for k in registered() if k.startswith("5.")]
    assert ids == ["5.1", "5.2", "5.3", "5.4", "5.5"]


def test_checkers_reject_non_callables_and_stubs(capsys):
    for checker in (
        ch05.check_temperature_softmax,
        ch05.check_top_k,
        ch05.check_top_p,
        ch05.check_repetition_penalty,
        ch05.check_generation_flops,
    ):
        assert "pass your function itself" in _hint(checker, torch.zeros(3))

    def stub(*args):
        raise NotImplementedError

    assert check("5.1", stub) is False
    assert "NotImplementedError" in capsys.readouterr().out


# 5.1 temperature softmax ---------------------------------------------------------------------


def test_temperature_softmax_accepts_right_answers(capsys):
    assert check("5.1", lambda z, T: torch.softmax(z / T, dim=-1)) is True
    assert "correct" in capsys.readouterr().out

    def by_hand(z, T):  # the stable formula written out
        s = z / T
        e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
        return e / e.sum(dim=-1, keepdim=True)

    assert _hint(ch05.check_temperature_softmax, by_hand) is None


def test_temperature_softmax_rejects_common_mistakes():
    def naive(z, T):
        e = torch.exp(z / T)
        return e / e.sum(dim=-1, keepdim=True)

    assert "subtract the row maximum" in _hint(ch05.check_temperature_softmax, naive)
    times = _hint(ch05.check_temperature_softmax, lambda z, T: torch.softmax(z * T, dim=-1))
    assert "divide the logits" in times
    after = _hint(ch05.check_temperature_softmax, lambda z, T: torch.softmax(z, dim=-1) / T)
    assert "BEFORE the softmax" in after
    dim0 = _hint(ch05.check_temperature_softmax, lambda z, T: torch.softmax(z / T, dim=0))
    assert "last axis" in dim0
    assert "shape" in _hint(
        ch05.check_temperature_softmax, lambda z, T: torch.softmax(z / T, -1)[0]
    )


# 5.2 top-k -------------------------------------------------------------------------------------


def test_top_k_accepts_right_answers():
    def by_hand(z, k):
        kth = torch.topk(z, k, dim=-1).values[:, -1:]
        return torch.where(z < kth, torch.full_like(z, float("-inf")), z)

    assert _hint(ch05.check_top_k, by_hand) is None
    assert _hint(ch05.check_top_k, lambda z, k: ch05.top_k_filter(z, k)) is None


def test_top_k_rejects_common_mistakes():
    def zeros(z, k):
        kth = torch.topk(z, k, dim=-1).values[:, -1:]
        return torch.where(z < kth, torch.zeros_like(z), z)

    assert "-inf, not 0" in _hint(ch05.check_top_k, zeros)

    def one_too_many(z, k):
        kth = torch.sort(z, dim=-1, descending=True).values[:, min(k, z.shape[-1] - 1) : k + 1]
        return torch.where(z < kth, torch.full_like(z, float("-inf")), z)

    assert "exactly k" in _hint(ch05.check_top_k, one_too_many)

    def smallest(z, k):
        kth = torch.topk(-z, k, dim=-1).values[:, -1:]
        return torch.where(-z < kth, torch.full_like(z, float("-inf")), z)

    assert "LARGEST" in _hint(ch05.check_top_k, smallest)

    def probabilities(z, k):
        return torch.softmax(ch05.top_k_filter(z, k), dim=-1)

    assert "not probabilities" in _hint(ch05.check_top_k, probabilities)


# 5.3 top-p -------------------------------------------------------------------------------------


def _nucleus(z, p, *, crossing=True, back_to_vocab=True):
    probs = torch.softmax(z, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    cum = torch.cumsum(sorted_probs, dim=-1)
    keep = (cum - sorted_probs < p) if crossing else (cum <= p)
    if back_to_vocab:
        keep = torch.zeros_like(keep).scatter(-1, order, keep)
    return z.masked_fill(~keep, float("-inf"))


def test_top_p_accepts_right_answers():
    assert _hint(ch05.check_top_p, _nucleus) is None
    assert _hint(ch05.check_top_p, lambda z, p: ch05.top_p_filter(z, p)) is None


def test_top_p_rejects_common_mistakes():
    strict = _hint(ch05.check_top_p, lambda z, p: _nucleus(z, p, crossing=False))
    assert "crosses p" in strict or "every token" in strict
    unsorted = _hint(ch05.check_top_p, lambda z, p: _nucleus(z, p, back_to_vocab=False))
    assert "vocabulary order" in unsorted
    assert "-inf, not 0" in _hint(
        ch05.check_top_p, lambda z, p: torch.nan_to_num(_nucleus(z, p), neginf=0.0)
    )
    assert "unchanged" in _hint(ch05.check_top_p, lambda z, p: _nucleus(z, p) * 2)
    assert "nucleus has" in _hint(ch05.check_top_p, lambda z, p: ch05.top_k_filter(z, 2))


# 5.4 repetition penalty ---------------------------------------------------------------------------


def test_repetition_penalty_accepts_right_answers():
    def by_hand(z, previous, penalty):
        z = z.clone()
        for b in range(z.shape[0]):
            for i in set(previous[b].tolist()):
                z[b, i] = z[b, i] / penalty if z[b, i] > 0 else z[b, i] * penalty
        return z

    assert _hint(ch05.check_repetition_penalty, by_hand) is None
    assert _hint(ch05.check_repetition_penalty, ch05.apply_repetition_penalty) is None


def test_repetition_penalty_rejects_common_mistakes():
    def divide_all(z, previous, penalty):
        return z.scatter(1, previous, z.gather(1, previous) / penalty)

    assert "NEGATIVE" in _hint(ch05.check_repetition_penalty, divide_all)

    def every_occurrence(z, previous, penalty):
        z = z.clone()
        for b in range(z.shape[0]):
            for i in previous[b].tolist():  # a repeated token is penalised again and again
                z[b, i] = z[b, i] / penalty if z[b, i] > 0 else z[b, i] * penalty
        return z

    assert "once per distinct token" in _hint(ch05.check_repetition_penalty, every_occurrence)
    unchanged = _hint(ch05.check_repetition_penalty, lambda z, previous, penalty: z)
    assert "unchanged" in unchanged

    def whole_batch(z, previous, penalty):  # mixes up rows: row 0 penalised with row 1's tokens
        return ch05.apply_repetition_penalty(z, previous.flatten()[None].expand(2, -1), penalty)

    assert "same row" in _hint(ch05.check_repetition_penalty, whole_batch)


# 5.5 generation FLOPs ---------------------------------------------------------------------------


def test_generation_flops_formula_matches_positions_the_model_really_runs():
    """Count the token positions gptlab.generate feeds through the model, cached and not."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=32, n_layer=1, n_head=1, n_embd=8))
    seen = []
    model.transformer.wte.register_forward_hook(lambda m, inp, out: seen.append(inp[0].numel()))
    for P, N in ((1, 1), (4, 7), (9, 20)):
        for use_cache in (False, True):
            seen.clear()
            generate(
                model, torch.zeros(1, P, dtype=torch.long), N, temperature=0, use_cache=use_cache
            )
            assert sum(seen) == ch05.processed_positions(P, N, use_cache)


def test_generation_flops_accepts_right_answer_and_rejects_mistakes(capsys):
    def right(n_params, P, N, use_cache):
        if N == 0:
            return 0
        positions = P + N - 1 if use_cache else sum(range(P, P + N))
        return 2 * n_params * positions

    assert check("5.5", right) is True
    assert "correct" in capsys.readouterr().out

    def half(n_params, P, N, use_cache):
        return right(n_params, P, N, use_cache) // 2

    assert "2 FLOPs" in _hint(ch05.check_generation_flops, half)

    def cache_feeds_last(n_params, P, N, use_cache):
        return 2 * n_params * (P + N) if use_cache else right(n_params, P, N, use_cache)

    assert "N - 1" in _hint(ch05.check_generation_flops, cache_feeds_last)

    def no_prefill(n_params, P, N, use_cache):
        return 2 * n_params * N if use_cache else right(n_params, P, N, use_cache)

    assert "prefill" in _hint(ch05.check_generation_flops, no_prefill)

    def off_by_one(n_params, P, N, use_cache):
        return 2 * n_params * N * (P + N) if not use_cache else right(n_params, P, N, use_cache)

    assert "BEFORE it" in _hint(ch05.check_generation_flops, off_by_one)
    assert "int" in _hint(ch05.check_generation_flops, lambda *a: "many")


def test_flops_helpers_validate_input():
    with pytest.raises(ValueError, match="prompt_len must be >= 1"):
        ch05.processed_positions(0, 3, True)
    with pytest.raises(ValueError, match="new_tokens must be an int >= 0"):
        ch05.processed_positions(3, -1, False)
    with pytest.raises(ValueError, match="n_params must be a positive int"):
        ch05.generation_flops(0, 3, 3, True)
