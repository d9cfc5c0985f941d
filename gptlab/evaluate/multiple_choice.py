"""Multiple choice by log-likelihood: the model "answers" with the option it finds most likely.

Each option is a continuation of the item's context. Its score is the sum of the log-probabilities
of its tokens given the context and the option's earlier tokens. Long options collect more
negative terms, so the raw sum favours short answers; dividing by the option's tokens
(``"token"``) or UTF-8 bytes (``"byte"``, tokenizer-independent) removes most of that bias.

The option is encoded on its own and appended to the encoded context, so every option of an item
is scored against exactly the same context tokens. Rows of different lengths are batched with
right padding: attention is causal, so padding after a row's last token cannot change any of
its scores.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.evaluate._checks import check_int, check_model, check_tokenizer, model_device
from gptlab.tokenizers import encode_plain

__all__ = [
    "NORMALIZATIONS",
    "MultipleChoiceItem",
    "MultipleChoiceResult",
    "OptionScore",
    "centred_accuracy",
    "choose_options",
    "evaluate_multiple_choice",
    "score_options",
]

NORMALIZATIONS = ("sum", "token", "byte")


@dataclass(frozen=True)
class MultipleChoiceItem:
    """A context, two or more option continuations, and the index of the right one."""

    context: str
    options: tuple[str, ...]
    answer: int
    id: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.context, str) or not self.context:
            raise ValueError(f"item {self.id!r}: context must be a non-empty str")
        if isinstance(self.options, str) or not isinstance(self.options, Sequence):
            raise TypeError(f"item {self.id!r}: options must be a list of strings")
        object.__setattr__(self, "options", tuple(self.options))
        if len(self.options) < 2 or not all(isinstance(o, str) and o for o in self.options):
            raise ValueError(f"item {self.id!r}: needs at least 2 non-empty string options")
        if len(set(self.options)) != len(self.options):
            raise ValueError(f"item {self.id!r}: options repeat, so the answer is ambiguous")
        if isinstance(self.answer, bool) or not isinstance(self.answer, int):
            raise TypeError(f"item {self.id!r}: answer must be an int index into options")
        if not 0 <= self.answer < len(self.options):
            raise ValueError(
                f"item {self.id!r}: answer {self.answer} is not an index of its "
                f"{len(self.options)} options"
            )


@dataclass(frozen=True)
class OptionScore:
    """One option's summed log-probability (nats) and its size in tokens and UTF-8 bytes."""

    logprob: float
    tokens: int
    bytes: int

    def normalized(self, normalization: str) -> float:
        """The score used to rank options: the sum, or the sum per token or per byte."""
        if normalization == "sum":
            return self.logprob
        if normalization == "token":
            return self.logprob / self.tokens
        if normalization == "byte":
            return self.logprob / self.bytes
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


@dataclass(frozen=True)
class MultipleChoiceResult:
    """Per-item predictions and correctness, and the accuracy over all items."""

    predictions: list[int]
    correct: list[bool]
    scores: list[list[OptionScore]]
    normalization: str
    chance: float  # expected accuracy of guessing: the mean of 1/k over items

    @property
    def n(self) -> int:
        return len(self.correct)

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def centred_accuracy(self) -> float:
        """0 for guessing, 1 for perfect: ``(acc - chance) / (1 - chance)``."""
        return (self.accuracy - self.chance) / (1.0 - self.chance)


def centred_accuracy(accuracy: float, k: int) -> float:
    """Rescale accuracy on ``k``-option items so chance is 0 and perfect is 1 (negative: worse
    than guessing): ``(acc - 1/k) / (1 - 1/k)``."""
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)):
        raise TypeError(f"accuracy must be a float in [0, 1], got {accuracy!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    check_int(k, "k (options per item)", 2)
    return (accuracy - 1.0 / k) / (1.0 - 1.0 / k)


def _check_items(items: Any) -> list[MultipleChoiceItem]:
    if isinstance(items, MultipleChoiceItem) or not isinstance(items, Sequence):
        raise TypeError("items must be a list of MultipleChoiceItem; wrap one item as [item]")
    if not items:
        raise ValueError("items is empty; pass at least one MultipleChoiceItem")
    for i, item in enumerate(items):
        if not isinstance(item, MultipleChoiceItem):
            raise TypeError(f"items[{i}] must be a MultipleChoiceItem, got {type(item).__name__}")
    return list(items)


@torch.no_grad()
def score_options(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    *,
    batch_size: int = 16,
) -> list[list[OptionScore]]:
    """Score every option of every item: ``scores[i][j]`` is option ``j`` of item ``i``.

    When context + option exceed ``block_size + 1`` tokens the context is cut from the left.
    """
    check_model(model)
    check_tokenizer(tokenizer)
    items = _check_items(items)
    check_int(batch_size, "batch_size")
    block = model.config.block_size
    encode = functools.partial(encode_plain, tokenizer)  # typed text stays text
    rows = []  # (item, option, ids, number of option tokens, option bytes)
    for i, item in enumerate(items):
        context = list(encode(item.context))
        if not context:
            raise ValueError(f"item {item.id or i!r}: the context encodes to no tokens")
        for j, option in enumerate(item.options):
            option_ids = list(encode(option))
            if not 1 <= len(option_ids) <= block:
                raise ValueError(
                    f"item {item.id or i!r} option {j} is {len(option_ids)} tokens; it must be "
                    f"1..{block} (block_size) tokens to be scored after some context"
                )
            ids = (context + option_ids)[-(block + 1) :]
            rows.append((i, j, ids, len(option_ids), len(option.encode("utf-8"))))
    scores: list[list[OptionScore | None]] = [[None] * len(item.options) for item in items]
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(r[2]) for r in batch) - 1
            idx = torch.zeros(len(batch), width, dtype=torch.long)
            for r, (_, _, ids, _, _) in enumerate(batch):
                idx[r, : len(ids) - 1] = torch.tensor(ids[:-1])
            logits, _ = model(idx.to(device))
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, vocab)
            for r, (i, j, ids, n_option, n_bytes) in enumerate(batch):
                end = len(ids) - 1  # positions end-n_option .. end-1 predict the option's tokens
                positions = torch.arange(end - n_option, end)
                targets = torch.tensor(ids[-n_option:])
                total = logp[r, positions, targets].double().sum()
                scores[i][j] = OptionScore(float(total), n_option, n_bytes)
    finally:
        model.train(was_training)
    return scores  # type: ignore[return-value]


def evaluate_multiple_choice(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    *,
    normalization: str = "byte",
    batch_size: int = 16,
) -> MultipleChoiceResult:
    """Pick the best-scoring option of each item; ties go to the first option."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    items = _check_items(items)
    scores = score_options(model, tokenizer, items, batch_size=batch_size)
    return choose_options(items, scores, normalization=normalization)


def choose_options(
    items: Sequence[MultipleChoiceItem],
    scores: Sequence[Sequence[OptionScore]],
    *,
    normalization: str = "byte",
) -> MultipleChoiceResult:
    """The result of :func:`evaluate_multiple_choice` from options already scored with
    :func:`score_options` (score once, then compare normalisations without running the model
    again). Ties go to the first option."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    items = _check_items(items)
    scores = [list(option_scores) for option_scores in scores]
    if len(scores) != len(items):
        raise ValueError(
            f"got scores for {len(scores)} items but {len(items)} items; pass the list "
            "score_options returned for these items"
        )
    for i, (item, option_scores) in enumerate(zip(items, scores, strict=True)):
        if len(option_scores) != len(item.options) or not all(
            isinstance(s, OptionScore) for s in option_scores
        ):
            raise ValueError(
                f"item {i} has {len(item.options)} options but its scores are "
                f"{len(option_scores)} values that are not all OptionScore; pass the list "
                "score_options returned for these items"
            )
    predictions = []
    for option_scores in scores:
        ranked = [s.normalized(normalization) for s in option_scores]
        predictions.append(max(range(len(ranked)), key=ranked.__getitem__))
    correct = [p == item.answer for p, item in zip(predictions, items, strict=True)]
    chance = sum(1.0 / len(item.options) for item in items) / len(items)
    return MultipleChoiceResult(predictions, correct, scores, normalization, chance)
