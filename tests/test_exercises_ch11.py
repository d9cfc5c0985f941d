"""Each chapter-11 checker accepts a right answer and rejects the usual wrong ones with a useful hint.

The reference answers in gptlab.exercises.ch11 are themselves checked against gptlab's modules
(RoPE, repeat_kv, a real KVCache, autograd through RMSNorm) and against published model sizes.
"""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.attention import repeat_kv
from gptlab.exercises import NotSolved, ch11, check, registered
from gptlab.llama import Llama, LlamaConfig, RMSNorm, RotaryEmbedding, apply_rotary
from gptlab.model import GPT, GPTConfig


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_11_exercises_are_registered():
    assert [k for k in registered() if k.startswith("11.")] == [
        "11.1",
        "11.2",
        "11.3",
        "11.4",
        "11.5",
    ]


def test_checkers_reject_non_callables_and_stubs(capsys):
    checkers = (
        ch11.check_rope_rotate,
        ch11.check_kv_head_for,
        ch11.check_kv_cache_bytes,
        ch11.check_rms_norm_backward,
        ch11.check_swiglu_hidden,
    )
    for checker in checkers:
        assert "pass your function itself" in _hint(checker, 42)

    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("11.1", "11.2", "11.3", "11.4", "11.5"):
        assert check(exercise_id, stub) is False
        assert "NotImplementedError" in capsys.readouterr().out


# 11.1 RoPE by hand ------------------------------------------------------------------------------


def test_reference_rope_equals_gptlab_rotary_embedding():
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cos, sin = RotaryEmbedding(16, 5, 500.0)(0, 5, torch.float64, x.device)  # float32 table
    rotated = apply_rotary(x, cos, sin)
    for m in range(5):
        got = ch11.rope_rotate(x[1, 2, m], m, 500.0)
        torch.testing.assert_close(got, rotated[1, 2, m], atol=1e-6, rtol=1e-6)


def _rope(x, m, theta, *, interleaved=False, sign=1.0, exponent=2.0, shift=0, fixed_theta=None):
    """RoPE with one of the usual mistakes switched on."""
    d = x.numel()
    theta = fixed_theta or theta
    i = torch.arange(d // 2, dtype=torch.float64)
    angle = sign * (m + shift) * theta ** (-exponent * i / d)
    if interleaved:
        a, b = x[0::2].double(), x[1::2].double()
    else:
        a, b = x[: d // 2].double(), x[d // 2 :].double()
    ra, rb = a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()
    return torch.stack((ra, rb), -1).flatten() if interleaved else torch.cat((ra, rb))


def test_rope_rotate_accepts_the_half_split_rotation(capsys):
    assert check("11.1", _rope) is True
    assert "correct" in capsys.readouterr().out
    assert check("11.1", ch11.rope_rotate, quiet=True) is True


def test_rope_rotate_rejects_common_mistakes():
    checker = ch11.check_rope_rotate
    assert "rotate_half" in _hint(checker, lambda x, m, t: _rope(x, m, t, interleaved=True))
    assert "wrong way" in _hint(checker, lambda x, m, t: _rope(x, m, t, sign=-1.0))
    assert "theta^(-2i/d)" in _hint(checker, lambda x, m, t: _rope(x, m, t, exponent=1.0))
    assert "off by one" in _hint(checker, lambda x, m, t: _rope(x, m, t, shift=1))
    assert "ignored the theta" in _hint(checker, lambda x, m, t: _rope(x, m, t, fixed_theta=1e4))
    assert "unchanged" in _hint(checker, lambda x, m, t: x.flip(0))
    assert "length of x changed" in _hint(checker, lambda x, m, t: 2 * _rope(x, m, t))
    assert "shape" in _hint(checker, lambda x, m, t: x[:2])


# 11.2 which KV head serves query head h -----------------------------------------------------------


def test_reference_kv_head_for_matches_repeat_kv():
    k = torch.randn(1, 3, 4, 8)
    expanded = repeat_kv(k, 3)  # SmolLM2: 9 query heads, 3 KV heads
    for h in range(9):
        torch.testing.assert_close(expanded[0, h], k[0, ch11.kv_head_for(h, 9, 3)])
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        ch11.kv_head_for(0, 9, 2)


def kv_head_for(h, n_head, n_kv_head):
    if n_head % n_kv_head or not 0 <= h < n_head:
        raise ValueError("not a head of this layout")
    return h * n_kv_head // n_head  # the same as h // (n_head // n_kv_head)


def test_kv_head_for_accepts_the_block_mapping(capsys):
    assert check("11.2", kv_head_for) is True
    assert "correct" in capsys.readouterr().out


def test_kv_head_for_rejects_common_mistakes():
    checker = ch11.check_kv_head_for
    assert "round-robin" in _hint(checker, lambda h, n, k: h % k)
    assert "group size" in _hint(checker, lambda h, n, k: h // k)
    assert "raise ValueError" in _hint(checker, lambda h, n, k: h // max(1, n // k))
    assert "repeat_kv gives" in _hint(checker, lambda h, n, k: 0)
    assert "int" in _hint(checker, lambda h, n, k: "zero")


# 11.3 KV-cache bytes ------------------------------------------------------------------------------


def test_reference_kv_cache_bytes_equals_a_real_cache():
    llama = Llama(LlamaConfig(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                              n_embd=32, intermediate_size=48))  # fmt: skip
    gpt = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=3, n_head=2, n_embd=16))
    for model in (llama, gpt):
        cache = model.new_kv_cache(1)
        allocated = sum(t.numel() * t.element_size() for t in cache.k + cache.v)
        assert ch11.kv_cache_bytes(model.config, 16, torch.float32) == allocated
    # GPT-2 small: 2 · 12 layers · 12 heads · 64 · 4 bytes = 73,728 bytes per token.
    assert ch11.kv_cache_bytes(GPTConfig.preset("gpt2"), 1, torch.float32) == 73_728


def test_kv_cache_bytes_accepts_the_formula(capsys):
    def kv_bytes(config, n_tokens, dtype):
        n_kv = getattr(config, "n_kv_head", config.n_head)
        return 2 * config.n_layer * n_kv * config.head_dim * n_tokens * dtype.itemsize

    assert check("11.3", kv_bytes) is True
    assert "correct" in capsys.readouterr().out


def test_kv_cache_bytes_rejects_common_mistakes():
    checker = ch11.check_kv_cache_bytes

    def formula(c, n, dt, *, two=2, heads=None, size=None, bits=1):
        n_kv = heads(c) if heads else getattr(c, "n_kv_head", c.n_head)
        return two * c.n_layer * n_kv * c.head_dim * n * (size or dt.itemsize) * bits

    assert "x 2" in _hint(checker, lambda c, n, dt: formula(c, n, dt, two=1))
    assert "bits" in _hint(checker, lambda c, n, dt: formula(c, n, dt, bits=8))
    assert "query heads" in _hint(
        checker, lambda c, n, dt: formula(c, n, dt, heads=lambda c: c.n_head)
    )
    assert "4 bytes" in _hint(checker, lambda c, n, dt: formula(c, n, dt, size=4))
    assert "allocates" in _hint(checker, lambda c, n, dt: 1000)


# 11.4 RMSNorm's backward pass ---------------------------------------------------------------------


def test_reference_rms_norm_backward_equals_autograd_and_is_orthogonal_to_x():
    x = torch.randn(3, 10, dtype=torch.float64)
    w = torch.rand(10, dtype=torch.float64) + 0.5
    g = torch.randn(3, 10, dtype=torch.float64)
    norm = RMSNorm(10, eps=0.0).double()
    with torch.no_grad():
        norm.weight.copy_(w)
    leaf = x.clone().requires_grad_(True)
    norm(leaf).backward(g)
    dx = ch11.rms_norm_backward(x, w, g, eps=0.0)
    torch.testing.assert_close(dx, leaf.grad)
    # Scale invariance: RMSNorm(a x) = RMSNorm(x), so moving x along itself changes nothing.
    torch.testing.assert_close((dx * x).sum(-1), torch.zeros(3, dtype=torch.float64))


def _rms_backward(x, w, g, eps, *, second=True, weight=True, reduce="mean", sign=-1, use_eps=True):
    r = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + (eps if use_eps else 0.0))
    u = w * g if weight else g
    dot = (u * x).mean(-1, keepdim=True) if reduce == "mean" else (u * x).sum(-1, keepdim=True)
    return u / r + (sign * x * dot / r**3 if second else 0)


def test_rms_norm_backward_accepts_the_derivation(capsys):
    assert check("11.4", _rms_backward) is True
    assert "correct" in capsys.readouterr().out


def test_rms_norm_backward_rejects_common_mistakes():
    checker = ch11.check_rms_norm_backward
    assert "constant" in _hint(checker, lambda x, w, g, e: _rms_backward(x, w, g, e, second=False))
    assert "gain" in _hint(checker, lambda x, w, g, e: _rms_backward(x, w, g, e, weight=False))
    assert "MEAN" in _hint(checker, lambda x, w, g, e: _rms_backward(x, w, g, e, reduce="sum"))
    assert "minus sign" in _hint(checker, lambda x, w, g, e: _rms_backward(x, w, g, e, sign=1))
    assert "eps" in _hint(checker, lambda x, w, g, e: _rms_backward(x, w, g, e, use_eps=False))
    assert "differs from autograd" in _hint(checker, lambda x, w, g, e: 2 * g)


# 11.5 SwiGLU's width -------------------------------------------------------------------------------


def test_reference_swiglu_hidden_matches_published_models():
    assert ch11.swiglu_hidden(576) == LlamaConfig.preset("smollm2-135m").intermediate_size
    assert ch11.swiglu_hidden(4096, 256) == 11008  # Llama 2 7B
    assert ch11.swiglu_hidden(5120, 256) == 13824  # Llama 2 13B
    C, h = 576, ch11.swiglu_hidden(576)
    assert 3 * C * h == 2 * C * 4 * C  # exactly the GELU MLP's weights


def test_swiglu_hidden_accepts_llamas_rule(capsys):
    def swiglu_hidden(n_embd, multiple_of):
        h = int(2 * 4 * n_embd / 3)
        return math.ceil(h / multiple_of) * multiple_of

    assert check("11.5", swiglu_hidden) is True
    assert "correct" in capsys.readouterr().out


def test_swiglu_hidden_rejects_common_mistakes():
    checker = ch11.check_swiglu_hidden
    assert "THREE" in _hint(checker, lambda C, k: 4 * C)
    assert "2/3 of C" in _hint(checker, lambda C, k: math.ceil(int(2 * C / 3) / k) * k)
    assert "round UP" in _hint(checker, lambda C, k: int(8 * C / 3) // k * k)
    assert "round UP" in _hint(checker, lambda C, k: round(int(8 * C / 3) / k) * k)
    assert "truncate" in _hint(checker, lambda C, k: math.ceil(math.ceil(8 * C / 3) / k) * k)
    assert "int" in _hint(checker, lambda C, k: "wide")
