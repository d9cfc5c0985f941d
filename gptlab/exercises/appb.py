"""Checkers for the exercises of appendix B, "Scaling up".

The references are closed-form counts (model size, hours, accumulation steps), PyTorch's own
float32 -> bfloat16 conversion, and the gradient of one big batch computed by autograd; each
checker recognises the usual slips (a forgotten factor 6, a forgotten ``1/k``, peak instead of
achieved speed, a forgotten world size) and names them in its hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from gptlab.exercises import NotSolved, as_number, exercise

__all__ = [
    "check_accumulate",
    "check_compute_optimal",
    "check_grad_accum_steps",
    "check_to_bfloat16",
    "check_training_hours",
]


def _callable(answer: Any, example: str) -> Callable[..., Any]:
    if not callable(answer):
        raise NotSolved(f"pass your function itself, e.g. {example}, not its result")
    return answer


def _rel_close(got: float, want: float, rel: float = 1e-6) -> bool:
    return math.isclose(got, want, rel_tol=rel, abs_tol=0.0)


# -- B.1 compute-optimal size -----------------------------------------------------------------


@exercise("B.1", "a compute-optimal model size")
def check_compute_optimal(compute_optimal: Any) -> str | None:
    """``compute_optimal(compute_flops) -> (n_params, n_tokens)`` with C = 6 N D and D = 20 N."""
    fn = _callable(compute_optimal, "check('B.1', compute_optimal)")
    for compute in (5.76e23, 1e18, 3.14e23):
        call = f"compute_optimal({compute:.3g})"
        got = fn(compute)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return f"{call} must return a tuple (n_params, n_tokens)"
        n, d = (as_number(v, call) for v in got)
        want_n = math.sqrt(compute / 120)
        want_d = 20 * want_n
        if _rel_close(n, want_n, 1e-6) and _rel_close(d, want_d, 1e-6):
            continue
        if _rel_close(n, want_d, 1e-6) and _rel_close(d, want_n, 1e-6):
            return f"{call}: you swapped them; return (n_params, n_tokens), with 20 tokens per parameter"
        if _rel_close(n, math.sqrt(compute / 20), 1e-6):
            return (
                f"{call}: training costs 6 FLOPs per parameter and token, C = 6 N D; "
                "with D = 20 N that gives N = sqrt(C / 120)"
            )
        if _rel_close(n, math.sqrt(compute / 6), 1e-6):
            return f"{call}: use D = 20 N tokens, not D = N: N = sqrt(C / (6 x 20))"
        if _rel_close(n * d * 6, compute, 1e-6):
            return (
                f"{call}: your N and D spend the budget (6 N D = C) but the ratio D / N is "
                f"{d / n:.3g}, not 20"
            )
        return f"{call} = ({n:.4g}, {d:.4g}), expected N = sqrt(C / 120) = {want_n:.4g}, D = 20 N"
    return None


# -- B.2 training time -------------------------------------------------------------------------


@exercise("B.2", "how long will training take?")
def check_training_hours(training_hours: Any) -> str | None:
    """``training_hours(n_tokens, flops_per_token, n_gpus, peak_flops, mfu)`` in hours."""
    fn = _callable(training_hours, "check('B.2', training_hours)")
    cases = (
        (10e9, 854e6, 8, 989e12, 0.4),
        (300e9, 1e12, 1024, 312e12, 0.5),
        (1e6, 6e6, 1, 1e12, 0.1),
    )
    for n_tokens, fpt, gpus, peak, mfu in cases:
        call = f"training_hours({n_tokens:.3g}, {fpt:.3g}, {gpus}, {peak:.3g}, {mfu})"
        got = as_number(fn(n_tokens, fpt, gpus, peak, mfu), call)
        seconds = n_tokens * fpt / (gpus * peak * mfu)
        want = seconds / 3600
        if _rel_close(got, want, 1e-6):
            continue
        if _rel_close(got, seconds):
            return f"{call} = {got:.4g} is in seconds: divide by 3600 for hours"
        if _rel_close(got, want / 24):
            return f"{call} = {got:.4g} is in days: return hours"
        if _rel_close(got, want * mfu):
            return (
                f"{call}: you assumed the GPUs run at their peak; divide by the achieved fraction "
                "mfu as well (at 40% MFU a run takes 2.5 times longer than at peak)"
            )
        if _rel_close(got, want * mfu * mfu):
            return f"{call}: divide by mfu, do not multiply by it"
        if _rel_close(got, want * gpus):
            return f"{call}: the {gpus} GPUs work in parallel: divide by their number"
        return f"{call} = {got:.6g}, expected tokens x FLOPs/token / (GPUs x peak x MFU) / 3600 = {want:.6g}"
    return None


# -- B.3 bfloat16 rounding ---------------------------------------------------------------------


@exercise("B.3", "round float32 to bfloat16 by hand")
def check_to_bfloat16(to_bfloat16: Any) -> str | None:
    """``to_bfloat16(x)``: float32 in, float32 out, equal to ``x.to(torch.bfloat16).float()``."""
    fn = _callable(to_bfloat16, "check('B.3', to_bfloat16)")
    gen = torch.Generator().manual_seed(0)
    bits = torch.tensor(
        [
            0x3F800000,  # 1.0
            0x3F808000,  # 1 + 2^-8: a tie, the kept bit is even -> rounds down
            0x3F818000,  # a tie with an odd kept bit -> rounds up
            0x3F808001,  # just above a tie -> rounds up
            0x3F807FFF,  # just below a tie -> rounds down
            0xBF818000 - 2**32,  # the negative odd tie
            0x00000001,  # the smallest subnormal
            0x7F800000,  # +inf
            0x477FE000,  # 65504, float16's largest value
        ],
        dtype=torch.int64,
    ).to(torch.int32)
    special = bits.view(torch.float32)
    cases = {
        "ties and near-ties": special,
        "random values of many magnitudes": torch.randn(1000, generator=gen)
        * torch.exp2(torch.randint(-30, 30, (1000,), generator=gen).float()),
    }
    for label, x in cases.items():
        got = fn(x.clone())
        if not isinstance(got, torch.Tensor) or got.shape != x.shape:
            return f"return a tensor of the input's shape {tuple(x.shape)}"
        if got.dtype == torch.bfloat16:
            return "return the rounded values as float32 (the checker compares bit patterns)"
        if got.dtype != torch.float32:
            return f"return float32 values, got {got.dtype}"
        want = x.to(torch.bfloat16).float()
        if torch.equal(got.view(torch.int32), want.view(torch.int32)):
            continue
        truncated = (x.view(torch.int32) & -65536).view(torch.float32)
        if torch.equal(got.view(torch.int32), truncated.view(torch.int32)):
            return (
                "you truncated the low 16 bits: that rounds towards zero. Add a rounding bias "
                "before masking: 0x7FFF plus the lowest kept bit ((bits >> 16) & 1)"
            )
        half_up = ((x.view(torch.int32) + 0x8000) & -65536).view(torch.float32)
        if torch.equal(got.view(torch.int32), half_up.view(torch.int32)):
            return (
                "ties must round to the nearest EVEN value: add 0x7FFF + ((bits >> 16) & 1), "
                "not 0x8000"
            )
        wrong = (got.view(torch.int32) != want.view(torch.int32)).nonzero().flatten()[:3]
        return (
            f"on {label} your values differ from x.to(torch.bfloat16), e.g. at {x[wrong].tolist()}: "
            f"got {got[wrong].tolist()}, expected {want[wrong].tolist()}"
        )
    return None


# -- B.4 gradient accumulation -----------------------------------------------------------------


def _tiny_gpt(seed: int) -> torch.nn.Module:
    from gptlab.model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))


def _reference_grads(
    seed: int, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0
) -> tuple[dict[str, torch.Tensor], float]:
    model = _tiny_gpt(seed)
    _, loss = model(x, y)
    (loss * scale).backward()
    return {n: p.grad for n, p in model.named_parameters()}, loss.item()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-4) for n in b)


@exercise("B.4", "gradient accumulation")
def check_accumulate(accumulate: Any) -> str | None:
    """``accumulate(model, x, y, k)`` leaves the full-batch gradient in ``.grad``, returns the loss."""
    fn = _callable(accumulate, "check('B.4', accumulate)")
    gen = torch.Generator().manual_seed(0)
    for k in (4, 2):
        x = torch.randint(11, (8, 8), generator=gen)  # (B, T)
        y = torch.randint(11, (8, 8), generator=gen)
        want, loss = _reference_grads(k, x, y)
        model = _tiny_gpt(k)
        got_loss = as_number(fn(model, x.clone(), y.clone(), k), f"accumulate(model, x, y, k={k})")
        got = {n: p.grad for n, p in model.named_parameters()}
        if any(g is None for g in got.values()):
            return "some parameters have no .grad: call backward() on every micro-batch's loss"
        if not _same(got, want):
            if _same(got, _reference_grads(k, x, y, scale=k)[0]):
                return (
                    f"your gradients are {k} times too large: divide each micro-batch loss by k "
                    "before backward(), so that the sum equals the gradient of the mean"
                )
            last_x, last_y = x.chunk(k)[-1], y.chunk(k)[-1]
            for scale in (1.0, 1.0 / k):
                if _same(got, _reference_grads(k, last_x, last_y, scale)[0]):
                    return (
                        "your gradients are those of the last micro-batch only: do not zero "
                        "the gradients between micro-batches; backward() adds to .grad"
                    )
            return (
                f"with k={k} your gradients differ from those of the whole batch; split x and y "
                "along the batch axis into k equal parts (x.chunk(k)) and call backward on each "
                "loss / k"
            )
        if not math.isclose(got_loss, loss, rel_tol=1e-5, abs_tol=1e-6):
            return (
                f"the gradients are right but you returned loss {got_loss:.6f}; return the mean "
                f"loss over the micro-batches ({loss:.6f}) as a float"
            )
    return None


# -- B.5 the global batch ----------------------------------------------------------------------


@exercise("B.5", "accumulation steps for a global batch")
def check_grad_accum_steps(grad_accum_steps: Any) -> str | None:
    """``grad_accum_steps(tokens_per_step, block_size, batch_per_gpu, world_size)`` -> int k.

    k = tokens_per_step / (block_size * batch_per_gpu * world_size), an integer; a target that
    does not divide evenly must raise ValueError.
    """
    fn = _callable(grad_accum_steps, "check('B.5', grad_accum_steps)")
    for tokens, T, B, W in (
        (524288, 1024, 16, 8),
        (524288, 1024, 8, 8),
        (4096, 64, 4, 2),
        (640, 32, 20, 1),
    ):
        call = f"grad_accum_steps({tokens}, {T}, {B}, {W})"
        got = fn(tokens, T, B, W)
        want = tokens // (T * B * W)
        if isinstance(got, bool) or not isinstance(got, int):
            return f"{call} must return an int (the number of micro-batches), got {got!r}"
        if got == want:
            continue
        if got == tokens // (T * B):
            return f"{call} = {got}: each of the {W} processes contributes its own micro-batches: divide by world_size too"
        if got == tokens // (B * W):
            return f"{call} = {got}: tokens_per_step counts tokens, a sequence holds block_size of them"
        return (
            f"{call} = {got}, expected tokens / (block_size x batch_per_gpu x world_size) = {want}"
        )
    try:
        got = fn(1000, 64, 4, 2)
    except ValueError:
        return None
    return (
        f"grad_accum_steps(1000, 64, 4, 2) returned {got!r}, but 1000 tokens are not a whole number "
        "of 64 x 4 x 2 = 512-token micro-steps: raise ValueError and say so"
    )
