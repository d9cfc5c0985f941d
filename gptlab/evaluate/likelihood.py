"""How well a model predicts text: total nats, perplexity and bits per byte.

Perplexity ``exp(mean loss per token)`` depends on the tokenizer: a model with a bigger
vocabulary spends more nats on each (longer) token. Bits per byte divides the same total by the
text's size instead, ``total nats / (ln 2 * UTF-8 bytes)``, so a character model, a 4,096-token
BPE model and GPT-2 can be compared on one scale.

Texts longer than the context window are scored with sliding windows: each window of
``block_size`` tokens moves on by ``stride`` and scores only the tokens the previous window did
not, so every token is scored exactly once with at least ``block_size - stride`` tokens of
context (fewer only at the start of a text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.evaluate._checks import (
    check_int,
    check_model,
    check_texts,
    check_tokenizer,
    model_device,
    token_bytes,
)
from gptlab.tokenizers import encode_plain

__all__ = [
    "Likelihood",
    "bits_per_byte",
    "bits_per_byte_to_loss",
    "loss_to_bits_per_byte",
    "perplexity",
    "sequence_nats",
    "text_likelihood",
]

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Likelihood:
    """Totals over a set of texts: nats spent, tokens scored, and the UTF-8 bytes they cover."""

    nats: float
    tokens: int
    bytes: int

    @property
    def mean_loss(self) -> float:
        """Mean cross-entropy per token in nats (the training loss)."""
        if self.tokens == 0:
            raise ValueError("no token was scored (the text is at most one token long)")
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        """``exp(mean loss)``: the model is as unsure as a uniform choice among this many tokens."""
        return math.exp(self.mean_loss)

    @property
    def bits_per_token(self) -> float:
        return self.mean_loss / LN2

    @property
    def bits_per_byte(self) -> float:
        """Tokenizer-independent: total nats / (ln 2 * bytes)."""
        if self.bytes == 0:
            raise ValueError("no byte was scored (the text is at most one token long)")
        return self.nats / (LN2 * self.bytes)


def _check_loss(mean_loss: Any) -> float:
    if isinstance(mean_loss, bool) or not isinstance(mean_loss, (int, float)):
        raise TypeError(f"mean_loss must be a float (nats per token), got {mean_loss!r}")
    if not math.isfinite(mean_loss) or mean_loss < 0:
        raise ValueError(f"mean_loss must be a finite number >= 0 nats, got {mean_loss}")
    return float(mean_loss)


def perplexity(mean_loss: float) -> float:
    """Perplexity from a mean cross-entropy in nats per token: ``exp(mean_loss)``."""
    return math.exp(_check_loss(mean_loss))


def loss_to_bits_per_byte(mean_loss: float, n_tokens: int, n_bytes: int) -> float:
    """Bits per byte from a mean loss (nats/token) over ``n_tokens`` tokens covering ``n_bytes``."""
    loss = _check_loss(mean_loss)
    check_int(n_tokens, "n_tokens")
    check_int(n_bytes, "n_bytes")
    return loss * n_tokens / (LN2 * n_bytes)


def bits_per_byte_to_loss(bpb: float, n_tokens: int, n_bytes: int) -> float:
    """The inverse of :func:`loss_to_bits_per_byte`: mean nats per token."""
    check_int(n_tokens, "n_tokens")
    check_int(n_bytes, "n_bytes")
    return _check_loss(bpb) * LN2 * n_bytes / n_tokens


def _windows(length: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first)`` per window over a sequence of ``length`` ids.

    The window reads ids ``[begin, end)`` and predicts ids ``begin+1 .. end``; it scores the
    targets ``first .. end`` (the ones no earlier window scored).
    """
    windows = []
    begin, scored_to = 0, 0
    while scored_to < length - 1:
        end = min(begin + block_size, length - 1)
        windows.append((begin, end, scored_to + 1))
        scored_to = end
        begin += stride
    return windows


@torch.no_grad()
def sequence_nats(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    stride: int | None = None,
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """``(nats, tokens)`` per id sequence: the summed cross-entropy of ids ``1..`` given the ids
    before them (id 0 is context only), over sliding windows of ``model.config.block_size``.

    ``stride`` defaults to half the block: every token then sees at least half a block of
    context. Sums are taken in float64, so the order of windows does not change the result.
    """
    check_model(model)
    block = model.config.block_size
    stride = block // 2 if stride is None else stride
    check_int(stride, "stride")
    if stride > block:
        raise ValueError(
            f"stride ({stride}) must not exceed block_size ({block}): tokens would be skipped"
        )
    check_int(batch_size, "batch_size")
    rows = []  # (sequence index, input ids, targets, index of the first scored target)
    for s, ids in enumerate(sequences):
        ids = [int(i) for i in ids]
        for begin, end, first in _windows(len(ids), block, stride):
            rows.append((s, ids[begin:end], ids[begin + 1 : end + 1], first - begin - 1))
    totals = [[0.0, 0] for _ in sequences]
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(r[1]) for r in batch)
            idx = torch.zeros(len(batch), width, dtype=torch.long)  # right padding: causal, so
            tgt = torch.zeros(len(batch), width, dtype=torch.long)  # it never reaches a real token
            mask = torch.zeros(len(batch), width, dtype=torch.bool)
            for r, (_, inputs, targets, first) in enumerate(batch):
                idx[r, : len(inputs)] = torch.tensor(inputs)
                tgt[r, : len(targets)] = torch.tensor(targets)
                mask[r, first : len(targets)] = True
            logits, _ = model(idx.to(device))
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, vocab)
            picked = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).double()  # (B, T)
            for r, (s, *_rest) in enumerate(batch):
                totals[s][0] -= float(picked[r][mask[r]].sum())
                totals[s][1] += int(mask[r].sum())
    finally:
        model.train(was_training)
    return [(nats, tokens) for nats, tokens in totals]


def text_likelihood(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    bos_id: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> list[Likelihood]:
    """One :class:`Likelihood` per text.

    With ``bos_id`` (e.g. GPT-2's ``<|endoftext|>``, 50256) every token of a text is predicted
    from that start token and every byte counts. Without it the first token is context only and
    its bytes are left out of the count, so bits per byte stays an honest ratio; pass ``bos_id``
    only for a model trained with that token between documents.
    """
    texts = check_texts(texts)
    check_tokenizer(tokenizer)
    if bos_id is not None:
        check_int(bos_id, "bos_id", 0)
    sequences, sizes = [], []
    for text in texts:
        ids = encode_plain(tokenizer, text)
        n_bytes = len(text.encode("utf-8"))
        if bos_id is None:
            n_bytes -= token_bytes(tokenizer, ids[:1])
        else:
            ids = [bos_id, *ids]
        sequences.append(ids)
        sizes.append(n_bytes)
    scored = sequence_nats(model, sequences, stride=stride, batch_size=batch_size)
    return [
        Likelihood(nats, tokens, size) for (nats, tokens), size in zip(scored, sizes, strict=True)
    ]


def bits_per_byte(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    bos_id: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> float:
    """Bits per UTF-8 byte over all ``texts`` together: total nats / (ln 2 * total bytes)."""
    parts = text_likelihood(
        model, tokenizer, texts, bos_id=bos_id, stride=stride, batch_size=batch_size
    )
    total = sum(p.bytes for p in parts)
    if total == 0:
        raise ValueError(
            "no byte of these texts was scored (each is at most one token); pass longer texts "
            "or a bos_id so the first token is predicted too"
        )
    return sum(p.nats for p in parts) / (LN2 * total)
