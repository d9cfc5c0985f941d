"""Each appendix-B checker accepts a right answer and rejects the usual wrong ones with a useful hint."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.exercises import NotSolved, appb, check, registered


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_appendix_b_exercises_are_registered():
    ids = [k for k in registered() if k.startswith("B.")]
    assert ids == ["B.1", "B.2", "B.3", "B.4", "B.5"]


# B.1 compute-optimal size -------------------------------------------------------------------


def compute_optimal(compute):
    n = math.sqrt(compute / (6 * 20))  # C = 6 N D with D = 20 N
    return n, 20 * n


def test_compute_optimal_accepts_the_formula_and_matches_chinchilla(capsys):
    assert check("B.1", compute_optimal) is True
    assert "correct" in capsys.readouterr().out
    n, d = compute_optimal(5.76e23)  # Chinchilla: 70B parameters, 1.4T tokens
    assert abs(n / 70e9 - 1) < 0.02 and abs(d / 1.4e12 - 1) < 0.02


def test_compute_optimal_rejects_missing_six_swap_and_equal_tokens():
    no_six = lambda c: (math.sqrt(c / 20), 20 * math.sqrt(c / 20))  # noqa: E731
    assert "6 FLOPs per parameter" in _hint(appb.check_compute_optimal, no_six)
    assert "swapped" in _hint(appb.check_compute_optimal, lambda c: compute_optimal(c)[::-1])
    equal = lambda c: (math.sqrt(c / 6), math.sqrt(c / 6))  # noqa: E731
    assert "D = 20 N" in _hint(appb.check_compute_optimal, equal)
    assert "tuple" in _hint(appb.check_compute_optimal, lambda c: 1.0)


# B.2 training time ---------------------------------------------------------------------------


def hours(n_tokens, flops_per_token, n_gpus, peak_flops, mfu):
    return n_tokens * flops_per_token / (n_gpus * peak_flops * mfu) / 3600


def test_hours_accepts_the_formula(capsys):
    assert check("B.2", hours) is True
    assert "correct" in capsys.readouterr().out


def test_hours_rejects_seconds_peak_and_single_gpu():
    assert "in seconds" in _hint(appb.check_training_hours, lambda *a: hours(*a) * 3600)
    assert "peak" in _hint(appb.check_training_hours, lambda n, f, g, p, m: hours(n, f, g, p, 1.0))
    assert "in parallel" in _hint(
        appb.check_training_hours, lambda n, f, g, p, m: hours(n, f, 1, p, m)
    )


# B.3 bfloat16 rounding -----------------------------------------------------------------------


def to_bf16(x):
    bits = x.view(torch.int32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return rounded.view(torch.float32)


def test_bf16_accepts_round_to_nearest_even_and_torch(capsys):
    assert check("B.3", to_bf16) is True
    assert "correct" in capsys.readouterr().out
    assert _hint(appb.check_to_bfloat16, lambda x: x.to(torch.bfloat16).float()) is None


def test_bf16_rejects_truncation_half_up_and_dtype():
    truncate = lambda x: (x.view(torch.int32) & -65536).view(torch.float32)  # noqa: E731
    assert "truncated" in _hint(appb.check_to_bfloat16, truncate)
    half_up = lambda x: ((x.view(torch.int32) + 0x8000) & -65536).view(torch.float32)  # noqa: E731
    assert "EVEN" in _hint(appb.check_to_bfloat16, half_up)
    assert "float32" in _hint(appb.check_to_bfloat16, lambda x: x.to(torch.bfloat16))


# B.4 gradient accumulation -------------------------------------------------------------------


def accumulate(model, x, y, k, *, scale=True, zero_between=False):
    total = 0.0
    for xb, yb in zip(x.chunk(k), y.chunk(k), strict=True):
        if zero_between:
            model.zero_grad()
        _, loss = model(xb, yb)
        (loss / k if scale else loss).backward()
        total += loss.item() / k
    return total


def test_accumulate_accepts_scaled_micro_batches_and_gptlab(capsys):
    assert check("B.4", accumulate) is True
    assert "correct" in capsys.readouterr().out

    from gptlab.train import accumulate_gradients

    def with_gptlab(model, x, y, k):
        batches = list(zip(x.chunk(k), y.chunk(k), strict=True))
        return accumulate_gradients(model, batches).item()

    assert _hint(appb.check_accumulate, with_gptlab) is None


def test_accumulate_rejects_missing_scale_zeroing_and_wrong_loss():
    unscaled = lambda m, x, y, k: accumulate(m, x, y, k, scale=False)  # noqa: E731
    assert "times too large" in _hint(appb.check_accumulate, unscaled)
    zeroing = lambda m, x, y, k: accumulate(m, x, y, k, zero_between=True)  # noqa: E731
    assert "last micro-batch" in _hint(appb.check_accumulate, zeroing)
    summed = lambda m, x, y, k: accumulate(m, x, y, k) * k  # noqa: E731
    assert "mean loss" in _hint(appb.check_accumulate, summed)


# B.5 accumulation steps ----------------------------------------------------------------------


def steps(tokens, T, B, W):
    per_micro_step = T * B * W
    if tokens % per_micro_step:
        raise ValueError(f"{tokens} is not a multiple of {per_micro_step}")
    return tokens // per_micro_step


def test_steps_accepts_the_formula(capsys):
    assert check("B.5", steps) is True
    assert "correct" in capsys.readouterr().out
    assert steps(524288, 1024, 16, 8) == 4


def test_steps_rejects_missing_world_size_and_no_error():
    assert "world_size" in _hint(appb.check_grad_accum_steps, lambda t, T, B, W: steps(t, T, B, 1))
    assert "raise ValueError" in _hint(
        appb.check_grad_accum_steps, lambda t, T, B, W: t // (T * B * W)
    )
    assert "must return an int" in _hint(
        appb.check_grad_accum_steps, lambda t, T, B, W: t / (T * B * W)
    )


@pytest.mark.parametrize("exercise_id", ["B.1", "B.2", "B.3", "B.4", "B.5"])
def test_stubs_report_not_solved(exercise_id, capsys):
    def stub(*args):
        raise NotImplementedError

    assert check(exercise_id, stub) is False
    assert "not solved yet" in capsys.readouterr().out
