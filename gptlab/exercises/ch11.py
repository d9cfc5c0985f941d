"""Checkers for the exercises of chapter 11, "From GPT-2 to Llama".

Each checker compares the reader's answer with gptlab itself (``RotaryEmbedding`` and
``apply_rotary``, ``repeat_kv``, a real ``KVCache`` allocation, autograd through ``RMSNorm``) or
with the formula, and recognises the usual mistakes so that the hint names the one the reader
made.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gptlab.attention import KVCache, repeat_kv
from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable
from gptlab.llama import LlamaConfig, RMSNorm, RotaryEmbedding, apply_rotary
from gptlab.model import GPTConfig

__all__ = [
    "check_kv_cache_bytes",
    "check_kv_head_for",
    "check_rms_norm_backward",
    "check_rope_rotate",
    "check_swiglu_hidden",
    "kv_cache_bytes",
    "kv_head_for",
    "rms_norm_backward",
    "rope_rotate",
    "swiglu_hidden",
]


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


# --- reference answers -------------------------------------------------------------------------


def rope_rotate(x: Tensor, position: int, theta: float = 10000.0) -> Tensor:
    r"""Rotate one head vector ``x`` ``(d,)`` to ``position`` as gptlab (and Hugging Face) do.

    Feature ``i < d/2`` and feature ``i + d/2`` form a pair, turned by the angle
    :math:`m\,\theta^{-2i/d}`: ``(a, b) -> (a cos - b sin, b cos + a sin)``. Computed in float64.
    """
    if not isinstance(x, Tensor) or x.dim() != 1 or x.numel() % 2:
        raise ValueError("x must be a 1-D tensor with an even number of features (a head vector)")
    _int(position, "position", 0)
    if not (isinstance(theta, (int, float)) and not isinstance(theta, bool) and theta > 1):
        raise ValueError(f"theta must be a number > 1 (RoPE's base, e.g. 10000), got {theta!r}")
    half = x.numel() // 2
    i = torch.arange(half, dtype=torch.float64)
    angle = position * float(theta) ** (-2 * i / x.numel())  # (d/2,)
    a, b = x[:half].double(), x[half:].double()
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((a * cos - b * sin, b * cos + a * sin))


def kv_head_for(h: int, n_head: int, n_kv_head: int) -> int:
    """The key/value head that query head ``h`` reads in grouped-query attention.

    ``repeat_kv`` repeats each KV head for ``n_head // n_kv_head`` consecutive query heads, so
    query heads ``0 .. g-1`` read KV head 0, the next ``g`` read KV head 1, and so on.
    """
    _int(n_head, "n_head", 1)
    _int(n_kv_head, "n_kv_head", 1)
    _int(h, "h", 0)
    if n_head % n_kv_head:
        raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
    if h >= n_head:
        raise ValueError(f"query head h={h} does not exist: heads are 0 .. {n_head - 1}")
    return h // (n_head // n_kv_head)


def kv_cache_bytes(config: GPTConfig | LlamaConfig, n_tokens: int, dtype: torch.dtype) -> int:
    """Bytes of the KV cache for one sequence of ``n_tokens`` tokens: ``2·L·n_kv·hd·T·bytes``.

    Every layer stores a key and a value (the 2) of ``head_dim`` numbers per KV head per token.
    A GPT has as many KV heads as query heads; a Llama has ``n_kv_head``.
    """
    if not isinstance(config, (GPTConfig, LlamaConfig)):
        raise TypeError(f"config must be a GPTConfig or a LlamaConfig, got {type(config).__name__}")
    _int(n_tokens, "n_tokens", 1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}"
        )
    n_kv = config.n_kv_head if isinstance(config, LlamaConfig) else config.n_head
    return 2 * config.n_layer * n_kv * config.head_dim * n_tokens * dtype.itemsize


def rms_norm_backward(x: Tensor, weight: Tensor, grad_out: Tensor, eps: float = 1e-5) -> Tensor:
    r"""The gradient of a loss with respect to RMSNorm's input, given ``grad_out`` = dL/dy.

    With :math:`r = \sqrt{\overline{x^2} + \epsilon}` and :math:`u = w \odot g`:
    :math:`\partial L/\partial x = u / r - x\,\overline{u \odot x} / r^3` (bars are means over
    the last dimension). The second term is what makes ``x · dx = ε·mean(u x)/r³ ≈ 0``.
    """
    for name, t in (("x", x), ("weight", weight), ("grad_out", grad_out)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor")
    if grad_out.shape != x.shape or weight.shape != x.shape[-1:]:
        raise ValueError("grad_out must be shaped like x, and weight like x's last dimension")
    r = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    u = weight * grad_out
    return u / r - x * (u * x).mean(-1, keepdim=True) / r**3


def swiglu_hidden(n_embd: int, multiple_of: int = 1) -> int:
    """Llama's SwiGLU width: as many parameters as a 4x GELU MLP, rounded UP to ``multiple_of``.

    A GELU MLP has ``2·C·4C`` weights, SwiGLU ``3·C·h`` (gate, up, down), so ``h = 2/3 · 4C``,
    truncated to an int as Llama's code does, then rounded up: 11,008 for ``C = 4096``.
    """
    _int(n_embd, "n_embd", 1)
    _int(multiple_of, "multiple_of", 1)
    h = int(2 * 4 * n_embd / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


# --- helpers -----------------------------------------------------------------------------------


def _tensor(out: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(out, Tensor):
        raise NotSolved(f"{name} should return a tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise NotSolved(f"{name} should return shape {shape}, got {tuple(out.shape)}")
    return out.double()


def _whole(out: Any, name: str) -> int:
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, float) and out.is_integer():
        out = int(out)
    if isinstance(out, bool) or not isinstance(out, int):
        raise NotSolved(f"{name} should return an int, got {type(out).__name__}")
    return out


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    return bool(torch.allclose(a, b.double(), atol=atol, rtol=0))


# --- 11.1 RoPE by hand --------------------------------------------------------------------------


def _gptlab_rope(x: Tensor, position: int, theta: float) -> Tensor:
    cos, sin = RotaryEmbedding(x.numel(), position + 1, theta)(position, 1, x.dtype, x.device)
    return apply_rotary(x[None, None, None, :], cos, sin)[0, 0, 0]


def _rope_mistakes(x: Tensor, m: int, theta: float) -> dict[str, Tensor]:
    d, half = x.numel(), x.numel() // 2
    x = x.double()
    i = torch.arange(half, dtype=torch.float64)
    angle = m * float(theta) ** (-2 * i / d)
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[0::2], x[1::2]
    interleaved = torch.stack((even * cos - odd * sin, odd * cos + even * sin), -1).flatten()
    return {
        "interleaved": interleaved,
        "backwards": _turn(x, -angle),
        "exponent i/d": _turn(x, m * float(theta) ** (-i / d)),
        "position + 1": rope_rotate(x, m + 1, theta),
        "theta 10000": rope_rotate(x, m, 10000.0),
    }


def _turn(x: Tensor, angle: Tensor) -> Tensor:
    half = x.numel() // 2
    a, b = x[:half], x[half:]
    return torch.cat((a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()))


_ROPE_HINTS = {
    "interleaved": "you rotated neighbouring features (2i, 2i+1), the layout of the RoFormer paper "
    "and Meta's complex-number code. gptlab and Hugging Face pair feature i with i + d/2 "
    "(rotate_half); both are RoPE, but weights trained with one layout need that layout",
    "backwards": "you turned the pair the wrong way: (a, b) -> (a cos + b sin, b cos - a sin) is "
    "a rotation by -angle. Multiply a + ib by e^{+i angle}",
    "exponent i/d": "the frequency of pair i is theta^(-2i/d), not theta^(-i/d): i counts pairs, "
    "and 2i/d runs from 0 to just below 1",
    "position + 1": "your positions are off by one: the first token is position 0 and is not "
    "rotated at all",
    "theta 10000": "you ignored the theta argument and used 10000; SmolLM2 uses 100000",
}


@exercise("11.1", "rotate a head vector with RoPE by hand")
def check_rope_rotate(answer: Any) -> str | None:
    """``rope_rotate(x, position, theta)`` for a ``(d,)`` head vector must equal gptlab's RoPE."""
    fn = _callable(answer, "rope_rotate", "11.1")
    gen = torch.Generator().manual_seed(111)
    for d, m, theta in ((8, 0, 10000.0), (8, 1, 10000.0), (8, 7, 100000.0), (16, 42, 500.0)):
        x = torch.randn(d, generator=gen)
        want = _gptlab_rope(x, m, theta).double()
        got = _tensor(fn(x.clone(), m, theta), "rope_rotate", (d,))
        if _close(got, want, 1e-4):
            continue
        case = f"for d={d}, position={m}, theta={theta:g}"
        for name, wrong in _rope_mistakes(x, m, theta).items():
            if _close(got, wrong, 1e-4):
                return f"{case}: {_ROPE_HINTS[name]}"
        if not torch.allclose(got.norm(), want.norm(), atol=1e-4):
            return f"{case} the length of x changed ({want.norm():.4f} -> {got.norm():.4f}); a rotation keeps it"
        if m == 0:
            return f"{case} the vector must come back unchanged: position 0 is a rotation by 0"
        return f"{case} expected {[round(v, 4) for v in want.tolist()]}, got {[round(v, 4) for v in got.tolist()]}"
    return None


# --- 11.2 which KV head serves query head h ------------------------------------------------------


def _repeat_kv_map(n_head: int, n_kv_head: int) -> list[int]:
    """Read the mapping off gptlab's repeat_kv: KV head j holds the value j everywhere."""
    k = torch.arange(n_kv_head, dtype=torch.float32).view(1, n_kv_head, 1, 1)
    return [int(v) for v in repeat_kv(k, n_head // n_kv_head)[0, :, 0, 0]]


@exercise("11.2", "which key/value head serves query head h")
def check_kv_head_for(answer: Any) -> str | None:
    """``kv_head_for(h, n_head, n_kv_head)`` must agree with ``repeat_kv`` for every head, and raise
    ``ValueError`` when ``n_kv_head`` does not divide ``n_head`` or ``h`` is not a head."""
    fn = _callable(answer, "kv_head_for", "11.2")
    for n_head, n_kv in ((9, 3), (8, 2), (32, 8), (12, 12), (6, 1)):
        want = _repeat_kv_map(n_head, n_kv)
        got = [_whole(fn(h, n_head, n_kv), "kv_head_for") for h in range(n_head)]
        if got == want:
            continue
        case = (
            f"with n_head={n_head}, n_kv_head={n_kv} you map query heads 0..{n_head - 1} to {got}"
        )
        if got == [h % n_kv for h in range(n_head)]:
            return (
                f"{case}: that deals the heads out round-robin (h % n_kv_head). repeat_kv repeats "
                "each KV head for a block of consecutive query heads: h // (n_head // n_kv_head)"
            )
        if got == [h // n_kv for h in range(n_head)]:
            return (
                f"{case}: you divided by n_kv_head, but a group has n_head // n_kv_head query "
                "heads; divide h by the group size"
            )
        return f"{case}; repeat_kv gives {want}"
    for h, n_head, n_kv, why in ((0, 9, 2, "2 does not divide 9"), (9, 9, 3, "h=9 of 9 heads")):
        try:
            out = fn(h, n_head, n_kv)
        except ValueError:
            continue
        return f"kv_head_for({h}, {n_head}, {n_kv}) returned {out!r}; raise ValueError ({why})"
    return None


# --- 11.3 KV-cache bytes ------------------------------------------------------------------------


def _allocated_bytes(config: GPTConfig | LlamaConfig, n_tokens: int, dtype: torch.dtype) -> int:
    """Bytes a real gptlab KVCache allocates (on the meta device: shapes, no memory)."""
    n_kv = config.n_kv_head if isinstance(config, LlamaConfig) else config.n_head
    cache = KVCache(config.n_layer, n_tokens)
    cache.allocate(1, n_kv, config.head_dim, dtype=dtype, device="meta")
    tensors = [t for t in cache.k + cache.v if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


@exercise("11.3", "the bytes of a KV cache")
def check_kv_cache_bytes(answer: Any) -> str | None:
    """``kv_cache_bytes(config, n_tokens, dtype)`` must equal what a gptlab KVCache allocates."""
    fn = _callable(answer, "kv_cache_bytes", "11.3")
    smol = LlamaConfig.preset("smollm2-135m")
    cases = [
        (GPTConfig.preset("gpt2"), 1024, torch.float32),
        (smol, 8192, torch.bfloat16),
        (smol, 1, torch.float32),
        (
            LlamaConfig(n_layer=4, n_head=8, n_kv_head=1, n_embd=256, block_size=512),
            100,
            torch.float16,
        ),
        (GPTConfig.preset("nano"), 64, torch.float64),
    ]
    for config, n, dtype in cases:
        want = _allocated_bytes(config, n, dtype)
        got = _whole(fn(config, n, dtype), "kv_cache_bytes")
        if got == want:
            continue
        kind = type(config).__name__
        case = f"{kind}(n_layer={config.n_layer}, n_head={config.n_head}"
        if isinstance(config, LlamaConfig):
            case += f", n_kv_head={config.n_kv_head}"
        case += f", n_embd={config.n_embd}), {n} tokens, {str(dtype).removeprefix('torch.')}"
        if got * 2 == want:
            return f"{case}: you counted only keys (or only values); the cache holds both, x 2"
        if got == want * 8:
            return f"{case}: that is bits; a byte is 8 bits (dtype.itemsize counts bytes)"
        if isinstance(config, LlamaConfig) and got * config.n_kv_head == want * config.n_head:
            return (
                f"{case}: you counted all {config.n_head} query heads, but GQA stores only the "
                f"{config.n_kv_head} key/value heads: that is its whole saving"
            )
        if got * dtype.itemsize == want * 4:
            return f"{case}: you assumed 4 bytes per number; use dtype.itemsize ({dtype.itemsize})"
        return f"{case}: a gptlab KVCache allocates {want:,} bytes, you said {got:,}"
    return None


# --- 11.4 RMSNorm's backward pass ------------------------------------------------------------------


def _autograd_rms_backward(x: Tensor, weight: Tensor, g: Tensor, eps: float) -> Tensor:
    norm = RMSNorm(x.shape[-1], eps).double()
    with torch.no_grad():
        norm.weight.copy_(weight)
    leaf = x.detach().double().requires_grad_(True)
    norm(leaf).backward(g.double())
    return leaf.grad


def _rms_mistakes(x: Tensor, w: Tensor, g: Tensor, eps: float) -> dict[str, Tensor]:
    x, w, g = x.double(), w.double(), g.double()
    r = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    r0 = torch.sqrt(x.pow(2).mean(-1, keepdim=True))
    u = w * g
    C = x.shape[-1]
    return {
        "r constant": u / r,
        "no weight": g / r - x * (g * x).mean(-1, keepdim=True) / r**3,
        "sum": u / r - x * (u * x).sum(-1, keepdim=True) / r**3,
        "sign": u / r + x * (u * x).mean(-1, keepdim=True) / r**3,
        "no eps": u / r0 - x * (u * x).mean(-1, keepdim=True) / r0**3,
        "r squared": u / r - x * (u * x).mean(-1, keepdim=True) / r**2,
        "per C": u / r - x * (u * x).mean(-1, keepdim=True) / (r**3 * C),
    }


_RMS_HINTS = {
    "r constant": "you treated r = rms(x) as a constant; it depends on x too, and its derivative "
    "adds a second term, - x · mean(w g x) / r³",
    "no weight": "the upstream gradient reaches x̂ = x / r through the gain: use u = weight * grad_out",
    "sum": "r is a MEAN over the C features, so the second term has mean(u x), not sum(u x)",
    "sign": "the second term has a minus sign: a larger x makes r larger and x / r smaller",
    "no eps": "you dropped eps from r; with inputs as small as these it matters",
    "r squared": "the second term divides by r³: one r from x / r and r² from dr/dx = x / (C r)",
    "per C": "you divided by C twice: the mean already has it",
}


@exercise("11.4", "RMSNorm's gradient by hand")
def check_rms_norm_backward(answer: Any) -> str | None:
    """``rms_norm_backward(x, weight, grad_out, eps)`` must equal autograd through gptlab's RMSNorm."""
    fn = _callable(answer, "rms_norm_backward", "11.4")
    gen = torch.Generator().manual_seed(114)
    for shape, scale, eps in (((6,), 1.0, 1e-5), ((2, 3, 16), 2.0, 1e-5), ((4, 8), 3e-3, 1e-5)):
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
        w = 1 + 0.5 * torch.randn(shape[-1], generator=gen, dtype=torch.float64)
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        want = _autograd_rms_backward(x, w, g, eps)
        got = _tensor(fn(x.clone(), w.clone(), g.clone(), eps), "rms_norm_backward", shape)
        if torch.allclose(got, want, rtol=1e-5, atol=1e-8 / scale):
            continue
        case = f"for x of shape {shape} (scale {scale:g}), eps={eps:g}"
        for name, wrong in _rms_mistakes(x, w, g, eps).items():
            if torch.allclose(got, wrong, rtol=1e-5, atol=1e-8 / scale):
                return f"{case}: {_RMS_HINTS[name]}"
        return (
            f"{case} your gradient differs from autograd's by up to {(got - want).abs().max():.3g}"
        )
    return None


# --- 11.5 SwiGLU's hidden size at equal parameters --------------------------------------------------


@exercise("11.5", "SwiGLU's width at equal parameters")
def check_swiglu_hidden(answer: Any) -> str | None:
    """``swiglu_hidden(n_embd, multiple_of)`` must give Llama's widths (11,008 for C = 4096)."""
    fn = _callable(answer, "swiglu_hidden", "11.5")
    cases = [(576, 1), (576, 256), (4096, 256), (5120, 256), (128, 1), (128, 32), (768, 64)]
    for C, k in cases:
        want = swiglu_hidden(C, k)
        got = _whole(fn(C, k), "swiglu_hidden")
        if got == want:
            continue
        case = f"swiglu_hidden({C}, {k}) returned {got:,}"
        h = 2 * 4 * C / 3
        if got in (4 * C, -(-4 * C // k) * k):
            return f"{case}: that is the GELU MLP's 4C. SwiGLU has THREE C x h matrices, not two"
        if got == -(-int(2 * C / 3) // k) * k:
            return f"{case}: that is 2/3 of C; SwiGLU keeps 2/3 of the GELU MLP's width 4C"
        if got in ((int(h) // k) * k, round(int(h) / k) * k):
            return (
                f"{case}: round UP to a multiple of {k}, not down or to the nearest one: Llama "
                "never makes the layer smaller than 2/3 · 4C"
            )
        if got == -(-math.ceil(h) // k) * k:
            return f"{case}: truncate 8C/3 to an int first, as Llama's code does (int(2 * 4C / 3))"
        return f"{case}, expected {want:,}"
    return None
