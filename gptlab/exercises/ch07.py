"""Checkers for the exercises of chapter 7, "Fine-tuning for classification".

Each checker compares the reader's answer with :mod:`gptlab.finetune` (or a formula) on small
inputs chosen so that the usual mistakes give a different answer, and names the mistake.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_balanced_accuracy",
    "check_freeze_top",
    "check_last_token_states",
    "check_mean_pool",
    "check_right_pad",
]


def _tensor(out: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(out, Tensor):
        raise NotSolved(f"{name} should return a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        raise NotSolved(f"{name} returned shape {tuple(out.shape)}, expected {shape}")
    return out


def _hidden_and_lengths() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(4, 6, 3, generator=gen)  # (B, T, C)
    lengths = torch.tensor([6, 1, 3, 5])  # one full row, one single token
    return hidden, lengths


@exercise("7.1", "pool the last real token")
def check_last_token_states(last_token_states: Any) -> str | None:
    """``last_token_states(hidden, lengths)`` must return ``hidden[b, lengths[b] - 1]`` per row."""
    fn = _callable(last_token_states, "last_token_states", "7.1")
    hidden, lengths = _hidden_and_lengths()
    got = _tensor(fn(hidden.clone(), lengths.clone()), "last_token_states", (4, 3))
    want = hidden[torch.arange(4), lengths - 1]
    if torch.allclose(got, want):
        return None
    if torch.allclose(got, hidden[:, -1]):
        return (
            "you returned position -1 of every row, but in a right-padded batch that is a pad "
            "for the shorter passages; use each row's own length: position lengths[b] - 1"
        )
    if torch.allclose(got[1:], hidden[torch.arange(1, 4), lengths[1:]]):
        return "off by one: a passage of length n ends at index n - 1, not n"
    return "row b should be hidden[b, lengths[b] - 1]; index with torch.arange(B) and lengths - 1"


@exercise("7.2", "right-pad a batch")
def check_right_pad(right_pad: Any) -> str | None:
    """``right_pad(sequences, pad_id)`` returns ``(idx (B, T_max), lengths (B,))``, pads on the right."""
    fn = _callable(right_pad, "right_pad", "7.2")
    seqs = [[5, 6, 7], [8], [1, 2]]
    out = fn([list(s) for s in seqs], 9)
    if not (isinstance(out, tuple) and len(out) == 2):
        return "return a pair (idx, lengths)"
    idx = _tensor(out[0], "idx", (3, 3))
    lengths = _tensor(out[1], "lengths", (3,))
    if idx.dtype != torch.long or lengths.dtype != torch.long:
        return (
            f"token ids and lengths must be torch.long (int64), got {idx.dtype} and {lengths.dtype}"
        )
    if lengths.tolist() != [3, 1, 2]:
        return f"lengths should count the real tokens of each sequence, [3, 1, 2]; got {lengths.tolist()}"
    if idx.tolist() == [[5, 6, 7], [9, 9, 8], [9, 1, 2]]:
        return (
            "that is left padding: the pads come first, so every real token would attend to them "
            "and sit at a shifted position; put the real tokens first and the pads after them"
        )
    if idx.tolist() != [[5, 6, 7], [8, 9, 9], [1, 2, 9]]:
        return f"expected [[5, 6, 7], [8, 9, 9], [1, 2, 9]] for pad_id=9, got {idx.tolist()}"
    return None


@exercise("7.3", "mean pooling over the real tokens")
def check_mean_pool(mean_pool: Any) -> str | None:
    """``mean_pool(hidden, lengths)`` averages ``hidden[b, :lengths[b]]`` for every row ``b``."""
    fn = _callable(mean_pool, "mean_pool", "7.3")
    hidden, lengths = _hidden_and_lengths()
    got = _tensor(fn(hidden.clone(), lengths.clone()), "mean_pool", (4, 3))
    want = torch.stack([hidden[b, : int(n)].mean(dim=0) for b, n in enumerate(lengths)])
    if torch.allclose(got, want, atol=1e-6):
        return None
    if torch.allclose(got, hidden.mean(dim=1), atol=1e-6):
        return (
            "you averaged over all T positions, pads included; multiply by a mask that is 1 for "
            "positions < length and 0 after, then divide by the length"
        )
    masked_sum = torch.stack([hidden[b, : int(n)].sum(dim=0) for b, n in enumerate(lengths)])
    if torch.allclose(got, masked_sum / hidden.shape[1], atol=1e-6):
        return "you masked the pads but divided by T; divide each row by its own length"
    return "row b should be hidden[b, :lengths[b]].mean(dim=0)"


def _tiny_classifier() -> Any:
    from gptlab.finetune import GPTClassifier
    from gptlab.model import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=3, n_head=2, n_embd=8))
    return GPTClassifier(gpt, 3)


@exercise("7.4", "freeze all but the top blocks")
def check_freeze_top(freeze_top: Any) -> str | None:
    """``freeze_top(model, k)`` leaves exactly the top ``k`` blocks, ``ln_f`` and the head trainable."""
    fn = _callable(freeze_top, "freeze_top", "7.4")
    from gptlab.finetune import freeze

    for k in (1, 0, 2):
        mine, ref = _tiny_classifier(), _tiny_classifier()
        fn(mine, k)
        freeze(ref, k)
        flags = {n: p.requires_grad for n, p in mine.named_parameters()}
        want = {n: p.requires_grad for n, p in ref.named_parameters()}
        wrong = sorted(n for n in want if flags[n] != want[n])
        if not wrong:
            continue
        if any(n.startswith("head.") and not flags[n] for n in wrong):
            return "the new head is frozen: it starts random, so it must always train"
        if any(n.startswith("gpt.transformer.ln_f.") for n in wrong):
            return (
                "the final LayerNorm (gpt.transformer.ln_f) sits on top of the last block: train it"
            )
        if any(n.startswith(("gpt.transformer.wte", "gpt.transformer.wpe")) for n in wrong):
            return "keep the embeddings (wte, wpe) frozen: they are at the very bottom"
        if any(n.startswith("gpt.transformer.h.0.") for n in wrong) and k > 0:
            return (
                f"with k={k} the *top* blocks must train, i.e. transformer.h[n_layer - k:], not "
                "the first ones"
            )
        return f"with k={k} these parameters have the wrong requires_grad: {wrong[:4]}"
    return None


@exercise("7.5", "balanced accuracy")
def check_balanced_accuracy(balanced_accuracy: Any) -> str | None:
    """``balanced_accuracy(cm)``: the mean over classes of ``cm[i, i] / cm[i].sum()`` (rows = true)."""
    fn = _callable(balanced_accuracy, "balanced_accuracy", "7.5")
    cm = torch.tensor([[50, 0, 0], [8, 2, 0], [5, 0, 5]])  # a classifier that loves class 0
    recalls = cm.diag().double() / cm.sum(dim=1).double()
    want = recalls.mean().item()  # (1 + 0.2 + 0.5) / 3
    got = fn(cm.clone())
    if isinstance(got, Tensor):
        if got.numel() != 1:
            return f"return one number, got a tensor of shape {tuple(got.shape)}"
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"return a float, got {type(got).__name__}"
    if abs(got - want) < 1e-6:
        return None
    if abs(got - cm.trace().item() / cm.sum().item()) < 1e-6:
        return (
            "that is plain accuracy (trace / total), which the big class dominates; compute the "
            "recall of each class (its row) and average those"
        )
    precisions = cm.diag().double() / cm.sum(dim=0).double()
    if abs(got - precisions.mean().item()) < 1e-6:
        return (
            "you divided by column sums (precision); rows are the true classes: divide by row sums"
        )
    return f"expected (1.0 + 0.2 + 0.5) / 3 = {want:.4f} for this matrix, got {got:.4f}"
