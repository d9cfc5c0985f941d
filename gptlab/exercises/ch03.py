"""Checkers for the exercises of chapter 3, "The GPT architecture".

Each checker compares the reader's answer with a reference computed here from the formula (or
with PyTorch's and gptlab's own modules), and recognises the usual mistakes so that the hint
names the one the reader made.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_initial_loss",
    "check_is_causal",
    "check_parameter_count",
    "check_post_norm_block",
    "check_prefix_order_effect",
    "check_rms_norm",
    "check_residual_stream_std",
    "expected_initial_loss",
    "gpt_parameter_count",
    "residual_stream_std",
]


def gpt_parameter_count(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> int:
    """Parameters of a GPT-2-style model with biases and a language-model head tied to ``wte``.

    Embeddings ``V·C + T·C``; per block two LayerNorms (``2·2C``), attention (``4C² + 4C``) and
    the MLP (``8C² + 5C``), i.e. ``12C² + 13C``; the final LayerNorm ``2C``; the tied head adds
    nothing.
    """
    for name, value in (
        ("vocab_size", vocab_size),
        ("block_size", block_size),
        ("n_layer", n_layer),
        ("n_embd", n_embd),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}; e.g. n_embd=768")
    C = n_embd
    return vocab_size * C + block_size * C + n_layer * (12 * C * C + 13 * C) + 2 * C


def expected_initial_loss(vocab_size: int, logit_std: float) -> float:
    """Expected cross-entropy when the logits are i.i.d. ``N(0, logit_std²)``: ``ln V + σ²/2``.

    The target's logit averages 0, and for many logits ``log Σ exp(z_i) ≈ ln(V · E[e^z]) =
    ln V + σ²/2`` (the mean of a log-normal variable), so random small logits cost slightly more
    than the perfectly uniform guess ``ln V``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    if isinstance(logit_std, bool) or not isinstance(logit_std, (int, float)) or logit_std < 0:
        raise ValueError(f"logit_std must be a number >= 0, got {logit_std!r}")
    return math.log(vocab_size) + logit_std**2 / 2


def residual_stream_std(embed_std: float, update_std: float, n_layer: int, scaled: bool) -> float:
    """Standard deviation of the residual stream after ``n_layer`` blocks, in a simple model.

    The stream starts with the embeddings (std ``embed_std``); each of the ``2·n_layer``
    sublayers (attention and MLP in every block) adds an independent update of std
    ``update_std``, divided by ``√(2·n_layer)`` when ``scaled`` (GPT-2's ``c_proj`` init).
    Independent variances add: ``√(embed_std² + 2L·update_std² / (2L if scaled else 1))``.
    """
    for name, value in (("embed_std", embed_std), ("update_std", update_std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 1:
        raise ValueError(f"n_layer must be a positive int, got {n_layer!r}")
    n_updates = 2 * n_layer
    added = n_updates * update_std**2 / (n_updates if scaled else 1)
    return math.sqrt(embed_std**2 + added)


def _tensor(out: Any, name: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise NotSolved(f"{name} should return a torch.Tensor, got {type(out).__name__}")
    return out


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=0)


def _number(out: Any, name: str, kind: type) -> Any:
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if kind is int and isinstance(out, float) and out.is_integer():
        out = int(out)
    ok = (int,) if kind is int else (int, float)
    if isinstance(out, bool) or not isinstance(out, ok):
        raise NotSolved(
            f"{name} should return a{'n' if kind is int else ''} {kind.__name__}, "
            f"got {type(out).__name__}"
        )
    return out


# --- 3.1 RMSNorm --------------------------------------------------------------------------------


@exercise("3.1", "RMSNorm, LayerNorm's simpler sibling")
def check_rms_norm(answer: Any) -> str | None:
    """``rms_norm(x, weight, eps)`` must equal ``x / sqrt(mean(x², -1) + eps) * weight``."""
    rms_norm = _callable(answer, "rms_norm", "3.1")
    gen = torch.Generator().manual_seed(31)
    for shape, offset in (((2, 5, 16), 0.0), ((3, 8), 4.0), ((1, 4, 7), -5.0)):
        d = shape[-1]
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + offset
        weight = torch.randn(d, generator=gen, dtype=torch.float64)
        eps = 1e-5
        ms = x.pow(2).mean(-1, keepdim=True)
        want = x / torch.sqrt(ms + eps) * weight
        got = _tensor(rms_norm(x.clone(), weight, eps), "rms_norm")
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


# --- 3.2 the post-norm block --------------------------------------------------------------------


def _sublayers(d: int, gen: torch.Generator) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    ln_1, ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
    attn = nn.Sequential(nn.Linear(d, d), nn.Tanh())  # a stand-in: any (B, T, d) -> (B, T, d) map
    mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
    with torch.no_grad():
        for module in (ln_1, ln_2, attn, mlp):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return ln_1, attn, ln_2, mlp


@exercise("3.2", "the original post-norm block")
def check_post_norm_block(answer: Any) -> str | None:
    """``post_norm_block(x, ln_1, attn, ln_2, mlp)`` must compute ``ln_2(h + mlp(h))``, ``h = ln_1(x + attn(x))``."""
    block = _callable(answer, "post_norm_block", "3.2")
    gen = torch.Generator().manual_seed(32)
    d = 12
    ln_1, attn, ln_2, mlp = _sublayers(d, gen)
    x = torch.randn(2, 5, d, generator=gen) * 2
    with torch.no_grad():
        h = ln_1(x + attn(x))
        want = ln_2(h + mlp(h))
        got = _tensor(block(x.clone(), ln_1, attn, ln_2, mlp), "post_norm_block")
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


# --- 3.3 is a model causal? ---------------------------------------------------------------------


def _leaky(base: Callable[[Tensor], Tensor], src: int, dst: int, vocab_size: int):
    """``base`` plus a small leak: the logits at position ``dst`` depend on the token at ``src``."""

    def forward(idx: Tensor) -> Tensor:
        logits = base(idx).clone()
        if idx.shape[1] > max(src, dst):
            logits[:, dst] += 0.1 * F.one_hot(idx[:, src], vocab_size).to(logits.dtype)
        return logits

    return forward


@exercise("3.3", "test that a model never looks ahead")
def check_is_causal(answer: Any) -> str | None:
    """``is_causal(forward, vocab_size, length)`` must tell causal models from ones that peek ahead."""
    from gptlab.model import GPT, GPTConfig  # the package's model is the causal reference

    is_causal = _callable(answer, "is_causal", "3.3")
    V, T = 23, 8
    with torch.random.fork_rng(devices=[]):  # leave the reader's random state untouched
        torch.manual_seed(33)
        gpt = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, n_embd=16)).eval()

    def causal(idx: Tensor) -> Tensor:
        with torch.no_grad():
            return gpt(idx)[0]  # (B, T, V)

    def bag_of_words(idx: Tensor) -> Tensor:  # every position sees the whole sequence
        counts = F.one_hot(idx, V).float().mean(dim=1, keepdim=True)  # (B, 1, V)
        return causal(idx) + 0.1 * counts

    cases = [
        ("gptlab's GPT (causal)", causal, True),
        ("a model whose position 0 sees token 1", _leaky(causal, 1, 0, V), False),
        ("a model whose position 2 sees token 5", _leaky(causal, 5, 2, V), False),
        (
            f"a model whose position 0 sees the last token ({T - 1})",
            _leaky(causal, T - 1, 0, V),
            False,
        ),
        ("a model that averages over all positions", bag_of_words, False),
        ("a model whose LAST position sees token 0 (allowed)", _leaky(causal, 0, T - 1, V), True),
    ]
    for name, forward, want in cases:
        got = is_causal(forward, V, T)
        if isinstance(got, Tensor) and got.numel() == 1:
            got = bool(got.item())
        if not isinstance(got, bool):
            return f"return True or False, got {type(got).__name__}"
        if got != want:
            verdict = "causal" if want else "NOT causal"
            how = (
                "change the token at each position t in turn and compare the logits at positions "
                "before t (they must not move; positions t and after may)"
            )
            return f"{name} is {verdict}, but your function returned {got}; {how}"
    return None


# --- 3.4 parameter count ------------------------------------------------------------------------

_CONFIGS = (
    (50257, 1024, 12, 768),  # GPT-2 small
    (50257, 1024, 24, 1024),  # GPT-2 medium
    (65, 64, 2, 32),
    (1000, 16, 3, 48),
)


@exercise("3.4", "count the parameters of a GPT config")
def check_parameter_count(answer: Any) -> str | None:
    """``count(vocab_size, block_size, n_layer, n_embd)`` must equal :func:`gpt_parameter_count`."""
    count = _callable(answer, "count_parameters", "3.4")
    for V, T, L, C in _CONFIGS:
        got = _number(count(V, T, L, C), "count_parameters", int)
        want = gpt_parameter_count(V, T, L, C)
        if got == want:
            continue
        args = f"(vocab_size={V}, block_size={T}, n_layer={L}, n_embd={C})"
        diff = got - want
        if diff == V * C:
            return f"{args}: you counted the LM head; it is tied to wte and adds no parameters"
        if diff == -T * C:
            return f"{args}: add the position embeddings wpe (block_size × n_embd)"
        if diff == -(L * 4 * C + 2 * C):
            return f"{args}: add the LayerNorms: 2 per block plus the final one, each 2·n_embd"
        if diff == -(L * 9 * C):
            return f"{args}: add the Linear biases: 3C + C in attention, 4C + C in the MLP"
        if diff == -(L * 13 * C + 2 * C):
            return f"{args}: you left out every bias and LayerNorm vector (the terms linear in C)"
        return f"{args}: expected {want:,}, got {got:,} (off by {diff:+,})"
    return None


# --- 3.5 the loss of an untrained model ---------------------------------------------------------


@exercise("3.5", "predict the loss of an untrained model")
def check_initial_loss(answer: Any) -> str | None:
    """``estimate(vocab_size, logit_std)`` must be within 0.01 of ``ln V + σ²/2``."""
    estimate = _callable(answer, "initial_loss", "3.5")
    for V, sigma in ((50257, 0.0), (65, 0.0), (50257, 0.5), (10000, 1.0), (50257, 0.25)):
        got = _number(estimate(V, sigma), "initial_loss", float)
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


# --- 3.6 a model without positions ----------------------------------------------------------------


def _last_logits(model: nn.Module, idx: Tensor) -> Tensor:
    with torch.no_grad():
        return model(idx)[0][0, -1]  # (V,)


def _permute_prefix(idx: Tensor, perm: Tensor) -> Tensor:
    return torch.cat([idx[:, :-1][:, perm], idx[:, -1:]], dim=1)  # the last token stays put


def _nope(model: nn.Module) -> nn.Module:
    nope = copy.deepcopy(model)
    with torch.no_grad():
        nope.transformer.wpe.weight.zero_()
    return nope


def _order_effect_variants(model: nn.Module, idx: Tensor, perm: Tensor) -> dict[str, float]:
    """The reference and the usual wrong measurements, by the hint that names each mistake."""
    nope, moved = _nope(model), _permute_prefix(idx, perm)
    with torch.no_grad():
        all_positions = (nope(idx)[0] - nope(moved)[0]).abs().max().item()
        probs = (
            (
                torch.softmax(_last_logits(nope, idx), -1)
                - torch.softmax(_last_logits(nope, moved), -1)
            )
            .abs()
            .max()
            .item()
        )
        dropped_last = (_last_logits(nope, idx) - nope(idx[:, :-1][:, perm])[0][0, -1]).abs()
    return {
        "reference": (_last_logits(nope, idx) - _last_logits(nope, moved)).abs().max().item(),
        "you measured the model WITH its position embeddings: zero "
        "model.transformer.wpe.weight in a copy first": (
            _last_logits(model, idx) - _last_logits(model, moved)
        )
        .abs()
        .max()
        .item(),
        "you compared every position; the question is about the LAST position's logits "
        "(earlier positions see a different prefix, so of course they change)": all_positions,
        "compare the logits themselves, not the probabilities after a softmax": probs,
        "idx[:, perm] drops the last token, so you compared two different positions: keep the "
        "last token in place, torch.cat([idx[:, :-1][:, perm], idx[:, -1:]], dim=1)": dropped_last.max().item(),
    }


@exercise("3.6", "what the order of the prefix changes without positions")
def check_prefix_order_effect(answer: Any) -> str | None:
    """``prefix_order_effect(model, idx, perm)``: the largest change of the last position's logits
    when the first ``T - 1`` tokens are reordered by ``perm``, measured on a copy of ``model``
    whose position embeddings are zero (NoPE); ``model`` itself must stay unchanged.

    One block of causal attention sees the prefix as a set (the result is 0 up to rounding);
    from two blocks on, the earlier positions' outputs depend on their own prefixes, and the
    last logits move.
    """
    from gptlab.model import GPT, GPTConfig  # the package's model is the reference

    effect = _callable(answer, "prefix_order_effect", "3.6")
    V, T = 37, 9
    with torch.random.fork_rng(devices=[]):  # leave the reader's random state untouched
        torch.manual_seed(36)
        models = {
            n_layer: GPT(
                GPTConfig(vocab_size=V, block_size=16, n_layer=n_layer, n_head=2, n_embd=16)
            )
            .double()
            .eval()
            for n_layer in (1, 2)
        }
        for m in models.values():  # larger weights than GPT-2's init make the effect plain
            with torch.no_grad():
                for p in m.parameters():
                    if p.dim() == 2:
                        p.mul_(10)
        idx = torch.randint(V, (1, T))
        perm = torch.randperm(T - 1)
    for n_layer, model in models.items():
        wpe_before = model.transformer.wpe.weight.detach().clone()
        got = _number(effect(model, idx.clone(), perm.clone()), "prefix_order_effect", float)
        if not torch.equal(model.transformer.wpe.weight, wpe_before):
            return (
                "your function changed the caller's model (its position embeddings): zero them in "
                "copy.deepcopy(model), so the experiment leaves the model as it found it"
            )
        variants = _order_effect_variants(model, idx, perm)
        want = variants.pop("reference")
        if abs(got - want) <= 1e-9 + 1e-6 * abs(want):
            continue
        for hint, value in variants.items():
            if abs(got - value) <= 1e-9 + 1e-6 * abs(value):
                return f"{n_layer}-layer model: {hint}"
        return (
            f"{n_layer}-layer model: expected a largest change of about {want:.3g}, got {got:.3g}; "
            "return (last logits of idx - last logits of the reordered idx).abs().max() on the "
            "model without position embeddings"
        )
    return None


# --- 3.7 the residual stream's growth with depth -------------------------------------------------

_STREAM_CASES = ((0.03, 0.1, 12, False), (0.03, 0.1, 12, True), (0.5, 0.2, 48, False),
                 (0.5, 0.2, 48, True), (0.0, 1.0, 3, False), (1.0, 0.0, 5, True))  # fmt: skip


def _stream_mistakes(s0: float, u: float, L: int, scaled: bool) -> dict[str, float]:
    n = 2 * L
    shrink = n if scaled else 1
    return {
        "you added standard deviations; independent updates add their VARIANCES, so take "
        "the square root of the summed variances": s0 + n * u / math.sqrt(shrink),
        "each block has TWO sublayers that write into the stream (attention and the MLP), so "
        "there are 2·n_layer updates, not n_layer": math.sqrt(
            s0**2 + L * u**2 / (L if scaled else 1)
        ),
        "the scaling divides each update's standard deviation by √(2L), so it divides its "
        "variance by 2L (not by √(2L))": math.sqrt(s0**2 + n * u**2 / math.sqrt(shrink)),
        "the stream starts with the embeddings: add embed_std² to the variance": math.sqrt(
            n * u**2 / shrink
        ),
        "scaled=True divides each update's std by √(2·n_layer); your answer ignores it": math.sqrt(
            s0**2 + n * u**2
        ),
        "you returned the variance; the question asks for the standard deviation": s0**2
        + n * u**2 / shrink,
    }


@exercise("3.7", "how the residual stream grows with depth")
def check_residual_stream_std(answer: Any) -> str | None:
    """``stream_std(embed_std, update_std, n_layer, scaled)`` must equal
    :func:`residual_stream_std` to within 1e-6 (relative) on several configurations."""
    stream_std = _callable(answer, "stream_std", "3.7")
    for s0, u, L, scaled in _STREAM_CASES:
        got = _number(stream_std(s0, u, L, scaled), "stream_std", float)
        want = residual_stream_std(s0, u, L, scaled)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
            continue
        case = f"(embed_std={s0}, update_std={u}, n_layer={L}, scaled={scaled})"
        for hint, value in _stream_mistakes(s0, u, L, scaled).items():
            if math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-12):
                return f"{case}: {hint}"
        return f"{case}: expected {want:.6g}, got {got:.6g}"
    return None
