"""Verifiable rewards: numbers a program computes from a response, for DPO ranking and GRPO.

A reward here is a function ``reward(response, reference) -> float``: the decoded response
text and the item's reference answer (``None`` where a check needs none, e.g. a format). The
answer checks reuse :mod:`gptlab.evaluate.verifiers`; format checks say whether an instruction
("answer in one word", "reply in lowercase", "end with a question") was followed;
:func:`combine_rewards` mixes them with weights, and :func:`reward_from_text` turns one into
the ``reward_fn(prompt_index, response_ids)`` that :func:`gptlab.align.grpo.train_grpo` calls.

:func:`length_bonus_reward`, :func:`keyword_reward` and :func:`char_overlap_reward` are **meant
to be hacked**: they pay for something that correlates with a good answer in the data (saying
more, using the word "because", using the answer's characters) but can be produced without
one, so a policy optimised against them learns to ramble, repeat the keyword or list every
character it knows. That is reward hacking (Goodhart's law) in a few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gptlab.align._checks import check_float, check_int
from gptlab.evaluate.verifiers import exact_match, numeric_match, within_word_limit

__all__ = [
    "INSTRUCTIONS",
    "Reward",
    "char_overlap_reward",
    "combine_rewards",
    "exact_answer_reward",
    "keyword_reward",
    "length_bonus_reward",
    "length_reward",
    "lowercase_reward",
    "numeric_answer_reward",
    "one_word_reward",
    "question_reward",
    "reward_from_text",
]

Reward = Callable[[str, Any], float]


def _text(response: Any) -> str:
    if not isinstance(response, str):
        raise TypeError(
            f"response must be the decoded text (a str), got {type(response).__name__}; "
            "decode the ids with the tokenizer, or use reward_from_text"
        )
    return response


def _reference(reference: Any) -> str:
    if not isinstance(reference, str):
        raise TypeError(
            f"this reward compares with a reference answer, which must be a str, got "
            f"{type(reference).__name__}"
        )
    return reference


def exact_answer_reward(response: str, reference: Any) -> float:
    """1.0 when the response equals the reference after normalisation (case, punctuation, ...)."""
    return float(exact_match(_text(response), _reference(reference)))


def numeric_answer_reward(response: str, reference: Any) -> float:
    """1.0 when the last number in the response equals the reference number (e.g. "12" for 12)."""
    if not isinstance(reference, (str, int, float)) or isinstance(reference, bool):
        raise TypeError(f"reference must be a number or a str holding one, got {reference!r}")
    return float(numeric_match(_text(response), reference))


def one_word_reward(response: str, reference: Any = None) -> float:
    """1.0 when the response is exactly one word ("answer in one word")."""
    return float(len(_text(response).split()) == 1)


def lowercase_reward(response: str, reference: Any = None) -> float:
    """1.0 when the response has letters and none is upper case ("reply in lowercase")."""
    text = _text(response)
    return float(any(c.islower() for c in text) and not any(c.isupper() for c in text))


def question_reward(response: str, reference: Any = None) -> float:
    """1.0 when the response ends with a question mark ("end with a question")."""
    return float(_text(response).rstrip().endswith("?"))


def length_reward(max_words: int) -> Reward:
    """A reward: 1.0 for a non-empty response of at most ``max_words`` words, else 0.0."""
    check_int("max_words", max_words, 1)

    def reward(response: str, reference: Any = None) -> float:
        text = _text(response)
        return float(bool(text.split()) and within_word_limit(text, max_words))

    return reward


def length_bonus_reward(per_word: float = 0.1) -> Reward:
    """A hackable reward: ``per_word`` for every word, without limit (a policy learns to ramble)."""
    check_float("per_word", per_word, low=0, low_open=True)

    def reward(response: str, reference: Any = None) -> float:
        return per_word * len(_text(response).split())

    return reward


def keyword_reward(keyword: str, per_hit: float = 1.0) -> Reward:
    """A hackable reward: ``per_hit`` for each occurrence of ``keyword`` (case-insensitive).

    Meant as "explains itself" (``keyword="because"``); repeating the word collects it all.
    """
    if not isinstance(keyword, str) or not keyword.strip():
        raise ValueError(f"keyword must be a non-empty string, got {keyword!r}")
    check_float("per_hit", per_hit, low=0, low_open=True)
    needle = keyword.lower()

    def reward(response: str, reference: Any = None) -> float:
        return per_hit * _text(response).lower().count(needle)

    return reward


def char_overlap_reward(response: str, reference: Any) -> float:
    """A hackable partial credit: the share of the reference's distinct characters that appear
    anywhere in the response, in any order and any number of times.

    Meant as "nearly right earns something" (``"三百五"`` for ``"三百零五"`` scores 0.75), but a
    response that lists every character of the vocabulary scores 1.0 without being right.
    """
    wanted = set(_reference(reference))
    if not wanted:
        raise ValueError("the reference answer is empty; there is nothing to give credit for")
    return len(wanted & set(_text(response))) / len(wanted)


def combine_rewards(weighted: Sequence[tuple[float, Reward]]) -> Reward:
    """One reward: the weighted sum ``sum(w * reward(response, reference))`` of several.

    >>> r = combine_rewards([(1.0, exact_answer_reward), (0.1, one_word_reward)])
    >>> r("Paris", "paris"), r("It is Paris", "paris")
    (1.1, 0.0)
    """
    if isinstance(weighted, (str, bytes)) or not isinstance(weighted, Sequence) or not weighted:
        raise TypeError("weighted must be a non-empty list of (weight, reward) pairs")
    parts = []
    for i, item in enumerate(weighted):
        if not isinstance(item, tuple) or len(item) != 2 or not callable(item[1]):
            raise TypeError(f"weighted[{i}] must be a (weight, reward function) pair, got {item!r}")
        parts.append((check_float(f"weighted[{i}] weight", item[0]), item[1]))

    def reward(response: str, reference: Any = None) -> float:
        return sum(w * fn(response, reference) for w, fn in parts)

    return reward


# The instruction constraints of recipes/dpo.py: text added to a prompt, and its check.
INSTRUCTIONS: dict[str, Reward] = {
    "Answer in one word.": one_word_reward,
    "Reply in lowercase.": lowercase_reward,
    "End your reply with a question.": question_reward,
}


def reward_from_text(
    tokenizer: Any, reward: Reward, references: Sequence[Any]
) -> Callable[[int, list[int]], float]:
    """``reward_fn(prompt_index, response_ids)`` for GRPO: decode, strip, score against
    ``references[prompt_index]`` (one reference per prompt; ``None`` entries for format rewards).
    """
    if not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(f"tokenizer must have a decode method, got {type(tokenizer).__name__}")
    if not callable(reward):
        raise TypeError("reward must be callable as reward(response_text, reference)")
    if isinstance(references, (str, bytes)) or not isinstance(references, Sequence):
        raise TypeError("references must be a list with one reference per prompt")
    refs = list(references)

    def reward_fn(prompt_index: int, response_ids: list[int]) -> float:
        if not 0 <= prompt_index < len(refs):
            raise IndexError(f"prompt index {prompt_index} has no reference ({len(refs)} given)")
        return reward(tokenizer.decode(response_ids).strip(), refs[prompt_index])

    return reward_fn
