"""Each chapter-5 checker accepts a right answer and rejects the usual wrong ones with a useful hint.

Exercises 5.1-5.4 were rewritten (issue 12 §3): they used to ask for the temperature softmax, the
top-k and top-p filters and the repetition penalty the chapter had just written out.
"""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.exercises import NotSolved, ch05, check, registered
from gptlab.model import GPT, GPTConfig
from gptlab.sampling import apply_repetition_penalty, generate


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
        ch05.check_temperature_for_entropy,
        ch05.check_sampler_test,
        ch05.check_minimum_penalty,
        ch05.check_generation_flops,
    ):
        assert "pass your function itself" in _hint(checker, torch.zeros(3))

    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("5.1", "5.3", "5.4", "5.5"):
        assert check(exercise_id, stub) is False
        assert "NotImplementedError" in capsys.readouterr().out


# 5.1 the temperature for a given entropy ---------------------------------------------------------


def temperature_for(logits, bits, *, log=torch.log2, invert=False, safe=True):
    """Bisection on log τ: the entropy grows with τ from log2(#maxima) to log2(#finite logits)."""
    n = int(torch.isfinite(logits).sum())
    if not 0 < bits < math.log2(n):
        raise ValueError(f"{bits} bits is out of reach for {n} finite logits")

    def entropy(tau):
        p = torch.softmax(logits / tau, dim=-1)
        terms = torch.special.xlogy(p, p) if safe else p * torch.log(p)
        return float(-terms.sum() / math.log(2) * (math.log(2) if log is torch.log else 1))

    lo, hi = 1e-4, 1.0
    while entropy(hi) < bits:
        hi *= 2
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if entropy(mid) < bits else (lo, mid)
    return 1 / hi if invert else hi


def test_temperature_for_entropy_accepts_bisection(capsys):
    assert check("5.1", temperature_for) is True
    assert "correct" in capsys.readouterr().out


def test_entropy_bits_matches_the_definition():
    z = torch.tensor([1.0, 0.0, float("-inf")], dtype=torch.float64)
    p = torch.softmax(z, dim=-1)[:2]
    assert math.isclose(ch05.entropy_bits(z), float(-(p * torch.log2(p)).sum()), rel_tol=1e-12)
    assert math.isclose(ch05.entropy_bits(torch.zeros(8), 0.3), 3.0, rel_tol=1e-12)
    with pytest.raises(ValueError, match="tau must be a number > 0"):
        ch05.entropy_bits(z, 0.0)


def test_temperature_for_entropy_rejects_common_mistakes():
    checker = ch05.check_temperature_for_entropy
    assert "nats" in _hint(checker, lambda z, b: temperature_for(z, b, log=torch.log))
    assert "1/τ" in _hint(checker, lambda z, b: temperature_for(z, b, invert=True))

    def no_xlogy(z, bits):
        try:
            return temperature_for(z, bits, safe=False)
        except ValueError:
            raise
        except Exception:  # a reader's loop that never converges on nan
            return float("nan")

    assert "xlogy" in _hint(checker, no_xlogy)

    def never_raises(z, bits):
        try:
            return temperature_for(z, bits)
        except ValueError:
            return 1e6

    assert "Raise ValueError" in _hint(checker, never_raises)
    assert "bisect" in _hint(checker, lambda z, b: 1.0)
    assert "finite number > 0" in _hint(checker, lambda z, b: -1.0)
    assert "float" in _hint(checker, lambda z, b: "hot")


# 5.2 where greedy decoding misses the most likely text --------------------------------------------


GOOD_FIRST = torch.tensor([0.5, 0.4, 0.1])
GOOD_TRANSITION = torch.tensor([[0.4, 0.3, 0.3], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])


def test_counterexample_accepts_a_flat_favourite_and_a_confident_runner_up(capsys):
    assert check("5.2", (GOOD_FIRST, GOOD_TRANSITION)) is True
    assert "correct" in capsys.readouterr().out


def test_counterexample_rejects_common_mistakes():
    checker = ch05.check_greedy_counterexample
    assert "tuple" in _hint(checker, GOOD_FIRST)
    assert "shape" in _hint(checker, (GOOD_FIRST, GOOD_TRANSITION[:2]))
    assert "summing to 1" in _hint(checker, (GOOD_FIRST, GOOD_TRANSITION * 2))
    tie = torch.tensor([0.45, 0.45, 0.1])
    assert "unique" in _hint(checker, (tie, GOOD_TRANSITION))
    confident_favourite = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.2, 0.3, 0.5]])
    assert "IS the most likely" in _hint(checker, (GOOD_FIRST, confident_favourite))
    third = torch.tensor([0.4, 0.35, 0.25])
    transition = torch.tensor([[0.4, 0.3, 0.3], [0.4, 0.3, 0.3], [1.0, 0.0, 0.0]])
    assert "beam search with 2 beams" in _hint(checker, (third, transition))


# 5.3 test that a sampler draws from its distribution ----------------------------------------------


def samples_from(sampler, probs, *, n=200_000, tolerance=None):
    """Accept when every token's frequency lies within 5 standard errors of its probability."""
    counts = torch.bincount(
        sampler(probs, n, torch.Generator().manual_seed(0)), minlength=len(probs)
    )
    freq = counts.double() / n
    se = (probs * (1 - probs) / n).sqrt()
    limit = tolerance if tolerance is not None else 5 * se
    return bool(((freq - probs).abs() <= limit).all())


def test_sampler_test_accepts_a_frequency_test_with_enough_samples(capsys):
    assert check("5.3", samples_from) is True
    assert "correct" in capsys.readouterr().out


def test_sampler_test_rejects_too_few_samples_too_tight_and_argmax_only():
    checker = ch05.check_sampler_test
    few = lambda s, p: samples_from(s, p, n=300, tolerance=0.05)  # noqa: E731
    assert "least likely token" in _hint(checker, few)
    assert "rejected torch.multinomial" in _hint(
        checker, lambda s, p: samples_from(s, p, tolerance=0)
    )

    def top_token_only(sampler, probs):
        ids = sampler(probs, 1000, torch.Generator().manual_seed(0))
        return bool(torch.bincount(ids, minlength=len(probs)).argmax() == probs.argmax())

    assert "accepted greedy" in _hint(checker, top_token_only)
    assert "True or False" in _hint(checker, lambda s, p: "yes")


# 5.4 the smallest penalty that changes greedy's choice --------------------------------------------


def min_penalty(logits, previous):
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[previous] = True
    if seen.all():
        return math.inf
    s, u = logits[seen].max().item(), logits[~seen].max().item()
    if u >= s:
        return 1.0
    if s > 0:
        return s / u if u > 0 else math.inf
    return u / s if s < 0 else math.inf


def test_minimum_penalty_is_where_gptlabs_penalty_flips_greedy():
    """Just above the threshold greedy picks an unseen token, just below it a seen one."""
    gen = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(200):
        z = torch.randn(12, generator=gen, dtype=torch.float64) * 2
        previous = torch.randint(12, (4,), generator=gen)
        theta = ch05.minimum_penalty(z, previous)
        seen = torch.zeros(12, dtype=torch.bool)
        seen[previous] = True
        for factor, picks_unseen in ((1.0001, True), (0.9999, False)):
            if not math.isfinite(theta) or (theta == 1.0 and not picks_unseen):
                continue
            penalised = apply_repetition_penalty(z[None], previous[None], theta * factor)
            assert bool(~seen[penalised.argmax()]) is picks_unseen
            flips += 1
    assert flips > 100


def test_minimum_penalty_accepts_the_derivation(capsys):
    assert check("5.4", min_penalty) is True
    assert "correct" in capsys.readouterr().out


def test_minimum_penalty_rejects_common_mistakes():
    checker = ch05.check_minimum_penalty

    def runner_up_overall(z, previous):
        s, second = z.topk(2).values.tolist()
        return (
            min_penalty(z, previous) if min_penalty(z, previous) in (1.0, math.inf) else s / second
        )

    def divide_always(z, previous):
        want = min_penalty(z, previous)
        s = z[previous].max().item()
        return 1 / want if s < 0 and math.isfinite(want) and want != 1.0 else want

    def finite_when_impossible(z, previous):
        want = min_penalty(z, previous)
        return want if math.isfinite(want) else 1e9

    def always_ratio(z, previous):
        return abs(z[previous].max().item() / z.topk(2).values[1].item())

    assert "best UNSEEN" in _hint(checker, runner_up_overall)
    assert "MULTIPLIES" in _hint(checker, divide_always)
    assert "math.inf" in _hint(checker, finite_when_impossible)
    penalise_anyway = lambda z, p: 2.0 if min_penalty(z, p) == 1.0 else min_penalty(z, p)  # noqa: E731
    assert "already picks an unseen" in _hint(checker, penalise_anyway)
    assert "expected" in _hint(checker, lambda z, p: min_penalty(z, p) * 1.1)
    assert "float" in _hint(checker, lambda z, p: None)
    assert _hint(checker, always_ratio) is not None


def test_minimum_penalty_validates_input():
    with pytest.raises(ValueError, match="1-D float tensor"):
        ch05.minimum_penalty(torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="token ids"):
        ch05.minimum_penalty(torch.tensor([1.0, 2.0]), torch.tensor([0.0]))


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
