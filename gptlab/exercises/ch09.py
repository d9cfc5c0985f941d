"""Checkers for the exercises of chapter 9, "Applications: translation, dialogue, code".

Each checker runs the reader's function on cases with known answers (computed here or by
:mod:`gptlab.applications`) and names the usual mistake when it recognises one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gptlab.applications import number_to_english, placeholders
from gptlab.exercises import NotSolved, exercise

__all__ = [
    "char_ngram_f_score",
    "check_char_ngram_f",
    "check_cut_at_top_level",
    "check_keeps_placeholders",
    "check_response_loss",
    "check_words_to_number",
    "cut_at_top_level",
]


def _callable(answer: Any, name: str, exercise_id: str) -> Callable[..., Any]:
    if not callable(answer):
        raise NotSolved(
            f"pass your function itself, e.g. check('{exercise_id}', {name}), not its result"
        )
    return answer


# --- 9.1 English number words back to numbers --------------------------------------------------


@exercise("9.1", "read English number words")
def check_words_to_number(answer: Any) -> str | None:
    """``words_to_number(number_to_english(n)) == n`` for small, round, teen and large numbers."""
    words_to_number = _callable(answer, "words_to_number", "9.1")
    rng = random.Random(91)
    numbers = [0, 7, 13, 20, 21, 99, 100, 101, 115, 999, 1000, 1001, 2020, 10_000, 12_345]
    numbers += [100_000, 110_011, 1_000_000, 7_000_007, 99_999_999]
    numbers += rng.sample(range(10**8), 40)
    for n in numbers:
        text = number_to_english(n)
        got = words_to_number(text)
        if isinstance(got, bool) or not isinstance(got, int):
            return f"words_to_number({text!r}) should return an int, got {type(got).__name__}"
        if got == n:
            continue
        if "-" in text and n % 10 and got == n - n % 10:
            return f"{text!r} gave {got}: split hyphenated words ('forty-two' is forty and two)"
        if ("thousand" in text or "million" in text) and got != n and got % 1000 == n % 1000:
            return (
                f"{text!r} gave {got}, expected {n}: 'thousand' and 'million' multiply the whole "
                "group before them ('one hundred five thousand' = 105 * 1000); add that group to "
                "a running total and start a new group"
            )
        if "hundred" in text and got % 100 == n % 100:
            return f"{text!r} gave {got}, expected {n}: 'hundred' multiplies the number before it"
        return f"words_to_number({text!r}) returned {got}, expected {n}"
    return None


# --- 9.2 the loss on the reply only --------------------------------------------------------------


def _scalar(out: Any, name: str) -> Tensor:
    if not isinstance(out, Tensor) or out.numel() != 1:
        raise NotSolved(f"{name} should return a scalar torch.Tensor, got {type(out).__name__}")
    return out.reshape(())


@exercise("9.2", "the loss on the reply only")
def check_response_loss(answer: Any) -> str | None:
    """``response_loss(logits, targets, is_response)`` = mean cross-entropy over the reply positions."""
    response_loss = _callable(answer, "response_loss", "9.2")
    gen = torch.Generator().manual_seed(92)
    for B, T, V in ((1, 6, 5), (3, 9, 17), (2, 12, 31)):
        logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 2
        targets = torch.randint(V, (B, T), generator=gen)
        is_response = torch.rand(B, T, generator=gen) < 0.4
        is_response[0, -1] = True  # at least one reply position
        is_response[-1, 0] = False  # and at least one prompt position
        want = F.cross_entropy(
            logits.flatten(0, 1), targets.masked_fill(~is_response, -100).flatten()
        )
        got = _scalar(response_loss(logits, targets, is_response.clone()), "response_loss")
        if torch.allclose(got.double(), want, atol=1e-8):
            continue
        every = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        mask = is_response.flatten()
        if torch.allclose(got.double(), every, atol=1e-8):
            return "that is the loss over every position; average over the reply positions only"
        if torch.allclose(got.double(), per_token[mask].sum(), atol=1e-8):
            return "you summed the reply losses: divide by the number of reply positions"
        if torch.allclose(got.double(), (per_token * mask).sum() / mask.numel(), atol=1e-8):
            return "divide by the number of reply positions (is_response.sum()), not all positions"
        if torch.allclose(got.double(), per_token[~mask].mean(), atol=1e-8):
            return "you averaged over the prompt positions: keep those where is_response is True"
        return f"for shape {(B, T, V)} you got {got.item():.5f}, expected {want.item():.5f}"
    return None


# --- 9.3 placeholders must survive translation ---------------------------------------------------

_PLACEHOLDER_CASES = [
    ("Delete %(name)s", "Supprimer %(name)s"),
    ("Delete %(name)s", "Supprimer"),  # dropped
    ("Delete %(name)s", "Supprimer %(nom)s"),  # translated the name: the program breaks
    ("%(count)d of %(total)d selected", "%(total)d 个中 %(count)d 个被选"),  # order may change
    ("%(count)d of %(total)d selected", "%(count)d sur %(count)d sélectionnés"),  # duplicated one
    ("Hello %s and %s", "Bonjour %s"),  # one of two equal placeholders lost
    ("Hello %s and %s", "Bonjour %s et %s"),
    ("100%% sure, {name}", "sûr à 100%%, {name}"),
    ("100%% sure, {name}", "sûr à 100 %, {name}"),  # the escaped percent sign changed
    ("Save", "Enregistrer"),  # nothing to keep
    ("Save", "Enregistrer %s"),  # invented a placeholder
    ("Enter %(field)s.", "Saisissez %(field)s."),
]


@exercise("9.3", "keep the placeholders")
def check_keeps_placeholders(answer: Any) -> str | None:
    """``keeps_placeholders(source, output)``: the same placeholders, as many times, any order."""
    keeps_placeholders = _callable(answer, "keeps_placeholders", "9.3")
    for source, output in _PLACEHOLDER_CASES:
        want = placeholders(source) == placeholders(output)
        got = keeps_placeholders(source, output)
        if not isinstance(got, bool):
            return f"keeps_placeholders should return True or False, got {type(got).__name__}"
        if got == want:
            continue
        if want:
            return (
                f"{source!r} -> {output!r} keeps every placeholder (their order may change with "
                "the language), so the answer is True"
            )
        if Counter(placeholders(source)).keys() == Counter(placeholders(output)).keys():
            return (
                f"{source!r} -> {output!r}: the same kinds of placeholder but not the same number "
                "of each; compare counts (a sorted list or a Counter), not sets"
            )
        return f"{source!r} -> {output!r} should give False: compare the placeholders exactly"
    return None


# --- 9.4 the character n-gram F-score of one order -----------------------------------------------


def char_ngram_f_score(
    prediction: str,
    reference: str,
    n: int,
    beta: float = 2.0,
    *,
    strip_whitespace: bool = True,
    clip: bool = True,
) -> float:
    """F_beta of the character n-grams of one sentence pair (whitespace removed, counts clipped).

    The two switches turn off one step each, so the checker can recognise a forgotten step.
    """
    pred, ref = (("".join(t.split()) if strip_whitespace else t) for t in (prediction, reference))
    p = Counter(pred[i : i + n] for i in range(len(pred) - n + 1))
    r = Counter(ref[i : i + n] for i in range(len(ref) - n + 1))
    if clip:
        matched = sum((p & r).values())
    else:
        matched = sum(count for gram, count in p.items() if gram in r)
    if not p or not r or not matched:
        return 0.0
    precision, recall = matched / sum(p.values()), matched / sum(r.values())
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


_CHRF_CASES = [
    ("Supprimé", "Supprimer", 1),
    ("Supprimé", "Supprimer", 2),
    ("Sup primer", "Supprimer", 3),
    ("aaaa", "aa", 1),  # clipped: only two a's can match
    ("ab", "abc", 2),
    ("三百零五", "三百五", 2),
    ("xyz", "abc", 1),
    ("a", "abc", 2),  # no bigram in the prediction
    ("Oui", "Oui", 3),
]


@exercise("9.4", "the character n-gram F-score")
def check_char_ngram_f(answer: Any) -> str | None:
    """``char_ngram_f(prediction, reference, n, beta=2.0)`` for one order ``n``, one pair."""
    char_ngram_f = _callable(answer, "char_ngram_f", "9.4")
    for prediction, reference, n in _CHRF_CASES:
        want = char_ngram_f_score(prediction, reference, n)
        got = char_ngram_f(prediction, reference, n)
        if isinstance(got, Tensor):
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return f"char_ngram_f should return a float, got {type(got).__name__}"
        if abs(got - want) < 1e-9:
            continue
        label = f"char_ngram_f({prediction!r}, {reference!r}, n={n})"
        variants = [
            (char_ngram_f_score(prediction, reference, n, beta=1.0), "use beta = 2 (recall "
             "counts more): F = (1+β²)PR / (β²P + R)"),
            (want * 100, "return a fraction between 0 and 1, not a percentage"),
            (char_ngram_f_score(prediction, reference, n, strip_whitespace=False),
             "remove the whitespace before cutting the text into n-grams"),
            (char_ngram_f_score(prediction, reference, n, clip=False),
             "clip the matches: an n-gram matches at most as often as it occurs in the reference"),
        ]  # fmt: skip
        for value, hint in variants:
            if abs(value - want) > 1e-9 and abs(got - value) < 1e-9:
                return f"{label}: {hint}"
        return f"{label} returned {got:.4f}, expected {want:.4f}"
    return None


# --- 9.5 cut a sample at the next top-level line -------------------------------------------------


def cut_at_top_level(text: str) -> str | None:
    """The line rule: keep lines until one after the first starts at column 0 (not blank, not a
    comment); ``None`` if no such line comes. (gptlab's first_function uses tokenize instead.)"""
    lines = text.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            return "\n".join(lines[:i]).rstrip() + "\n"
    return None


_CUT_CASES = [
    "def f(x):\n    return x\n\ndef g():\n    pass\n",
    "def f(x):\n    if x:\n        return 1\n    return 2\nclass A:\n    pass\n",
    "def f(x):\n    return x\n",  # never ended: maybe unfinished
    "def f(x):\n# a comment at column 0\n    return x\nx = f(1)\n",
    "def f():\n\n\n    return 1\n\n\n\nprint(f())",
    "def f(): return 1\nx = 2\n",
    "def f(x):\n    return (x +\n            1)\n@decorator\ndef g():\n    pass\n",
]


@exercise("9.5", "cut a sample after its function")
def check_cut_at_top_level(answer: Any) -> str | None:
    """``cut_at_top_level(text)`` keeps the first function and drops what follows it."""
    cut = _callable(answer, "cut_at_top_level", "9.5")
    for text in _CUT_CASES:
        want = cut_at_top_level(text)
        got = cut(text)
        if got == want:
            continue
        if want is None:
            return f"{text!r}: nothing follows the function, so return None (it may be unfinished)"
        if isinstance(got, str) and got.rstrip() == want.rstrip():
            return f"{text!r}: strip the trailing blank lines and end with one newline: {want!r}"
        if isinstance(got, str) and "#" in text and got.startswith(want[: text.index("#")]):
            return f"{text!r}: a comment at column 0 does not end a function"
        return f"cut_at_top_level({text!r}) returned {got!r}, expected {want!r}"
    return None
