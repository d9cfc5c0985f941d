"""A language model as judge: which of two answers is better, and how far to trust the verdict.

The judge (a chat model such as SmolLM2) reads a question and two answers labelled A and B and
is asked which is better. Instead of sampling its reply we read its next-token log-probabilities
for ``A`` and ``B`` right after the assistant marker: one forward pass, deterministic, and a
margin that says how sure it is. Showing every pair twice, once in each order, measures the
judge's *position bias*: a fair judge picks the same answer whichever slot it is in; a biased
one keeps picking the first (or the second) slot. Where a verifier knows the right answer
(a multiple-choice key), the share of verdicts that agree with it measures the judge itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.evaluate._checks import check_model, check_tokenizer, model_device

__all__ = ["JudgeVerdict", "PairJudgement", "judge_pair", "judge_both_orders", "position_bias"]

JUDGE_INSTRUCTION = (
    "Which answer to the question is correct? Reply with the letter A or B only.\n\n"
    "Question: {question}\n\nAnswer A: {first}\n\nAnswer B: {second}"
)


@dataclass(frozen=True)
class JudgeVerdict:
    """One verdict: the slot the judge prefers (``"A"`` first, ``"B"`` second) and its margin
    ``log p(A) - log p(B)`` in nats (positive: A)."""

    choice: str
    margin: float


@dataclass(frozen=True)
class PairJudgement:
    """Both orders of one pair. ``forward`` shows (answer_1, answer_2) as (A, B); ``swapped``
    shows (answer_2, answer_1)."""

    forward: JudgeVerdict
    swapped: JudgeVerdict

    @property
    def consistent(self) -> bool:
        """The same *answer* wins in both orders (so its slot changed with it)."""
        return self.forward.choice != self.swapped.choice

    @property
    def preferred(self) -> int | None:
        """1 or 2: the answer chosen in both orders; ``None`` when the verdict followed a slot."""
        if not self.consistent:
            return None
        return 1 if self.forward.choice == "A" else 2


def _letter_id(tokenizer: Any, letter: str) -> int:
    ids = list(tokenizer.encode(letter))
    if len(ids) != 1:
        raise ValueError(f"the judge's tokenizer must encode {letter!r} as one token, got {ids}")
    return ids[0]


@torch.no_grad()
def judge_pair(
    model: torch.nn.Module, tokenizer: Any, question: str, first: str, second: str
) -> JudgeVerdict:
    """Ask ``model`` (a ChatML chat model) whether ``first`` (A) or ``second`` (B) answers
    ``question`` better; the verdict is whichever letter is more probable as its first token."""
    from gptlab.pretrained import render_chatml

    check_model(model)
    check_tokenizer(tokenizer)
    for name, value in (("question", question), ("first", first), ("second", second)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty str")
    content = JUDGE_INSTRUCTION.format(question=question, first=first, second=second)
    prompt = render_chatml([{"role": "user", "content": content}])
    ids = list(tokenizer.encode(prompt, allowed_special="all"))[-model.config.block_size :]
    idx = torch.tensor([ids], dtype=torch.long, device=model_device(model))
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx)
    finally:
        model.train(was_training)
    logp = torch.log_softmax(logits[0, -1].double(), dim=-1)
    margin = float(logp[_letter_id(tokenizer, "A")] - logp[_letter_id(tokenizer, "B")])
    return JudgeVerdict("A" if margin >= 0 else "B", margin)


def judge_both_orders(
    model: torch.nn.Module, tokenizer: Any, question: str, answer_1: str, answer_2: str
) -> PairJudgement:
    """Judge the pair twice, once in each order (the measurement of position bias)."""
    return PairJudgement(
        judge_pair(model, tokenizer, question, answer_1, answer_2),
        judge_pair(model, tokenizer, question, answer_2, answer_1),
    )


def position_bias(judgements: Sequence[PairJudgement]) -> dict[str, float]:
    """Summary over pairs judged in both orders.

    ``consistent``: share whose winner survives the swap; ``first_slot``: share of all verdicts
    (both orders) that chose slot A, 0.5 for a judge without a slot preference;
    ``always_first`` / ``always_second``: share of pairs where both verdicts chose that slot.
    """
    if not judgements or not all(isinstance(j, PairJudgement) for j in judgements):
        raise ValueError("judgements must be a non-empty list of PairJudgement")
    n = len(judgements)
    verdicts = [v for j in judgements for v in (j.forward, j.swapped)]
    return {
        "pairs": n,
        "consistent": sum(j.consistent for j in judgements) / n,
        "first_slot": sum(v.choice == "A" for v in verdicts) / len(verdicts),
        "always_first": sum(j.forward.choice == j.swapped.choice == "A" for j in judgements) / n,
        "always_second": sum(j.forward.choice == j.swapped.choice == "B" for j in judgements) / n,
    }
