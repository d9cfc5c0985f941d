"""Chapter 3 checkers: each accepts a right answer and rejects the usual wrong ones with a hint."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.exercises import check
from gptlab.exercises.ch03 import expected_initial_loss, gpt_parameter_count, residual_stream_std
from gptlab.model import GPT, GPTConfig


def _verdict(exercise_id, answer, capsys):
    ok = check(exercise_id, answer)
    return ok, capsys.readouterr().out


# --- 3.1 RMSNorm -----------------------------------------------------------------------------


def test_3_1_accepts_rms_norm_and_matches_torch(capsys):
    def rms_norm(x, weight, eps=1e-5):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    ok, out = _verdict("3.1", rms_norm, capsys)
    assert ok and "correct" in out
    # the checker's formula is PyTorch's own RMSNorm
    ok, out = _verdict("3.1", lambda x, w, eps=1e-5: F.rms_norm(x, x.shape[-1:], w, eps), capsys)
    assert ok


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda x, w, eps=1e-5: F.layer_norm(x, x.shape[-1:], w, None, eps), "does not subtract"),
        (
            lambda x, w, eps=1e-5: x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * w,
            "inside the square root",
        ),
        (lambda x, w, eps=1e-5: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), "scale by"),
        (lambda x, w, eps=1e-5: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * w, "MEAN"),
        (lambda x, w, eps=1e-5: x / x.abs().mean(-1, keepdim=True) * w, "off by up to"),
        (lambda x, w, eps=1e-5: x.mean(-1), "output shape"),
    ],
)
def test_3_1_rejects_wrong_rms_norms(wrong, hint, capsys):
    ok, out = _verdict("3.1", wrong, capsys)
    assert not ok and hint in out


# --- 3.2 post-norm block ---------------------------------------------------------------------


def test_3_2_accepts_post_norm(capsys):
    def block(x, ln_1, attn, ln_2, mlp):
        x = ln_1(x + attn(x))
        return ln_2(x + mlp(x))

    ok, out = _verdict("3.2", block, capsys)
    assert ok and "correct" in out


def test_3_2_rejects_the_gptlab_pre_norm_block(capsys):
    """The package's own (pre-norm) block, driven through the same sublayers, is not post-norm."""
    from gptlab.model import GPT, GPTConfig

    blk = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=12)).transformer.h[
        0
    ]

    class AttnStandIn(torch.nn.Module):  # the block passes cache arguments to its attention
        def __init__(self, attn):
            super().__init__()
            self.inner = attn

        def forward(self, x, **cache_args):
            return self.inner(x)

    def via_package(x, ln_1, attn, ln_2, mlp):
        blk.ln_1, blk.attn, blk.ln_2, blk.mlp = ln_1, AttnStandIn(attn), ln_2, mlp
        return blk(x)

    ok, out = _verdict("3.2", via_package, capsys)
    assert not ok and "that is the pre-norm block" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (
            lambda x, ln_1, attn, ln_2, mlp: ln_1(x + attn(x)) + mlp(ln_1(x + attn(x))),
            "second addition",
        ),
        (lambda x, ln_1, attn, ln_2, mlp: ln_2(mlp(ln_1(attn(x)))), "residual"),
        (
            lambda x, ln_1, attn, ln_2, mlp: (x + ln_1(attn(x))) + ln_2(mlp(x + ln_1(attn(x)))),
            "SUM",
        ),
        (lambda x, ln_1, attn, ln_2, mlp: x, "differs"),
        (lambda x, ln_1, attn, ln_2, mlp: x[0], "output shape"),
    ],
)
def test_3_2_rejects_other_blocks(wrong, hint, capsys):
    ok, out = _verdict("3.2", wrong, capsys)
    assert not ok and hint in out


# --- 3.3 is it causal? ----------------------------------------------------------------------


def _is_causal(forward, vocab_size, length):
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(vocab_size, (1, length), generator=gen)
    base = forward(idx)
    for t in range(length):
        changed = idx.clone()
        changed[0, t] = (idx[0, t] + 1) % vocab_size
        if not torch.allclose(forward(changed)[:, :t], base[:, :t]):
            return False
    return True


def test_3_3_accepts_a_correct_test(capsys):
    ok, out = _verdict("3.3", _is_causal, capsys)
    assert ok and "correct" in out


def test_3_3_leaves_the_readers_random_state_alone(capsys):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check("3.3", _is_causal, quiet=True)
    assert torch.equal(torch.rand(3), expected)


def _only_first_token(forward, vocab_size, length):  # changes token 0 only: sees no leak
    idx = torch.zeros(1, length, dtype=torch.long)
    changed = idx.clone()
    changed[0, 0] = 1
    return bool(torch.allclose(forward(changed)[:, :0], forward(idx)[:, :0]))


def _only_last_token(forward, vocab_size, length):  # misses leaks that end before the last token
    idx = torch.zeros(1, length, dtype=torch.long)
    changed = idx.clone()
    changed[0, -1] = 1
    return bool(torch.allclose(forward(changed)[:, :-1], forward(idx)[:, :-1]))


def _too_strict(forward, vocab_size, length):  # also demands that LATER positions stay put
    idx = torch.zeros(1, length, dtype=torch.long)
    for t in range(length):
        changed = idx.clone()
        changed[0, t] = 1
        out, base = forward(changed), forward(idx)
        if not torch.allclose(
            torch.cat([out[:, :t], out[:, t + 1 :]], 1),
            torch.cat([base[:, :t], base[:, t + 1 :]], 1),
        ):
            return False
    return True


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_only_first_token, "position 0 sees token 1 is NOT causal"),
        (_only_last_token, "position 0 sees token 1 is NOT causal"),
        (_too_strict, "gptlab's GPT (causal) is causal"),
        (lambda forward, V, T: True, "is NOT causal"),
        (lambda forward, V, T: "yes", "return True or False"),
        (True, "pass your function itself"),
    ],
)
def test_3_3_rejects_wrong_tests(wrong, hint, capsys):
    ok, out = _verdict("3.3", wrong, capsys)
    assert not ok and hint in out


# --- 3.4 parameter count ----------------------------------------------------------------------


def test_formula_gives_gpt2_small_count():
    assert gpt_parameter_count(50257, 1024, 12, 768) == 124_439_808


def test_formula_matches_gptlab_model():
    from gptlab.model import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=3, n_head=2, n_embd=24)
    assert GPT(cfg).num_parameters() == gpt_parameter_count(97, 16, 3, 24)


def test_formula_rejects_bad_input():
    with pytest.raises(ValueError, match="n_embd must be a positive int"):
        gpt_parameter_count(10, 10, 1, 0)


def test_3_4_accepts_the_formula(capsys):
    def count(V, T, L, d):
        return (
            V * d
            + T * d
            + L * (2 * 2 * d + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d)
            + 2 * d
        )

    ok, out = _verdict("3.4", count, capsys)
    assert ok and "correct" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda V, T, L, d: gpt_parameter_count(V, T, L, d) + V * d, "tied to wte"),
        (lambda V, T, L, d: gpt_parameter_count(V, T, L, d) - T * d, "position embeddings"),
        (lambda V, T, L, d: gpt_parameter_count(V, T, L, d) - L * 4 * d - 2 * d, "LayerNorms"),
        (lambda V, T, L, d: gpt_parameter_count(V, T, L, d) - L * 9 * d, "biases"),
        (lambda V, T, L, d: V * d + T * d + L * 12 * d * d, "linear in C"),
        (lambda V, T, L, d: gpt_parameter_count(V, T, L, d) + 1, "off by +1"),
        (lambda V, T, L, d: "124M", "return an int"),
    ],
)
def test_3_4_rejects_wrong_counts(wrong, hint, capsys):
    ok, out = _verdict("3.4", wrong, capsys)
    assert not ok and hint in out


# --- 3.5 initial loss -------------------------------------------------------------------------


def test_expected_initial_loss_matches_simulation():
    """ln V + σ²/2 is what cross-entropy of random N(0, σ²) logits averages to."""
    gen = torch.Generator().manual_seed(0)
    V, sigma, n = 2000, 0.8, 4000  # standard error of the mean ≈ σ/√n = 0.013
    logits = torch.randn(n, V, generator=gen) * sigma
    targets = torch.randint(V, (n,), generator=gen)
    sim = F.cross_entropy(logits, targets).item()
    assert sim == pytest.approx(expected_initial_loss(V, sigma), abs=0.05)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        expected_initial_loss(1, 0.1)


def test_3_5_accepts_formula_and_simulation(capsys):
    ok, out = _verdict("3.5", lambda V, s: math.log(V) + s * s / 2, capsys)
    assert ok and "correct" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda V, s: math.log(V), "σ²/2"),
        (lambda V, s: math.log2(V), "natural logarithm"),
        (lambda V, s: 1 / V, "negative log"),
        (lambda V, s: math.log(V) + s, "expected about"),
        (lambda V, s: "ln V", "return a float"),
    ],
)
def test_3_5_rejects_wrong_estimates(wrong, hint, capsys):
    ok, out = _verdict("3.5", wrong, capsys)
    assert not ok and hint in out


# --- 3.6 a model without positions ------------------------------------------------------------


def _nope_copy(model):
    nope = copy.deepcopy(model)
    with torch.no_grad():
        nope.transformer.wpe.weight.zero_()
    return nope


def prefix_order_effect(model, idx, perm, *, zero=True, keep_last=True, last_only=True):
    nope = _nope_copy(model) if zero else model
    moved = torch.cat([idx[:, :-1][:, perm], idx[:, -1:]], dim=1) if keep_last else idx[:, perm]
    with torch.no_grad():
        a, b = nope(idx)[0], nope(moved)[0]
    if last_only:
        a, b = a[0, -1], b[0, -1]
    elif not keep_last:
        a = a[:, :-1]
    return (a - b).abs().max().item()


def test_nope_claim_one_layer_ignores_the_prefix_order_two_layers_do_not():
    """The fact exercise 3.6 rests on, checked numerically on gptlab's GPT in float64."""
    torch.manual_seed(0)
    idx, perm = torch.randint(50, (1, 10)), torch.randperm(9)
    effects = {}
    for n_layer in (1, 2, 3):
        cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=n_layer, n_head=2, n_embd=16)
        effects[n_layer] = prefix_order_effect(GPT(cfg).double().eval(), idx, perm)
    assert effects[1] < 1e-12
    assert effects[2] > 1e-5 and effects[3] > 1e-5


def test_3_6_accepts_the_experiment_and_leaves_the_model_alone(capsys):
    ok, out = _verdict("3.6", prefix_order_effect, capsys)
    assert ok and "correct" in out


def test_3_6_rejects_common_mistakes(capsys):
    def in_place(model, idx, perm):
        with torch.no_grad():
            model.transformer.wpe.weight.zero_()
        return prefix_order_effect(model, idx, perm)

    def on_probabilities(model, idx, perm):
        nope, moved = _nope_copy(model), torch.cat([idx[:, :-1][:, perm], idx[:, -1:]], dim=1)
        with torch.no_grad():
            a, b = (torch.softmax(nope(x)[0][0, -1], dim=-1) for x in (idx, moved))
        return (a - b).abs().max().item()

    cases = [
        (in_place, "changed the caller's model"),
        (on_probabilities, "not the probabilities"),
        (lambda m, i, p: prefix_order_effect(m, i, p, zero=False), "WITH its position embeddings"),
        (lambda m, i, p: prefix_order_effect(m, i, p, keep_last=False), "drops the last token"),
        (lambda m, i, p: prefix_order_effect(m, i, p, last_only=False), "compared every position"),
        (lambda m, i, p: 2 * prefix_order_effect(m, i, p) + 1e-3, "expected a largest change"),
        (lambda m, i, p: "small", "should return a float"),
    ]
    for wrong, hint in cases:
        ok, out = _verdict("3.6", wrong, capsys)
        assert not ok and hint in out, (hint, out)


# --- 3.7 the residual stream's growth with depth ----------------------------------------------


def test_residual_stream_std_formula():
    assert residual_stream_std(0.0, 1.0, 8, False) == pytest.approx(4.0)  # √16
    assert residual_stream_std(0.0, 1.0, 8, True) == pytest.approx(1.0)  # depth-independent
    assert residual_stream_std(0.3, 0.4, 1, False) == pytest.approx(math.sqrt(0.09 + 0.32))
    with pytest.raises(ValueError, match="n_layer"):
        residual_stream_std(0.1, 0.1, 0, True)


def test_residual_stream_std_is_what_independent_updates_give():
    gen = torch.Generator().manual_seed(0)
    s0, u, L = 0.5, 0.3, 6
    for scaled in (False, True):
        x = s0 * torch.randn(200_000, generator=gen, dtype=torch.float64)
        for _ in range(2 * L):
            x = x + u / (math.sqrt(2 * L) if scaled else 1) * torch.randn(
                200_000, generator=gen, dtype=torch.float64
            )
        assert x.std().item() == pytest.approx(residual_stream_std(s0, u, L, scaled), rel=0.01)


def test_3_7_accepts_the_formula(capsys):
    def stream_std(embed_std, update_std, n_layer, scaled):
        var = embed_std**2 + 2 * n_layer * update_std**2 / (2 * n_layer if scaled else 1)
        return math.sqrt(var)

    ok, out = _verdict("3.7", stream_std, capsys)
    assert ok and "correct" in out
    ok, _ = _verdict(
        "3.7", lambda s0, u, L, scaled: torch.tensor(stream_std(s0, u, L, scaled)), capsys
    )
    assert ok


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda s0, u, L, sc: s0 + 2 * L * u / (math.sqrt(2 * L) if sc else 1), "VARIANCES"),
        (lambda s0, u, L, sc: math.sqrt(s0**2 + L * u**2 / (L if sc else 1)), "TWO sublayers"),
        (
            lambda s0, u, L, sc: math.sqrt(s0**2 + 2 * L * u**2 / (math.sqrt(2 * L) if sc else 1)),
            "not by √(2L)",
        ),
        (lambda s0, u, L, sc: math.sqrt(2 * L * u**2 / (2 * L if sc else 1)), "embeddings"),
        (lambda s0, u, L, sc: math.sqrt(s0**2 + 2 * L * u**2), "ignores it"),
        (lambda s0, u, L, sc: s0**2 + 2 * L * u**2 / (2 * L if sc else 1), "the variance"),
        (lambda s0, u, L, sc: 1.0, "expected"),
    ],
)
def test_3_7_rejects_common_mistakes(wrong, hint, capsys):
    ok, out = _verdict("3.7", wrong, capsys)
    assert not ok and hint in out
