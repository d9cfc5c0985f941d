"""Chapter 10 checkers: each accepts a right answer and rejects the usual wrong ones with a hint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptlab.exercises import check
from gptlab.exercises.ch10 import membership_auc
from gptlab.interpret import common_prefix_length


def _verdict(exercise_id, answer, capsys):
    ok = check(exercise_id, answer)
    return ok, capsys.readouterr().out


# --- 10.1 multi-token word probability -------------------------------------------------------


def _word_probability(model, tokenizer, prompt, word):
    p_ids, w_ids = tokenizer.encode(prompt), tokenizer.encode(word)
    prob = 1.0
    for i, token in enumerate(w_ids):  # one forward per piece: the chain rule, step by step
        logits = model.next_token_logits(torch.tensor([p_ids + w_ids[:i]]))
        prob *= F.softmax(logits[0], dim=-1)[token].item()
    return prob


def test_10_1_accepts_the_chain_rule(capsys):
    ok, out = _verdict("10.1", _word_probability, capsys)
    assert ok and "correct" in out


def _first_piece_only(model, tokenizer, prompt, word):
    logits = model.next_token_logits(torch.tensor([tokenizer.encode(prompt)]))
    return F.softmax(logits[0], dim=-1)[tokenizer.encode(word)[0]].item()


def _log_prob(model, tokenizer, prompt, word):
    return math.log(_word_probability(model, tokenizer, prompt, word))


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_first_piece_only, "only the first"),
        (_log_prob, "log-probability"),
        (lambda m, t, p, w: 0.5, "should be"),
        (lambda m, t, p, w: "0.5", "number"),
    ],
)
def test_10_1_rejects_wrong_answers(wrong, hint, capsys):
    ok, out = _verdict("10.1", wrong, capsys)
    assert not ok and hint in out


def test_10_1_leaves_the_global_random_state_alone(capsys):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check("10.1", _word_probability)
    assert torch.equal(torch.rand(3), expected)


# --- 10.2 attention entropy -------------------------------------------------------------------


def _entropy(maps):
    p = maps.double()
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    return -(p * logp).sum(-1).mean(dim=(1, 3))


def test_10_2_accepts_entropy_in_nats(capsys):
    ok, out = _verdict("10.2", _entropy, capsys)
    assert ok and "correct" in out
    ok, _ = _verdict("10.2", lambda m: torch.special.entr(m).sum(-1).mean((1, 3)), capsys)
    assert ok


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda m: -(m * m.log()).sum(-1).mean((1, 3)), "NaN"),
        (lambda m: _entropy(m) / math.log(2), "bits"),
        (lambda m: -_entropy(m), "minus sign"),
        (lambda m: _entropy(m).mean(-1), "shape"),
        (lambda m: torch.special.entr(m).mean(-1).mean((1, 3)), "do not average"),
        (lambda m: _entropy(m) + 0.1, "compute H"),
    ],
)
def test_10_2_rejects_wrong_entropies(wrong, hint, capsys):
    ok, out = _verdict("10.2", wrong, capsys)
    assert not ok and hint in out


# --- 10.3 one head's contribution -------------------------------------------------------------


def _head_output(attn, x):
    B, T, C = x.shape
    hs = C // attn.n_head
    _, weights = attn(x, return_weights=True)
    v = attn.c_attn(x).split(C, dim=2)[2].view(B, T, attn.n_head, hs).transpose(1, 2)
    return weights @ v, hs  # (B, nh, T, hs)


def _head_contribution(attn, x, head):
    y, hs = _head_output(attn, x)
    return y[:, head] @ attn.c_proj.weight[:, head * hs : (head + 1) * hs].T


def test_10_3_accepts_the_head_share_and_ablation_agrees(capsys):
    ok, out = _verdict("10.3", _head_contribution, capsys)
    assert ok and "correct" in out

    # the same share is what gptlab.interpret.ablate_heads removes from a whole model
    from gptlab.interpret import ablate_heads, residual_stream
    from gptlab.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=4, n_embd=16)).eval()
    idx = torch.randint(0, 11, (2, 6))
    block = model.transformer.h[0]
    x = block.ln_1(residual_stream(model, idx)[0])
    with torch.no_grad(), ablate_heads(model, [(0, 1)]):
        ablated = block.attn(x)
    with torch.no_grad():
        share = _head_contribution(block.attn, x, 1)
        torch.testing.assert_close(block.attn(x) - ablated, share)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda a, x, h: _head_contribution(a, x, h) + a.c_proj.bias, "bias"),
        (
            lambda a, x, h: (
                _head_output(a, x)[0][:, h]
                @ a.c_proj.weight[h * _head_output(a, x)[1] : (h + 1) * _head_output(a, x)[1], :]
            ),
            "COLUMNS",
        ),
        (lambda a, x, h: _head_output(a, x)[0][:, h], "shape"),
        (lambda a, x, h: a(x) / a.n_head, "differs"),
    ],
)
def test_10_3_rejects_wrong_shares(wrong, hint, capsys):
    ok, out = _verdict("10.3", wrong, capsys)
    assert not ok and hint in out


# --- 10.4 common prefix length -----------------------------------------------------------------


def test_10_4_accepts_a_cumulative_product_and_the_package(capsys):
    ok, out = _verdict("10.4", lambda a, b: (a == b).long().cumprod(1).sum(1), capsys)
    assert ok and "correct" in out
    ok, _ = _verdict("10.4", common_prefix_length, capsys)
    assert ok


def _loop_off_by_one(a, b):
    out = []
    for row_a, row_b in zip(a.tolist(), b.tolist(), strict=True):
        n = 0
        while n < len(row_a) - 1 and row_a[n] == row_b[n]:
            n += 1
        out.append(n)
    return torch.tensor(out)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda a, b: (a == b).sum(1), "every matching position"),
        (_loop_off_by_one, "off by one"),
        (lambda a, b: (a == b).long().cumprod(1).sum(), "one length per row"),
        (lambda a, b: [1, 2], "torch.Tensor"),
    ],
)
def test_10_4_rejects_wrong_counts(wrong, hint, capsys):
    ok, out = _verdict("10.4", wrong, capsys)
    assert not ok and hint in out


# --- 10.5 membership AUC -----------------------------------------------------------------------


def test_membership_auc_reference_matches_sklearn_formula():
    # AUC = (sum of ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with the
    # score "lower loss = member" and average ranks for ties (Mann-Whitney U)
    members = torch.tensor([0.5, 2.0, 2.0, 3.5])
    others = torch.tensor([2.0, 4.0, 1.0])
    scores = torch.cat([-members, -others])
    order = scores.argsort()
    ranks = torch.empty(7, dtype=torch.float64)
    ranks[order] = torch.arange(1, 8, dtype=torch.float64)
    for value in scores.unique():  # average rank within ties
        same = scores == value
        ranks[same] = ranks[same].mean()
    u = ranks[:4].sum() - 4 * 5 / 2
    assert membership_auc(members, others) == pytest.approx(float(u / 12))
    assert membership_auc([1.0], [2.0]) == 1.0 and membership_auc([2.0], [2.0]) == 0.5


def test_10_5_accepts_pairwise_comparison(capsys):
    def auc(m, o):
        d = o[None, :] - m[:, None]
        return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()

    ok, out = _verdict("10.5", auc, capsys)
    assert ok and "correct" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda m, o: 1 - membership_auc(m, o), "reversed"),
        (lambda m, o: (m[:, None] < o[None, :]).float().mean().item(), "tie"),
        (lambda m, o: float(m.mean() < o.mean()), "expected"),
    ],
)
def test_10_5_rejects_wrong_aucs(wrong, hint, capsys):
    ok, out = _verdict("10.5", wrong, capsys)
    assert not ok and hint in out
