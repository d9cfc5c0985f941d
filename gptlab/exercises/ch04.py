"""Checkers for the exercises of chapter 4, "Pretraining".

Each checker compares the reader's answer with a reference computed here (PyTorch's own
cross-entropy and autograd, gptlab's optimizer groups, the formula of a schedule) and
recognises the usual mistakes, so that the hint names the one the reader made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "bits_per_char",
    "check_accumulation",
    "check_bits_per_char",
    "check_cross_entropy",
    "check_decay_split",
    "check_inverse_sqrt_schedule",
    "inverse_sqrt_lr",
]


def bits_per_char(loss: float, n_tokens: int, n_chars: int) -> float:
    """Bits per character of a mean loss in nats per token over a text of ``n_chars`` characters.

    The text costs ``loss · n_tokens`` nats in all; divide by the characters and by ``ln 2``
    (nats -> bits). Unlike the per-token loss this does not depend on the tokenizer, so models
    with different vocabularies can be compared.
    """
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise ValueError(f"loss must be a finite number (nats per token), got {loss!r}")
    for name, value in (("n_tokens", n_tokens), ("n_chars", n_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return loss * n_tokens / n_chars / math.log(2)


def inverse_sqrt_lr(step: int, d_model: int, warmup_steps: int) -> float:
    """The original Transformer's schedule: ``d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)``.

    ``step`` counts from 1. The rate grows linearly for ``warmup_steps`` steps, peaks at
    ``(d_model · warmup_steps)^-0.5`` and then decays like ``1 / sqrt(step)``.
    """
    for name, value in (("step", step), ("d_model", d_model), ("warmup_steps", warmup_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1 (steps count from 1), got {value!r}")
    return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def _float(out: Any, name: str) -> float:
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        raise NotSolved(f"{name} should return a number, got {type(out).__name__}")
    return float(out)


# --- 4.1 a cross-entropy that never overflows ---------------------------------------------------


@exercise("4.1", "a cross-entropy that never overflows")
def check_cross_entropy(answer: Any) -> str | None:
    """``cross_entropy(logits, targets)`` must equal ``F.cross_entropy`` even for huge logits."""
    cross_entropy = _callable(answer, "cross_entropy", "4.1")
    gen = torch.Generator().manual_seed(41)
    cases = [
        ("small logits", torch.randn(6, 11, generator=gen), 1e-5),
        ("a GPT-sized vocabulary", 2 * torch.randn(4, 4096, generator=gen), 1e-5),
        ("huge logits (around ±1000)", 1000 * torch.randn(5, 7, generator=gen), 1e-3),
        ("logits all around +5000", 5000 + torch.randn(3, 9, generator=gen), 1e-3),
    ]
    for name, logits, tol in cases:
        targets = torch.randint(logits.shape[1], (logits.shape[0],), generator=gen)
        want = F.cross_entropy(logits.double(), targets).item()
        got = _float(cross_entropy(logits.clone(), targets.clone()), "cross_entropy")
        if abs(got - want) <= tol * max(1.0, abs(want)):
            continue
        if not math.isfinite(got):
            return (
                f"with {name} your loss is {got}: exp() overflowed. Use log-sum-exp: subtract "
                "the row maximum m before exponentiating, log Σ exp(z) = m + log Σ exp(z - m)"
            )
        if abs(got + want) <= tol * max(1.0, abs(want)):
            return "the sign is flipped: the loss is MINUS the log-probability of the target"
        if abs(got - want * logits.shape[0]) <= tol * max(1.0, abs(want * logits.shape[0])):
            return "that is the SUM over the rows; return the mean (divide by the number of rows)"
        if abs(got - want / math.log(2)) <= tol * max(1.0, abs(want)):
            return "that is in bits; use the natural logarithm (nats), as F.cross_entropy does"
        return (
            f"with {name} expected {want:.6f}, got {got:.6f}; compute mean over rows of "
            "logsumexp(logits) - logits[target]"
        )
    return None


# --- 4.2 bits per character ---------------------------------------------------------------------


@exercise("4.2", "compare tokenizers in bits per character")
def check_bits_per_char(answer: Any) -> str | None:
    """``bpc(loss, n_tokens, n_chars)`` must equal :func:`bits_per_char`."""
    bpc = _callable(answer, "bits_per_char", "4.2")
    for loss, n_tokens, n_chars in ((1.5, 1000, 1000), (4.2, 2909, 10000), (3.0, 50, 173)):
        got = _float(bpc(loss, n_tokens, n_chars), "bits_per_char")
        want = bits_per_char(loss, n_tokens, n_chars)
        if abs(got - want) <= 1e-9 * max(1.0, want):
            continue
        args = f"loss={loss}, n_tokens={n_tokens}, n_chars={n_chars}"
        if abs(got - loss * n_tokens / n_chars) < 1e-9:
            return f"{args}: that is nats per character; divide by ln 2 to get bits"
        if abs(got - loss * n_chars / n_tokens / math.log(2)) < 1e-9:
            return f"{args}: the ratio is upside down: the text costs loss × n_tokens nats in all"
        if abs(got - loss / math.log(2)) < 1e-9 and n_tokens != n_chars:
            return f"{args}: that is bits per TOKEN; spread the total over the characters"
        if abs(got - loss * n_tokens / n_chars * math.log(2)) < 1e-9:
            return f"{args}: multiply by 1/ln 2 (≈ 1.443), not by ln 2"
        return f"{args}: expected {want:.6f} bits per character, got {got:.6f}"
    return None


# --- 4.3 the original Transformer's schedule ----------------------------------------------------


@exercise("4.3", "the original Transformer's learning-rate schedule")
def check_inverse_sqrt_schedule(answer: Any) -> str | None:
    """``lr(step, d_model, warmup_steps)`` must equal :func:`inverse_sqrt_lr` (steps from 1)."""
    lr = _callable(answer, "inverse_sqrt_lr", "4.3")
    for d_model, warmup in ((512, 4000), (128, 100), (768, 1)):
        for step in (1, 2, warmup // 2 or 1, warmup, warmup + 1, 4 * warmup, 100 * warmup):
            got = _float(lr(step, d_model, warmup), "inverse_sqrt_lr")
            want = inverse_sqrt_lr(step, d_model, warmup)
            if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-15):
                continue
            args = f"step={step}, d_model={d_model}, warmup_steps={warmup}"
            without_scale = want * math.sqrt(d_model)
            if math.isclose(got, without_scale, rel_tol=1e-9):
                return f"{args}: multiply by d_model^-0.5 (the scale in front)"
            if math.isclose(
                got, d_model**-0.5 * max(step**-0.5, step * warmup**-1.5), rel_tol=1e-9
            ):
                return f"{args}: take the MIN of the two terms (the max never decays)"
            if step == 1 and got == 0:
                return "steps count from 1 here, and step 1 must get a (small) positive rate"
            return f"{args}: expected {want:.6g}, got {got:.6g}"
    return None


# --- 4.4 gradient accumulation ------------------------------------------------------------------


def _tiny_gpt(seed: int) -> Any:
    from gptlab.model import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):  # leave the reader's random state untouched
        torch.manual_seed(seed)
        return GPT(GPTConfig(vocab_size=31, block_size=8, n_layer=1, n_head=2, n_embd=16))


def _grads(model: Any) -> list[Tensor]:
    return [
        torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for p in model.parameters()
    ]


def _same(a: Sequence[Tensor], b: Sequence[Tensor], scale: float = 1.0) -> bool:
    return all(
        torch.allclose(x * scale, y, rtol=1e-4, atol=1e-7) for x, y in zip(a, b, strict=True)
    )


@exercise("4.4", "gradient accumulation")
def check_accumulation(answer: Any) -> str | None:
    """``accumulate(model, micro_batches)`` must leave the full batch's gradient in ``.grad``."""
    accumulate = _callable(answer, "accumulate", "4.4")
    model = _tiny_gpt(44)
    gen = torch.Generator().manual_seed(44)
    k = 4
    xs = torch.randint(31, (k * 2, 8), generator=gen)
    ys = torch.randint(31, (k * 2, 8), generator=gen)
    micro = [(xs[2 * i : 2 * i + 2], ys[2 * i : 2 * i + 2]) for i in range(k)]

    model.zero_grad(set_to_none=True)
    _, full_loss = model(xs, ys)  # the mean loss over the whole batch of 8 sequences
    full_loss.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)
    _, last_loss = model(*micro[-1])
    last_loss.backward()
    last_only = _grads(model)
    model.zero_grad(set_to_none=True)

    got_loss = _float(accumulate(model, micro), "accumulate")
    got = _grads(model)
    if all(float(g.abs().sum()) == 0.0 for g in got):
        return "no gradient arrived in .grad: call loss.backward() for every micro-batch"
    if not _same(want, got):
        if _same(want, got, scale=k):
            return f"the gradient is {k}× too large: scale each micro-batch loss by 1/k before backward()"
        if _same(last_only, got, scale=1 / k) or _same(last_only, got):
            return "only the last micro-batch's gradient is left: do not zero the gradients between micro-batches"
        return "the gradient in .grad differs from the gradient of the mean loss over all micro-batches"
    if not math.isclose(got_loss, full_loss.item(), rel_tol=1e-4):
        if math.isclose(got_loss, k * full_loss.item(), rel_tol=1e-4):
            return (
                f"the gradient is right; return the MEAN loss (you returned the sum of {k} losses)"
            )
        return f"the gradient is right, but the returned loss {got_loss:.5f} should be the mean {full_loss.item():.5f}"
    return None


# --- 4.5 which parameters get weight decay ------------------------------------------------------


@exercise("4.5", "which parameters get weight decay")
def check_decay_split(answer: Any) -> str | None:
    """``split(model)`` must return the two name lists of :func:`gptlab.train.split_decay_params`."""
    from gptlab.train import split_decay_params

    split = _callable(answer, "split_decay", "4.5")
    model = _tiny_gpt(45)
    want_decay, want_no = (set(names) for names in split_decay_params(model))
    out = split(model)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return "return a pair (decay_names, no_decay_names) of lists of parameter names"
    if not all(isinstance(n, str) for group in out for n in group):
        return "return parameter NAMES (strings from model.named_parameters()), not tensors"
    decay, no_decay = (list(group) for group in out)
    if (
        len(set(decay)) != len(decay)
        or len(set(no_decay)) != len(no_decay)
        or set(decay) & set(no_decay)
    ):
        return "every parameter must appear exactly once, in one of the two groups"
    if "lm_head.weight" in decay + no_decay:
        return (
            "lm_head.weight is the same tensor as transformer.wte.weight (tied): list it once; "
            "model.named_parameters() already yields a shared tensor only once"
        )
    missing = sorted((want_decay | want_no) - set(decay) - set(no_decay))
    if missing:
        return f"some parameters are in neither group, e.g. {missing[0]!r}"
    # Decaying the embedding tables is a choice, not a mistake: minGPT leaves them out (as
    # gptlab does), nanoGPT decays every 2-D tensor. Both splits are accepted, all or none.
    embeddings = {n for n in want_no if n.startswith(("transformer.wte.", "transformer.wpe."))}
    decayed_embeddings = set(decay) & embeddings
    if decayed_embeddings and decayed_embeddings != embeddings:
        return (
            f"decay both embedding tables or neither: {sorted(decayed_embeddings)} is decayed "
            f"but {sorted(embeddings - decayed_embeddings)} is not"
        )
    wrongly_decayed = sorted(set(decay) - want_decay - embeddings)
    if wrongly_decayed:
        name = wrongly_decayed[0]
        if name.endswith(".bias"):
            why = "biases only shift a layer's output; shrinking them towards 0 buys nothing"
        else:
            why = "LayerNorm gains should stay near 1, not be pulled towards 0"
        return f"{name!r} should NOT be decayed: {why}"
    not_decayed = sorted(want_decay - set(decay))
    if not_decayed:
        return f"{not_decayed[0]!r} is the weight matrix of a Linear layer: it should be decayed"
    return None
