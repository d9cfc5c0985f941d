"""Checkers for the exercises of chapter 8, "Instruction and dialogue tuning, and LoRA".

Each checker compares the reader's answer with a reference (gptlab's own chat and LoRA code, or
a formula) on several cases, and recognises the usual mistakes so that the hint names the one
the reader made.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gptlab.chat import IGNORE_INDEX
from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable
from gptlab.lora import apply_lora, count_trainable_parameters
from gptlab.model import GPT, GPTConfig

__all__ = [
    "adamw_training_bytes",
    "check_adamw_bytes",
    "check_kept_exchanges",
    "check_lora_count",
    "check_lora_grads",
    "check_mask_targets",
    "kept_exchanges",
    "lora_parameter_count",
]

# Linear layers of one GPT block: name -> (in_features, out_features) in units of n_embd.
# "c_proj" is the name of two layers: attention's output projection and the MLP's.
_BLOCK_LINEARS = {
    "c_attn": [(1, 3)],
    "c_proj": [(1, 1), (4, 1)],
    "c_fc": [(1, 4)],
}


def kept_exchanges(
    system_len: int, exchange_lens: Sequence[int], message_len: int, budget: int
) -> int:
    """How many of the newest exchanges fit: the largest ``k`` with
    ``system_len + sum(exchange_lens[-k:]) + message_len <= budget`` (what ChatSession keeps)."""
    used = system_len + message_len
    if used > budget:
        raise ValueError("the system prompt and the message alone do not fit in the budget")
    k = 0
    for n in reversed(exchange_lens):
        if used + n > budget:
            break
        used += n
        k += 1
    return k


def lora_parameter_count(n_layer: int, n_embd: int, r: int, targets: Sequence[str]) -> int:
    """Trainable numbers of LoRA on a GPT-2-style model: ``r * (in + out)`` per wrapped layer."""
    total = 0
    for name in set(targets):
        for fan_in, fan_out in _BLOCK_LINEARS[name]:
            total += r * (fan_in * n_embd + fan_out * n_embd)
    return n_layer * total


def adamw_training_bytes(n_params: int, n_trainable: int, bytes_per_number: int = 4) -> int:
    """Weights (all) + gradients and AdamW's two moments (trainable only), step counters ignored."""
    return bytes_per_number * (n_params + 3 * n_trainable)


def _as_list(value: Any, what: str) -> list[int]:
    if isinstance(value, Tensor):
        return [int(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    raise NotSolved(f"{what} should be a list or a 1-D tensor, got {type(value).__name__}")


# --- 8.1 -----------------------------------------------------------------------------------


def _mask_cases() -> list[tuple[list[int], list[bool]]]:
    rng = random.Random(8)
    cases = [
        ([5, 6, 7, 8, 9, 2], [False, False, False, True, True, True]),
        ([1, 2, 3, 4, 5, 6, 7, 8], [False, False, True, True, False, False, True, True]),
    ]
    for _ in range(6):
        n = rng.randint(4, 20)
        ids = [rng.randrange(100) for _ in range(n)]
        flags = [False] * n
        for _ in range(rng.randint(1, 3)):  # a few reply spans
            start = rng.randint(1, n - 1)
            for t in range(start, min(n, start + rng.randint(1, 5))):
                flags[t] = True
        cases.append((ids, flags))
    return cases


@exercise("8.1", "Mask the prompt out of the targets")
def check_mask_targets(answer: Any) -> str | None:
    fn = _callable(answer, "mask_targets", "8.1")
    for ids, flags in _mask_cases():
        out = fn(list(ids), list(flags))
        if not isinstance(out, tuple) or len(out) != 2:
            return "return two things: (inputs, targets)"
        inputs, targets = _as_list(out[0], "inputs"), _as_list(out[1], "targets")
        want_x = ids[:-1]
        want_y = [ids[t + 1] if flags[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
        if inputs != want_x:
            if inputs == ids:
                return "inputs are all tokens but the last: ids[:-1] (the last has no next token)"
            return f"inputs should be ids[:-1]; for ids={ids} expected {want_x}, got {inputs}"
        if targets == want_y:
            continue
        if len(targets) != len(want_y):
            return f"targets need one entry per input position ({len(want_y)}), got {len(targets)}"
        shifted_wrong = [ids[t + 1] if flags[t] else IGNORE_INDEX for t in range(len(ids) - 1)]
        if targets == shifted_wrong:
            return (
                "off by one: target t is the token at t + 1, so whether it counts depends on "
                "is_response[t + 1], not is_response[t]"
            )
        if targets == [
            ids[t + 1] if not flags[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)
        ]:
            return "the mask is upside down: keep the reply tokens and hide the prompt tokens"
        if any(v == 0 for v in targets) and IGNORE_INDEX not in targets:
            return (
                f"mark ignored targets with {IGNORE_INDEX} (the loss skips it); 0 is a real token"
            )
        return f"for ids={ids}, is_response={flags} expected targets {want_y}, got {targets}"
    return None


# --- 8.2 -----------------------------------------------------------------------------------


_TRIM_CASES = [
    (10, [20, 20, 20], 10, 100),  # everything fits
    (10, [20, 20, 20], 10, 60),  # keep 2
    (10, [30, 5, 20], 10, 50),  # keep 2 (5 + 20), the 30 goes
    (10, [5, 40, 10], 10, 40),  # keep 1: the 40 does not fit, and no hole may be skipped
    (0, [7, 7, 7, 7], 6, 20),  # no system prompt: keep 2 (6 + 14 = 20 fits exactly)
    (12, [8, 9], 20, 32),  # only system + message fit: keep 0
    (5, [], 5, 10),  # nothing to keep
]


def _trim_variants(
    system_len: int, lens: list[int], message_len: int, budget: int
) -> dict[str, int]:
    """What the usual wrong answers return, by mistake."""

    def newest(
        lens_in_order: list[int], fixed: int, fits: Callable[[int], bool], skip: bool
    ) -> int:
        used, k = fixed, 0
        for n in lens_in_order:
            if not fits(used + n):
                if skip:
                    continue
                break
            used += n
            k += 1
        return k

    fixed = system_len + message_len
    le = lambda total: total <= budget  # noqa: E731
    return {
        "oldest": newest(list(lens), fixed, le, False),
        "strict": newest(list(reversed(lens)), fixed, lambda total: total < budget, False),
        "no_system": newest(list(reversed(lens)), message_len, le, False),
        "skip": newest(list(reversed(lens)), fixed, le, True),
    }


_TRIM_HINTS = {
    "oldest": "keep the NEWEST exchanges: walk the list from its end, so the oldest go first",
    "strict": "a prompt of exactly `budget` tokens fits: compare with <=, not <",
    "no_system": "the system prompt always stays, so its tokens count against the budget too",
    "skip": (
        "stop at the first exchange that does not fit: keep a contiguous block of the newest "
        "exchanges (a conversation with a hole in it reads oddly)"
    ),
}


@exercise("8.2", "Which exchanges stay in the window")
def check_kept_exchanges(answer: Any) -> str | None:
    fn = _callable(answer, "kept_exchanges", "8.2")
    for system_len, lens, message_len, budget in _TRIM_CASES:
        want = kept_exchanges(system_len, lens, message_len, budget)
        got = fn(system_len, list(lens), message_len, budget)
        if isinstance(got, bool) or not isinstance(got, int):
            return f"return the number of exchanges kept (an int), got {type(got).__name__}"
        if got == want:
            continue
        for mistake, value in _trim_variants(system_len, list(lens), message_len, budget).items():
            if got == value:
                return _TRIM_HINTS[mistake]
        return (
            f"for system_len={system_len}, exchange_lens={lens}, message_len={message_len}, "
            f"budget={budget} expected {want}, got {got}"
        )
    return None


# --- 8.3 -----------------------------------------------------------------------------------


def _lora_grads_reference(
    x: Tensor, grad_out: Tensor, A: Tensor, B: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """Autograd's gradients of A and B for y = (alpha / r) (x A^T) B^T, given dL/dy."""
    A = A.detach().clone().requires_grad_(True)
    B = B.detach().clone().requires_grad_(True)
    y = (alpha / A.shape[0]) * (x @ A.T) @ B.T  # (N, d_out)
    y.backward(grad_out)
    return A.grad, B.grad


@exercise("8.3", "The gradients of A and B")
def check_lora_grads(answer: Any) -> str | None:
    fn = _callable(answer, "lora_grads", "8.3")
    g = torch.Generator().manual_seed(8)
    for n, d_in, d_out, r, alpha in ((5, 6, 4, 2, 4.0), (7, 8, 12, 4, 4.0), (3, 16, 3, 1, 2.0)):
        x = torch.randn(n, d_in, generator=g)
        grad_out = torch.randn(n, d_out, generator=g)
        A = torch.randn(r, d_in, generator=g)
        B = torch.randn(d_out, r, generator=g)
        out = fn(x.clone(), grad_out.clone(), A.clone(), B.clone(), alpha)
        if not isinstance(out, tuple) or len(out) != 2:
            return "return two tensors: (grad_A, grad_B)"
        grad_A, grad_B = out
        if not isinstance(grad_A, Tensor) or not isinstance(grad_B, Tensor):
            return "return two tensors: (grad_A, grad_B)"
        want_A, want_B = _lora_grads_reference(x, grad_out, A, B, alpha)
        if grad_A.shape != A.shape or grad_B.shape != B.shape:
            if grad_A.shape == B.shape and grad_B.shape == A.shape:
                return "the order is (grad_A, grad_B)"
            return (
                f"a gradient has the shape of its matrix: grad_A {tuple(A.shape)}, grad_B "
                f"{tuple(B.shape)}; got {tuple(grad_A.shape)} and {tuple(grad_B.shape)}"
            )
        ok_A = torch.allclose(grad_A, want_A, atol=1e-4)
        ok_B = torch.allclose(grad_B, want_B, atol=1e-4)
        if ok_A and ok_B:
            continue
        s = alpha / r
        if torch.allclose(grad_A * s, want_A, atol=1e-4) or torch.allclose(
            grad_B * s, want_B, atol=1e-4
        ):
            return "both gradients carry the scale alpha / r (r = A.shape[0])"
        if ok_A:
            return "grad_A is right; grad_B = (alpha / r) * grad_out^T (x A^T)"
        if ok_B:
            return "grad_B is right; grad_A = (alpha / r) * (grad_out B)^T x"
        return "write u = x A^T; then grad_B = s * grad_out^T u and grad_A = s * (grad_out B)^T x"
    # the point of B = 0 at the start: A gets no gradient, B does
    x, grad_out = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
    A, B = torch.randn(2, 6, generator=g), torch.zeros(5, 2)
    grad_A, grad_B = fn(x, grad_out, A, B, 4.0)
    if torch.count_nonzero(grad_A) != 0 or torch.count_nonzero(grad_B) == 0:
        return "with B = 0, grad_A must be exactly zero and grad_B not"
    return None


# --- 8.4 -----------------------------------------------------------------------------------


_COUNT_CASES = [
    (2, 24, 4, ("c_attn",)),
    (2, 24, 4, ("c_attn", "c_proj")),
    (3, 16, 2, ("c_fc",)),
    (1, 32, 8, ("c_attn", "c_proj", "c_fc")),
    (4, 192, 8, ("c_attn", "c_proj", "c_fc")),
]


@exercise("8.4", "Count LoRA's trainable parameters")
def check_lora_count(answer: Any) -> str | None:
    fn = _callable(answer, "lora_parameter_count", "8.4")
    for n_layer, n_embd, r, targets in _COUNT_CASES:
        want = lora_parameter_count(n_layer, n_embd, r, targets)
        got = fn(n_layer, n_embd, r, tuple(targets))
        if isinstance(got, bool) or not isinstance(got, int):
            return f"return an int, got {type(got).__name__}"
        if got == want:
            continue
        args = f"n_layer={n_layer}, n_embd={n_embd}, r={r}, targets={targets}"
        one_proj = want - n_layer * r * 5 * n_embd if "c_proj" in targets else None
        full = n_layer * sum(
            fi * n_embd * fo * n_embd for t in targets for fi, fo in _BLOCK_LINEARS[t]
        )
        if got == one_proj:
            return (
                "two layers per block are called c_proj (attention's output, C -> C, and the "
                "MLP's, 4C -> C): both get LoRA"
            )
        if got == full or got == r * full:
            return "LoRA trains A (r x in) and B (out x r): r * (in + out) per layer, not in * out"
        if got * n_layer == want:
            return "every one of the n_layer blocks has these layers: multiply by n_layer"
        return f"for {args} expected {want}, got {got}"
    # and the formula matches what apply_lora really creates
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_embd=24, n_head=2)
    model = apply_lora(GPT(cfg), r=4, target_modules=("c_attn", "c_proj", "c_fc"))
    if fn(2, 24, 4, ("c_attn", "c_proj", "c_fc")) != count_trainable_parameters(model):
        return "your count differs from count_trainable_parameters on a real LoRA model"
    return None


# --- 8.5 -----------------------------------------------------------------------------------


_BYTES_CASES = [(1000, 1000), (2_600_000, 2_600_000), (2_600_000, 55_296), (10, 0)]


@exercise("8.5", "Training memory: full fine-tuning vs LoRA")
def check_adamw_bytes(answer: Any) -> str | None:
    fn = _callable(answer, "adamw_training_bytes", "8.5")
    for n_params, n_trainable in _BYTES_CASES:
        want = adamw_training_bytes(n_params, n_trainable)
        got = fn(n_params, n_trainable)
        if isinstance(got, bool) or not isinstance(got, int):
            return f"return a number of bytes as an int, got {type(got).__name__}"
        if got == want:
            continue
        args = f"n_params={n_params}, n_trainable={n_trainable}"
        if got == 4 * (n_params + 2 * n_trainable):
            return "trainable parameters also need a gradient (4 bytes each) during training"
        if got == 4 * (n_params + n_trainable + 2 * n_params):
            return "AdamW keeps its two moments only for parameters it updates (the trainable ones)"
        if got == 4 * 4 * n_params:
            return "frozen parameters need neither gradients nor optimizer state"
        if got == n_params + 3 * n_trainable:
            return "count bytes, not numbers: a float32 takes 4 bytes"
        return f"for {args} expected {want} bytes, got {got}"
    return None
