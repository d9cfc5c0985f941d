"""Checkers for the exercises of chapter 10, "Limits: bias, interpretability, misuse".

Each checker compares the reader's answer with a reference computed here (from the formula, or
with :mod:`gptlab.interpret`) on small random inputs, and recognises the usual mistakes so that
the hint names the one the reader made. Random models are built inside
``torch.random.fork_rng`` so that checking an answer never changes the reader's random state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gptlab.exercises import NotSolved, as_number, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_attention_entropy",
    "check_common_prefix_length",
    "check_head_contribution",
    "check_membership_auc",
    "check_word_probability",
    "membership_auc",
]


def membership_auc(member_losses: Any, nonmember_losses: Any) -> float:
    """Probability that a random member has a LOWER loss than a random non-member (ties: 1/2).

    The area under the ROC curve of the attack "call it a member when its loss is small": 0.5
    means the losses tell nothing about membership, 1.0 separates members perfectly.
    """
    members = torch.as_tensor(member_losses, dtype=torch.float64).reshape(-1)
    others = torch.as_tensor(nonmember_losses, dtype=torch.float64).reshape(-1)
    if members.numel() == 0 or others.numel() == 0:
        raise ValueError("need at least one member loss and one non-member loss")
    lower = (members[:, None] < others[None, :]).double()  # (M, N)
    ties = (members[:, None] == others[None, :]).double()
    return float((lower + 0.5 * ties).mean())


def _tensor(out: Any, name: str) -> Tensor:
    if not isinstance(out, Tensor):
        raise NotSolved(f"{name} should return a torch.Tensor, got {type(out).__name__}")
    return out


def _close(a: Tensor, b: Tensor, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=atol, rtol=0)


def _tiny_gpt(vocab_size: int, seed: int) -> Any:
    from gptlab.model import GPT, GPTConfig

    with torch.random.fork_rng(devices=[]):  # leave the reader's random state untouched
        torch.manual_seed(seed)
        cfg = GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
        model = GPT(cfg).eval()
        with torch.no_grad():  # larger weights: sharper, more varied predictions to compare
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(8.0)
    return model


# --- 10.1 probability of a word that is several tokens ---------------------------------------


@exercise("10.1", "probability of a multi-token word")
def check_word_probability(answer: Any) -> str | None:
    """``word_probability(model, tokenizer, prompt, word)`` = product of the pieces' conditionals."""
    from gptlab.tokenizers import CharTokenizer

    word_probability = _callable(answer, "word_probability", "10.1")
    tok = CharTokenizer.from_text("the duchess nurse king queen, said:")
    model = _tiny_gpt(tok.vocab_size, seed=101)
    cases = [("the king said", " nurse"), ("queen:", " duchess"), ("the", " the"), ("said", "k")]
    for prompt, word in cases:
        encode = getattr(tok, "encode_ordinary", tok.encode)  # typed text stays text
        p_ids, w_ids = encode(prompt), encode(word)
        x = torch.tensor([p_ids + w_ids])
        with torch.no_grad():
            logits = model(x)[0][0]  # (T, V)
        steps = logits[len(p_ids) - 1 : -1]  # the logits that predict each piece of the word
        logp = F.log_softmax(steps.double(), dim=-1)[torch.arange(len(w_ids)), w_ids]
        want = float(logp.sum().exp())
        got = as_number(word_probability(model, tok, prompt, word), "word_probability")
        if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-12):
            continue
        if len(w_ids) > 1 and math.isclose(got, float(logp[0].exp()), rel_tol=1e-4):
            return (
                f"{word!r} is {len(w_ids)} tokens and you scored only the first; multiply the "
                "probability of each piece given the prompt AND the pieces before it"
            )
        if math.isclose(got, float(logp.exp().sum()), rel_tol=1e-4):
            return "you added the pieces' probabilities; the chain rule multiplies them"
        if math.isclose(got, float(logp.sum()), rel_tol=1e-4):
            return "that is the log-probability; return the probability itself (exp of the sum)"
        shifted = F.log_softmax(logits[len(p_ids) :].double(), dim=-1)
        if len(w_ids) > 1 and math.isclose(
            got, float(shifted[torch.arange(len(w_ids) - 1), w_ids[1:]].sum().exp()), rel_tol=1e-4
        ):
            return "off by one position: the logits at position t predict the token at t + 1"
        return (
            f"P({word!r} | {prompt!r}) should be {want:.6g}, got {got:.6g}; run the model on "
            "prompt + word and multiply softmax probabilities of the word's tokens"
        )
    return None


# --- 10.2 attention entropy -------------------------------------------------------------------


@exercise("10.2", "entropy of each head's attention")
def check_attention_entropy(answer: Any) -> str | None:
    """``attention_entropy(maps)`` = mean over batch and queries of ``-Σ p ln p``, per layer/head."""
    from gptlab.interpret import attention_maps

    attention_entropy = _callable(answer, "attention_entropy", "10.2")
    model = _tiny_gpt(29, seed=102)
    idx = torch.randint(0, 29, (3, 12), generator=torch.Generator().manual_seed(102))
    maps = attention_maps(model, idx)  # (L, B, nh, T, T), zeros above the diagonal
    L, _, nh = maps.shape[:3]
    per_row = torch.special.entr(maps.double()).sum(-1)  # (L, B, nh, T): 0 ln 0 = 0
    want = per_row.mean(dim=(1, 3))  # (L, nh)
    got = _tensor(attention_entropy(maps.clone()), "attention_entropy")
    if got.shape != want.shape:
        return (
            f"return one number per (layer, head): shape ({L}, {nh}), got {tuple(got.shape)}; "
            "average over the batch (dim 1) and the query positions"
        )
    if torch.isnan(got).any():
        return "NaN: the masked (future) weights are 0 and 0·ln 0 must count as 0 (try torch.special.entr)"
    if _close(got, want, 1e-5):
        return None
    if _close(got, want / math.log(2), 1e-5):
        return "those are bits (log base 2); use the natural logarithm, nats"
    if _close(got, -want, 1e-5):
        return "entropy is -Σ p ln p: mind the minus sign (it is never negative)"
    if _close(got, per_row.mean(dim=(1, 3)) / maps.shape[-1], 1e-5):
        return "sum -p ln p over the keys of a row (do not average it), then average the rows"
    return "compute H = -Σ_j p_ij ln p_ij per query row, then average over batch and queries"


# --- 10.3 one head's contribution to the residual stream -------------------------------------


@exercise("10.3", "one head's share of the attention output")
def check_head_contribution(answer: Any) -> str | None:
    """``head_contribution(attn, x, head)`` = head's output times its columns of ``c_proj``."""
    from gptlab.attention import CausalSelfAttention

    head_contribution = _callable(answer, "head_contribution", "10.3")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(103)
        attn = CausalSelfAttention(24, 4).eval()
    x = torch.randn(2, 7, 24, generator=torch.Generator().manual_seed(103))
    hs = 24 // 4
    with torch.no_grad():
        _, weights = attn(x, return_weights=True)  # (B, nh, T, T)
        v = attn.c_attn(x).split(24, dim=2)[2].view(2, 7, 4, hs).transpose(1, 2)  # (B, nh, T, hs)
        per_head = weights @ v  # (B, nh, T, hs)
        W = attn.c_proj.weight  # (C_out, C_in): column block h reads head h
        total = torch.zeros_like(x)
        for head in range(4):
            cols = slice(head * hs, (head + 1) * hs)
            want = per_head[:, head] @ W[:, cols].T  # (B, T, C)
            total += want
            got = _tensor(head_contribution(attn, x.clone(), head), "head_contribution")
            if _close(got, want, 1e-5):
                continue
            if got.shape != want.shape:
                return (
                    f"return the head's share of the (B, T, C) output, shape {tuple(want.shape)}, "
                    f"got {tuple(got.shape)}: multiply the head's (B, T, hs) output by its "
                    "columns of c_proj.weight"
                )
            if _close(got, want + attn.c_proj.bias, 1e-5):
                return "leave out c_proj's bias: it belongs to no head (it is added once)"
            if _close(got, per_head[:, head] @ W[cols, :], 1e-5):
                return (
                    "use the head's COLUMNS of c_proj.weight (W[:, h*hs:(h+1)*hs]), not its rows: "
                    "nn.Linear computes x @ W.T"
                )
            return f"head {head}'s share differs; compute (weights @ v)[:, head] @ W[:, cols].T"
        # the shares add up to the layer's output minus the bias: the decomposition is exact
        assert torch.allclose(total + attn.c_proj.bias, attn(x), atol=1e-5)
    return None


# --- 10.4 common prefix length ---------------------------------------------------------------


@exercise("10.4", "length of the common prefix")
def check_common_prefix_length(answer: Any) -> str | None:
    """``common_prefix_length(a, b)`` counts the leading positions where rows of a and b agree."""
    common_prefix_length = _callable(answer, "common_prefix_length", "10.4")
    a = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [7, 2, 3, 4, 5], [1, 2, 0, 4, 5]])
    b = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]])
    want = [5, 4, 0, 2]
    got = _tensor(common_prefix_length(a.clone(), b.clone()), "common_prefix_length")
    if got.shape != (4,):
        return f"return one length per row, shape (4,), got {tuple(got.shape)}"
    values = got.tolist()
    if values == want:
        gen = torch.Generator().manual_seed(104)
        x = torch.randint(0, 3, (50, 9), generator=gen)
        y = torch.randint(0, 3, (50, 9), generator=gen)
        y[:10] = x[:10]
        expected = torch.tensor(
            [next((i for i in range(9) if x[r, i] != y[r, i]), 9) for r in range(50)]
        )
        got = _tensor(common_prefix_length(x, y), "common_prefix_length")
        if got.tolist() == expected.tolist():
            return None
        return "right on the first examples but wrong on random rows; check rows that agree fully"
    if values == [5, 4, 4, 4]:
        return "you counted every matching position; stop counting at the first mismatch"
    if values == [4, 4, 0, 2] or values == [5, 3, 0, 1] or values == [4, 3, 0, 1]:
        return "off by one: a row that matches everywhere has length m, a first-token miss 0"
    return f"expected {want} for the example rows, got {values}"


# --- 10.5 membership inference from the loss -------------------------------------------------


@exercise("10.5", "membership inference AUC")
def check_membership_auc(answer: Any) -> str | None:
    """``auc(member_losses, nonmember_losses)`` = P(member loss < non-member loss), ties count 1/2."""
    auc = _callable(answer, "auc", "10.5")
    cases = [
        (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0])),  # perfectly separated: 1.0
        (torch.tensor([1.0, 4.0]), torch.tensor([2.0, 3.0, 5.0])),
        (torch.tensor([2.0, 2.0, 1.0]), torch.tensor([2.0, 3.0])),  # ties
        (torch.randn(40, generator=torch.Generator().manual_seed(105)) * 0.5 + 3.0,
         torch.randn(30, generator=torch.Generator().manual_seed(106)) * 0.5 + 3.2),
    ]  # fmt: skip
    for members, others in cases:
        want = membership_auc(members, others)
        got = as_number(auc(members.clone(), others.clone()), "auc")
        if math.isclose(got, want, abs_tol=1e-6):
            continue
        if math.isclose(got, 1.0 - want, abs_tol=1e-6):
            return "reversed: members should have the LOWER loss, count member < non-member"
        strict = float((members[:, None] < others[None, :]).double().mean())
        if math.isclose(got, strict, abs_tol=1e-6):
            return "count a tie (equal losses) as half a success"
        return (
            f"for members {members.tolist()[:5]} and non-members {others.tolist()[:5]} "
            f"expected {want:.4f}, got {got:.4f}; compare every member with every non-member"
        )
    return None
