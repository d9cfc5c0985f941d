"""Beam search: keep the ``num_beams`` likeliest partial sequences instead of one.

Greedy decoding commits to the likeliest *next token*; the likeliest *sequence* can start with a
less likely token. Beam search keeps ``num_beams`` candidates, extends each by every token,
and keeps the best ``num_beams`` of all the extensions, scored by their summed log-probability
:math:`\\log p(y_1..y_t \\mid x) = \\sum_i \\log p(y_i \\mid x, y_{<i})`.

A sum of log-probabilities only falls as a sequence grows, so a hypothesis that ends early (emits
``eos_token_id``) beats longer ones that are just as good per token: beam search's **length
bias**. Finished hypotheses are therefore ranked by ``sum / length ** length_penalty`` (Wu et al.,
2016, in the simple form Hugging Face uses): 0 is the raw sum, 1 the mean log-probability per
token. This is the canonical algorithm, equal to ``transformers``' ``generate(num_beams=...,
early_stopping="never")``, which the tests check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gptlab.sampling import (
    LanguageModel,
    _check_eos,
    _check_int,
    _check_model,
    _check_prompt,
    _check_real,
)

__all__ = ["Beam", "beam_search"]


@dataclass(frozen=True)
class Beam:
    """One finished hypothesis: ``ids`` (prompt + generated tokens, ``eos`` included if it ended
    on it), the summed log-probability of the generated tokens and the length-normalised score
    beam search ranked it by."""

    ids: list[int]
    logprob: float
    score: float


@torch.no_grad()
def beam_search(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_token_id: int | None = None,
    num_return_sequences: int = 1,
) -> list[Beam]:
    """The ``num_return_sequences`` best continuations of one prompt ``idx`` ``(1, T)``, best first.

    Each step scores every extension of every live beam by its summed log-probability and keeps
    the best ``num_beams`` that do not end on ``eos_token_id``; those that do are finished, ranked
    by ``logprob / generated_length ** length_penalty``. The search stops at ``max_new_tokens``
    (live beams then finish as they are) or once no live beam can still beat the worst of
    ``num_beams`` finished ones. Runs the model without a KV cache (each step re-reads every
    beam), so it suits short continuations.
    """
    _check_model(model)
    _check_prompt(model, idx)
    if idx.shape[0] != 1:
        raise ValueError(
            f"beam_search takes one prompt (idx of shape (1, T)), got {idx.shape[0]} rows; loop "
            "over your prompts"
        )
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_beams", num_beams, 1)
    _check_int("num_return_sequences", num_return_sequences, 1)
    if num_return_sequences > num_beams:
        raise ValueError(
            f"num_return_sequences ({num_return_sequences}) cannot exceed num_beams ({num_beams}): "
            "beam search keeps only num_beams hypotheses"
        )
    _check_real("length_penalty", length_penalty, "a finite number", math.isfinite, "e.g. 1.0")
    _check_eos(eos_token_id, model.config.vocab_size)

    was_training = model.training
    model.eval()
    try:
        return _search(
            model,
            idx,
            max_new_tokens,
            num_beams,
            length_penalty,
            eos_token_id,
            num_return_sequences,
        )
    finally:
        model.train(was_training)


def _search(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    eos: int | None,
    n_return: int,
) -> list[Beam]:
    block, vocab = model.config.block_size, model.config.vocab_size
    seqs = idx.clone()  # (k, T + t): the live beams; one at the start
    sums = torch.zeros(1, dtype=torch.float64, device=idx.device)  # (k,) summed log-probs
    finished: list[Beam] = []

    def normalised(logprob: float, length: int) -> float:
        return logprob / length**length_penalty

    for step in range(1, max_new_tokens + 1):
        logits = model.next_token_logits(seqs[:, -block:])  # (k, V)
        logp = torch.log_softmax(logits.float(), dim=-1).double()
        totals = (sums[:, None] + logp).view(-1)  # (k * V,): every extension of every beam
        top = torch.topk(totals, min(2 * num_beams, totals.numel()))
        last = step == max_new_tokens
        keep_rows, keep_tokens, keep_sums = [], [], []
        for rank, (total, flat) in enumerate(
            zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ):
            row, token = divmod(flat, vocab)
            ends = token == eos
            if (ends or last) and rank < num_beams:  # only the best num_beams may finish
                ids = [*seqs[row].tolist(), token]
                finished.append(Beam(ids, total, normalised(total, step)))
            elif not ends and not last and len(keep_rows) < num_beams:
                keep_rows.append(row)
                keep_tokens.append(token)
                keep_sums.append(total)
        finished = sorted(finished, key=lambda b: -b.score)[:num_beams]
        if last or not keep_rows:
            break
        seqs = torch.cat(
            (seqs[keep_rows], torch.tensor(keep_tokens, device=idx.device)[:, None]), 1
        )
        sums = torch.tensor(keep_sums, dtype=torch.float64, device=idx.device)
        if len(finished) == num_beams and not _can_improve(
            keep_sums[0], step, max_new_tokens, length_penalty, finished[-1].score
        ):
            break
    return finished[:n_return]


def _can_improve(
    best_live: float, step: int, max_new: int, length_penalty: float, worst: float
) -> bool:
    """Could the best live beam still beat the worst finished one? Log-probs only fall, so its
    score can only rise through the length normalisation: at most ``best / L ** lp`` for the
    longest length it may reach when ``lp > 0`` (the sum is negative), its current length else."""
    length = max_new if length_penalty > 0 else step
    return best_live / length**length_penalty > worst
