"""Checkers for chapter 3, "The GPT architecture".

Each checker compares the reader's answer with a reference computed here from the formula (or
with PyTorch's own implementation), and recognises the usual mistakes so that the hint names the
one the reader made.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.exercises import NotSolved, exercise

__all__ = ["gpt_parameter_count", "expected_initial_loss"]


def gpt_parameter_count(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> int:
    """Parameters of a GPT-2-style model with biases and a language-model head tied to ``wte``.

    Embeddings ``V·d + T·d``; per block two LayerNorms (``2·2d``), attention (``4d² + 4d``) and the
    MLP (``8d² + 5d``), i.e. ``12d² + 13d``; the final LayerNorm ``2d``; the tied head adds nothing.
    """
    for name, value in (
        ("vocab_size", vocab_size),
        ("block_size", block_size),
        ("n_layer", n_layer),
        ("n_embd", n_embd),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}; e.g. n_embd=768")
    d = n_embd
    return vocab_size * d + block_size * d + n_layer * (12 * d * d + 13 * d) + 2 * d


def expected_initial_loss(vocab_size: int, logit_std: float) -> float:
    """Expected cross-entropy when the logits are i.i.d. ``N(0, logit_std²)``: ``ln V + σ²/2``.

    The target's logit averages 0, and for many logits ``log Σ exp(z_i) ≈ ln(V · E[e^z]) =
    ln V + σ²/2`` (the mean of a log-normal variable), so random small logits cost slightly more
    than the perfectly uniform guess ``ln V``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    if not logit_std >= 0:
        raise ValueError(f"logit_std must be >= 0, got {logit_std!r}")
    return math.log(vocab_size) + logit_std**2 / 2


def _as_tensor(out: object, what: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise NotSolved(f"{what} should return a torch.Tensor, got {type(out).__name__}")
    return out


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=0)


# --- 3.1 LayerNorm ------------------------------------------------------------------------------


@exercise("3.1", "LayerNorm from its formula")
def _check_layer_norm(layer_norm: Callable[..., Tensor]) -> str | None:
    gen = torch.Generator().manual_seed(31)
    for shape, offset in (((2, 5, 16), 0.0), ((3, 8), 4.0), ((1, 4, 7), -50.0)):
        d = shape[-1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + offset
        weight = torch.randn(d, generator=gen, dtype=torch.float64)
        bias = torch.randn(d, generator=gen, dtype=torch.float64)
        eps = 1e-5
        want = F.layer_norm(x, (d,), weight, bias, eps)
        got = _as_tensor(layer_norm(x.clone(), weight, bias, eps), "layer_norm")
        if got.shape != want.shape:
            return f"output shape {tuple(got.shape)} should equal the input shape {tuple(shape)}"
        if _close(got, want, 1e-8):
            continue
        mean = x.mean(-1, keepdim=True)
        unbiased = (x - mean) / torch.sqrt(x.var(-1, keepdim=True, unbiased=True) + eps)
        if _close(got, unbiased * weight + bias, 1e-8):
            return "use the biased variance (divide by d, not d - 1): x.var(-1, unbiased=False)"
        eps_outside = (x - mean) / (x.std(-1, keepdim=True, unbiased=False) + eps)
        if _close(got, eps_outside * weight + bias, 1e-8):
            return "add eps to the variance inside the square root: sqrt(var + eps)"
        plain = F.layer_norm(x, (d,), None, None, eps)
        if _close(got, plain, 1e-8):
            return "normalising is right; now scale by weight (gamma) and shift by bias (beta)"
        err = (got.double() - want).abs().max().item()
        return (
            f"for input shape {tuple(shape)} the result differs from torch.nn.functional.layer_norm "
            f"by up to {err:.3g}; normalise over the LAST dimension only (mean and variance with "
            "dim=-1, keepdim=True)"
        )
    return None


# --- 3.2 RMSNorm -------------------------------------------------------------------------------


@exercise("3.2", "RMSNorm, LayerNorm's simpler sibling")
def _check_rms_norm(rms_norm: Callable[..., Tensor]) -> str | None:
    gen = torch.Generator().manual_seed(32)
    for shape, offset in (((2, 5, 16), 0.0), ((3, 8), 4.0), ((1, 4, 7), -5.0)):
        d = shape[-1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + offset
        weight = torch.randn(d, generator=gen, dtype=torch.float64)
        eps = 1e-5
        ms = x.pow(2).mean(-1, keepdim=True)
        want = x / torch.sqrt(ms + eps) * weight
        got = _as_tensor(rms_norm(x.clone(), weight, eps), "rms_norm")
        if got.shape != want.shape:
            return f"output shape {tuple(got.shape)} should equal the input shape {tuple(shape)}"
        if _close(got, want, 1e-8):
            continue
        if _close(got, F.layer_norm(x, (d,), weight, None, eps), 1e-8):
            return "that is LayerNorm: RMSNorm does not subtract the mean, it divides by sqrt(mean(x²))"
        if _close(got, x / (torch.sqrt(ms) + eps) * weight, 1e-8):
            return "add eps inside the square root: sqrt(mean(x²) + eps)"
        if _close(got, x / torch.sqrt(ms + eps), 1e-8):
            return "normalising is right; now scale by weight (RMSNorm has no bias)"
        if _close(got, x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * weight, 1e-8):
            return "root MEAN square: average x² over the last dimension (divide by d), don't sum"
        err = (got.double() - want).abs().max().item()
        return (
            f"for input shape {tuple(shape)} the result is off by up to {err:.3g}; compute "
            "x / sqrt(mean(x², dim=-1, keepdim=True) + eps) * weight"
        )
    return None


# --- 3.3 parameter count ------------------------------------------------------------------------

_CONFIGS = (
    (50257, 1024, 12, 768),  # GPT-2 small
    (50257, 1024, 24, 1024),  # GPT-2 medium
    (65, 64, 2, 32),
    (1000, 16, 3, 48),
)


@exercise("3.3", "count the parameters of a GPT config")
def _check_param_count(count: Callable[[int, int, int, int], int]) -> str | None:
    for V, T, L, d in _CONFIGS:
        got = count(V, T, L, d)
        if isinstance(got, Tensor):
            got = got.item()
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, bool) or not isinstance(got, int):
            return f"return an int, got {type(got).__name__}"
        want = gpt_parameter_count(V, T, L, d)
        if got == want:
            continue
        args = f"(vocab_size={V}, block_size={T}, n_layer={L}, n_embd={d})"
        diff = got - want
        if diff == V * d:
            return f"{args}: you counted the LM head; it is tied to wte and adds no parameters"
        if diff == -T * d:
            return f"{args}: add the position embeddings wpe (block_size × n_embd)"
        if diff == -(L * 4 * d + 2 * d):
            return f"{args}: add the LayerNorms: 2 per block plus the final one, each 2·n_embd"
        if diff == -(L * 9 * d):
            return f"{args}: add the Linear biases: 3d + d in attention, 4d + d in the MLP"
        if diff == -(L * 13 * d + 2 * d):
            return f"{args}: you left out every bias and LayerNorm vector (the terms linear in d)"
        return f"{args}: expected {want:,}, got {got:,} (off by {diff:+,})"
    return None


# --- 3.4 the post-norm block --------------------------------------------------------------------


def _sublayers(d: int, gen: torch.Generator) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    ln_1, ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
    attn = nn.Sequential(nn.Linear(d, d), nn.Tanh())  # a stand-in: any (B, T, d) -> (B, T, d) map
    mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
    with torch.no_grad():
        for module in (ln_1, ln_2, attn, mlp):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return ln_1, attn, ln_2, mlp


@exercise("3.4", "the original post-norm block")
def _check_post_norm_block(block: Callable[..., Tensor]) -> str | None:
    gen = torch.Generator().manual_seed(34)
    d = 12
    ln_1, attn, ln_2, mlp = _sublayers(d, gen)
    x = torch.randn(2, 5, d, generator=gen) * 2
    with torch.no_grad():
        h = ln_1(x + attn(x))
        want = ln_2(h + mlp(h))
        got = _as_tensor(block(x.clone(), ln_1, attn, ln_2, mlp), "post_norm_block")
        if _close(got, want, 1e-5):
            return None
        if got.shape != want.shape:
            return f"output shape {tuple(got.shape)} should equal the input shape {tuple(x.shape)}"
        pre = x + attn(ln_1(x))
        if _close(got, pre + mlp(ln_2(pre)), 1e-5):
            return "that is the pre-norm block (GPT-2's); post-norm normalises AFTER each addition"
        if _close(got, h + mlp(h), 1e-5):
            return "normalise after the second addition too: ln_2(h + mlp(h))"
        if _close(got, ln_2(mlp(ln_1(attn(x)))), 1e-5):
            return "keep the residual connections: ln_1(x + attn(x)), then ln_2(h + mlp(h))"
        h_wrong = x + ln_1(attn(x))
        if _close(got, h_wrong + ln_2(mlp(h_wrong)), 1e-5):
            return "normalise the SUM x + attn(x), not the sublayer output alone"
    return "the output differs from h = ln_1(x + attn(x)) followed by ln_2(h + mlp(h))"


# --- 3.5 the loss of an untrained model ---------------------------------------------------------


@exercise("3.5", "predict the loss of an untrained model")
def _check_initial_loss(estimate: Callable[[int, float], float]) -> str | None:
    for V, sigma in ((50257, 0.0), (65, 0.0), (50257, 0.5), (10000, 1.0), (50257, 0.25)):
        got = estimate(V, sigma)
        if isinstance(got, Tensor):
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return f"return a float, got {type(got).__name__}"
        want = expected_initial_loss(V, sigma)
        if abs(got - want) <= 0.01:
            continue
        if sigma == 0.0:
            if abs(got - math.log2(V)) < 1e-6:
                return "cross-entropy in PyTorch uses the natural logarithm: math.log, not log2"
            if abs(got - 1 / V) < 1e-6:
                return "1/V is the probability of the target; the loss is its negative log"
            return f"with all logits equal every token has probability 1/V; for V={V} got {got}"
        if abs(got - math.log(V)) < 1e-6:
            return (
                f"with logit_std={sigma} the logits are not all equal: the log-sum-exp grows by "
                "about σ²/2 because E[exp(z)] = exp(σ²/2) for z ~ N(0, σ²)"
            )
        return f"for V={V}, logit_std={sigma} expected about {want:.4f}, got {got:.4f}"
    return None
