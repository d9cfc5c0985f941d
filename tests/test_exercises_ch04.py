"""Chapter 4 checkers: each accepts a right answer and rejects the usual wrong ones with a hint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.exercises import check
from gptlab.exercises.ch04 import bits_per_char, inverse_sqrt_lr


def _verdict(exercise_id, answer, capsys):
    ok = check(exercise_id, answer)
    return ok, capsys.readouterr().out


# --- 4.1 stable cross-entropy -------------------------------------------------------------------


def _stable_ce(logits, targets):
    m = logits.max(dim=-1, keepdim=True).values
    lse = m.squeeze(-1) + (logits - m).exp().sum(-1).log()
    return (lse - logits.gather(-1, targets[:, None]).squeeze(-1)).mean()


def test_4_1_accepts_log_sum_exp_and_torch(capsys):
    assert _verdict("4.1", _stable_ce, capsys)[0]
    assert _verdict("4.1", lambda z, y: F.cross_entropy(z, y), capsys)[0]
    # the checker's reference is torch's own cross-entropy, on every case it uses
    z = 1000 * torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 6, 1, 2])
    torch.testing.assert_close(_stable_ce(z, y), F.cross_entropy(z, y))


def _naive(z, y):
    p = z.exp() / z.exp().sum(-1, keepdim=True)
    return -p.gather(-1, y[:, None]).log().mean()


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_naive, "overflowed"),
        (lambda z, y: -_stable_ce(z, y), "sign is flipped"),
        (lambda z, y: _stable_ce(z, y) * len(y), "SUM over the rows"),
        (lambda z, y: _stable_ce(z, y) / math.log(2), "in bits"),
        (lambda z, y: _stable_ce(z, (y + 1) % z.shape[1]), "expected"),
        (lambda z, y: "0.5", "should return a number"),
    ],
)
def test_4_1_rejects_wrong_cross_entropies(wrong, hint, capsys):
    ok, out = _verdict("4.1", wrong, capsys)
    assert not ok and hint in out


def test_4_1_stub_is_not_solved(capsys):
    def stub(logits, targets):
        raise NotImplementedError

    ok, out = _verdict("4.1", stub, capsys)
    assert not ok and "NotImplementedError" in out


# --- 4.2 bits per character ---------------------------------------------------------------------


def test_4_2_reference_formula():
    # a character model's loss in bits per character is its loss / ln 2
    assert bits_per_char(math.log(2), 10, 10) == pytest.approx(1.0)
    # 3 tokens of 2 nats each over 12 characters: 6 nats = 8.656 bits, 0.7213 bits/char
    assert bits_per_char(2.0, 3, 12) == pytest.approx(6 / math.log(2) / 12)
    with pytest.raises(ValueError, match="n_chars must be a positive int"):
        bits_per_char(1.0, 3, 0)
    with pytest.raises(ValueError, match="loss must be a finite number"):
        bits_per_char(float("nan"), 3, 4)


def test_4_2_accepts_right_answer(capsys):
    ok, out = _verdict("4.2", lambda loss, nt, nc: loss * nt / nc / math.log(2), capsys)
    assert ok and "correct" in out
    assert _verdict("4.2", lambda loss, nt, nc: math.log2(math.exp(loss * nt / nc)), capsys)[0]


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda loss, nt, nc: loss * nt / nc, "divide by ln 2"),
        (lambda loss, nt, nc: loss * nc / nt / math.log(2), "upside down"),
        (lambda loss, nt, nc: loss / math.log(2), "bits per TOKEN"),
        (lambda loss, nt, nc: loss * nt / nc * math.log(2), "not by ln 2"),
        (lambda loss, nt, nc: loss * nt / nc / math.log(10), "expected"),
    ],
)
def test_4_2_rejects_wrong_answers(wrong, hint, capsys):
    ok, out = _verdict("4.2", wrong, capsys)
    assert not ok and hint in out


# --- 4.3 inverse square-root schedule -----------------------------------------------------------


def test_4_3_reference_matches_the_transformer_paper():
    # d_model=512, warmup 4000 (Vaswani et al. 2017): the peak is (512 * 4000) ** -0.5 at step 4000
    assert inverse_sqrt_lr(4000, 512, 4000) == pytest.approx((512 * 4000) ** -0.5)
    assert inverse_sqrt_lr(2000, 512, 4000) == pytest.approx(0.5 * (512 * 4000) ** -0.5)
    assert inverse_sqrt_lr(16000, 512, 4000) == pytest.approx(0.5 * (512 * 4000) ** -0.5)
    with pytest.raises(ValueError, match="steps count from 1"):
        inverse_sqrt_lr(0, 512, 4000)


def test_4_3_accepts_right_answer(capsys):
    def lr(step, d_model, warmup_steps):
        return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)

    ok, out = _verdict("4.3", lr, capsys)
    assert ok and "correct" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda s, d, w: min(s**-0.5, s * w**-1.5), "d_model^-0.5"),
        (lambda s, d, w: d**-0.5 * max(s**-0.5, s * w**-1.5), "MIN"),
        (
            lambda s, d, w: d**-0.5 * min((s - 1) ** -0.5 if s > 1 else 0.0, (s - 1) * w**-1.5),
            "from 1",
        ),
        (lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-1.0), "expected"),
    ],
)
def test_4_3_rejects_wrong_schedules(wrong, hint, capsys):
    ok, out = _verdict("4.3", wrong, capsys)
    assert not ok and hint in out


# --- 4.4 gradient accumulation ------------------------------------------------------------------


def _accumulate(model, micro_batches):
    total = 0.0
    for x, y in micro_batches:
        _, loss = model(x, y)
        (loss / len(micro_batches)).backward()
        total += loss.item()
    return total / len(micro_batches)


def test_4_4_accepts_scaled_accumulation_and_gptlab(capsys):
    from gptlab.train import accumulate_gradients

    ok, out = _verdict("4.4", _accumulate, capsys)
    assert ok and "correct" in out
    ok, _ = _verdict("4.4", lambda m, mb: accumulate_gradients(m, mb), capsys)
    assert ok


def _unscaled(model, micro_batches):
    total = 0.0
    for x, y in micro_batches:
        _, loss = model(x, y)
        loss.backward()
        total += loss.item()
    return total / len(micro_batches)


def _zeroing(model, micro_batches):
    total = 0.0
    for x, y in micro_batches:
        model.zero_grad()
        _, loss = model(x, y)
        (loss / len(micro_batches)).backward()
        total += loss.item()
    return total / len(micro_batches)


def _sum_loss(model, micro_batches):
    return _accumulate(model, micro_batches) * len(micro_batches)


def _no_backward(model, micro_batches):
    return sum(model(x, y)[1].item() for x, y in micro_batches) / len(micro_batches)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_unscaled, "4× too large"),
        (_zeroing, "do not zero the gradients"),
        (_sum_loss, "return the MEAN loss"),
        (_no_backward, "call loss.backward()"),
    ],
)
def test_4_4_rejects_wrong_accumulation(wrong, hint, capsys):
    ok, out = _verdict("4.4", wrong, capsys)
    assert not ok and hint in out


# --- 4.5 weight-decay groups --------------------------------------------------------------------


def _split(model):
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_matrix = id(p) in linear and id(p) not in embedding
        (decay if is_matrix else no_decay).append(name)
    return decay, no_decay


def test_4_5_accepts_linear_weights_only(capsys):
    from gptlab.train import split_decay_params

    ok, out = _verdict("4.5", _split, capsys)
    assert ok and "correct" in out
    assert _verdict("4.5", split_decay_params, capsys)[0]


def test_4_5_accepts_nanogpt_rule_embeddings_decayed(capsys):
    """Decaying the embedding tables is a published choice (nanoGPT), not a mistake."""
    ok, out = _verdict("4.5", _by_dim, capsys)
    assert ok and "correct" in out


def test_4_5_rejects_decaying_only_one_embedding_table(capsys):
    def one_table(model):
        decay, no_decay = _split(model)
        return decay + ["transformer.wte.weight"], [n for n in no_decay if "wte" not in n]

    ok, out = _verdict("4.5", one_table, capsys)
    assert not ok and "both embedding tables or neither" in out


def _by_dim(model):  # nanoGPT's rule: every 2-D tensor decays, embeddings included
    named = list(model.named_parameters())
    return [n for n, p in named if p.dim() >= 2], [n for n, p in named if p.dim() < 2]


def _everything(model):
    return [n for n, _ in model.named_parameters()], []


def _with_lm_head(model):
    decay, no_decay = _split(model)
    return decay + ["lm_head.weight"], no_decay


def _missing_one(model):
    decay, no_decay = _split(model)
    return decay, no_decay[1:]


def _tensors(model):
    return [p for _, p in model.named_parameters()], []


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_everything, "biases only shift"),
        (_with_lm_head, "tied"),
        (_missing_one, "in neither group"),
        (_tensors, "NAMES"),
        (lambda m: [], "return a pair"),
        (lambda m: _split(m)[::-1], "should NOT be decayed"),
    ],
)
def test_4_5_rejects_wrong_splits(wrong, hint, capsys):
    ok, out = _verdict("4.5", wrong, capsys)
    assert not ok and hint in out


def test_4_5_layer_norm_hint(capsys):
    def ln_decayed(model):
        decay, no_decay = _split(model)
        ln = [n for n in no_decay if ".ln_" in n and n.endswith(".weight")]
        return decay + ln, [n for n in no_decay if n not in ln]

    ok, out = _verdict("4.5", ln_decayed, capsys)
    assert not ok and "LayerNorm gains" in out
