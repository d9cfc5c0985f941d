r"""How likely a model finds a response: per-token and per-sequence log-probabilities.

Every method that learns from preferences or rewards starts from one quantity, the log-
probability the model gives a response $y$ after a prompt $x$:

.. math::

    \log \pi(y \mid x) = \sum_{t=1}^{|y|} \log \pi(y_t \mid x, y_{<t}).

:func:`sequence_logprobs` computes it for a batch of (prompt, response) pairs of different
lengths in one forward pass: each pair is written as ``prompt + response``, the rows are
right-padded to one length (the causal mask hides the pads from every real position, so they
change nothing), and the log-probability of each response token is read off the logits at the
position before it. The small helpers below it (:func:`token_logprobs`,
:func:`token_entropy`, :func:`masked_mean`, :func:`masked_normalize`) are the tensor
operations the DPO and GRPO losses are built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from gptlab.align._checks import as_ids, check_language_model, model_device

__all__ = [
    "SequenceLogprobs",
    "masked_mean",
    "masked_normalize",
    "sequence_logprobs",
    "token_entropy",
    "token_logprobs",
]


def _check_logits(logits: Any) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(
            f"logits must be a floating-point tensor (..., vocab_size), got {type(logits).__name__}"
        )
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must end in a vocabulary axis, got shape {tuple(logits.shape)}")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[label]`` at every position: logits ``(..., V)``, labels ``(...)``.

    Computed as ``logit[label] - logsumexp(logits)``, which is exact for large logits and never
    keeps a second ``(..., V)`` tensor of log-probabilities.
    """
    _check_logits(logits)
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.long, torch.int32):
        raise TypeError("labels must be an integer tensor of token ids (torch.long)")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels have shape {tuple(labels.shape)} but logits {tuple(logits.shape)}; labels "
            "must have the logits' shape without the last (vocabulary) axis"
        )
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    r"""Entropy $H = -\sum_v p_v \log p_v$ (nats) of the next-token distribution at each position.

    ``logits`` ``(..., V)`` -> ``(...)``. Works from ``log_softmax``, so large logits do not
    overflow; a token with probability 0 (logit ``-inf``) adds 0, not NaN.
    """
    _check_logits(logits)
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    return -(p * logp.masked_fill(p == 0, 0.0)).sum(dim=-1)


def _check_mask(values: Any, mask: Any) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("values and mask must both be tensors")
    if mask.shape != values.shape:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but values {tuple(values.shape)}; they must match"
        )
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be boolean or hold only 0 and 1")
    return mask.bool()


def _masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    # where(), not values * mask: a NaN or inf in a masked-out slot must not leak into the sum.
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true (over all, or along ``dim``).

    Raises if ``mask`` selects nothing (overall, or in some row along ``dim``): a mean of no
    values is undefined and would silently become NaN.
    """
    mask = _check_mask(values, mask)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    if bool((count == 0).any()):
        raise ValueError(
            "mask selects no element (in at least one row); every sequence needs at least one "
            "unmasked token"
        )
    return _masked_sum(values, mask, dim) / count


def masked_normalize(
    values: torch.Tensor,
    mask: torch.Tensor,
    normalize_constant: float,
    dim: int | None = None,
) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true, divided by a fixed ``normalize_constant``.

    Dr. GRPO (Liu et al., 2025) divides by a constant (e.g. the generation budget) instead of
    each response's length, so a long wrong answer is not penalised less per token than a
    short one.
    """
    mask = _check_mask(values, mask)
    if (
        isinstance(normalize_constant, bool)
        or not isinstance(normalize_constant, (int, float))
        or not normalize_constant > 0
    ):
        raise ValueError(f"normalize_constant must be a number > 0, got {normalize_constant!r}")
    return _masked_sum(values, mask, dim) / normalize_constant


class SequenceLogprobs(NamedTuple):
    """What :func:`sequence_logprobs` returns (unpacks as ``total, tokens, mask``).

    ``total`` ``(B,)``: log pi(response | prompt), the sum over the response's tokens;
    ``tokens`` ``(B, R)``: ``tokens[i, j]`` = log pi(response_i[j] | prompt_i, response_i[:j]),
    0 past the end of response i (``R`` is the longest response in the batch);
    ``mask`` ``(B, R)``: True on the real response tokens.
    """

    total: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


def _check_batch(
    model: nn.Module, prompts: Any, responses: Any
) -> tuple[list[list[int]], list[list[int]]]:
    for name, value in (("prompt_ids_list", prompts), ("response_ids_list", responses)):
        if isinstance(value, (str, bytes, torch.Tensor)) or not isinstance(value, Sequence):
            raise TypeError(
                f"{name} must be a list with one list of token ids per example, got "
                f"{type(value).__name__}"
            )
    if len(prompts) != len(responses):
        raise ValueError(
            f"got {len(prompts)} prompts and {len(responses)} responses; pass one response per "
            "prompt (repeat a prompt to score several responses to it)"
        )
    if not prompts:
        raise ValueError("no examples: pass at least one (prompt, response) pair")
    vocab, block = model.config.vocab_size, model.config.block_size
    p_ids = [as_ids(p, f"prompt_ids_list[{i}]", vocab) for i, p in enumerate(prompts)]
    r_ids = [as_ids(r, f"response_ids_list[{i}]", vocab) for i, r in enumerate(responses)]
    for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        if not p:
            raise ValueError(
                f"prompt {i} is empty; the first response token needs a token to condition on "
                "(start with a BOS/<|endoftext|> token or the chat prompt)"
            )
        if not r:
            raise ValueError(f"response {i} is empty; a response needs at least one token")
        if len(p) + len(r) - 1 > block:
            raise ValueError(
                f"example {i} has {len(p)} prompt + {len(r)} response tokens; the model reads "
                f"{len(p) + len(r) - 1} of them at once but its block_size is {block}; shorten "
                "the prompt or the response"
            )
    return p_ids, r_ids


def sequence_logprobs(
    model: nn.Module,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
) -> SequenceLogprobs:
    """Log-probabilities of each response given its prompt, for a batch, in one forward pass.

    Prompts and responses are lists of token ids (or 1-D tensors) of any lengths. Gradients
    flow (wrap the call in ``torch.no_grad()`` for a frozen reference). Logits are promoted to
    at least float32 before the softmax; a float64 model gives float64 log-probabilities. The
    model's training mode is used as it is (call ``model.eval()`` to turn dropout off).
    """
    check_language_model(model)
    prompts, responses = _check_batch(model, prompt_ids_list, response_ids_list)
    device = model_device(model)
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    B, total_len = len(prompts), max(lengths)
    rows = torch.zeros(B, total_len, dtype=torch.long)  # right padding: any valid id would do
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        rows[i, : lengths[i]] = torch.tensor(p + r, dtype=torch.long)
    rows = rows.to(device)
    logits, _ = model(rows[:, :-1])  # (B, T, V), T = total_len - 1
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    labels = rows[:, 1:]  # (B, T): the token each position predicts

    resp_len = torch.tensor([len(r) for r in responses], device=device)  # (B,)
    start = torch.tensor([len(p) - 1 for p in prompts], device=device)  # predicts response[0]
    offsets = torch.arange(int(resp_len.max()), device=device)  # (R,)
    mask = offsets[None, :] < resp_len[:, None]  # (B, R)
    pos = (start[:, None] + offsets[None, :]).clamp(max=logits.shape[1] - 1)  # (B, R)
    picked = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))  # (B, R, V)
    tokens = token_logprobs(picked, labels.gather(1, pos))  # (B, R)
    tokens = tokens.masked_fill(~mask, 0.0)
    return SequenceLogprobs(tokens.sum(dim=-1), tokens, mask)
