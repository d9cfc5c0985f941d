"""Verifiers: programs that decide whether a model's answer is right, without a human.

Free text is compared after normalisation (case, punctuation, articles, spacing), numbers are
pulled out of the text and compared as numbers, and format checks say whether an output has the
shape a task asked for (valid JSON, Python that parses, a line that matches a pattern, a word
limit). Every check returns a bool, so averaging them over items gives an accuracy.
"""

from __future__ import annotations

import ast
import json
import math
import re
import string
import unicodedata
from typing import Any

__all__ = [
    "exact_match",
    "extract_number",
    "is_json",
    "matches_pattern",
    "normalize_answer",
    "numeric_match",
    "parses_as_python",
    "within_word_limit",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
# An optional sign, then digits with optional thousands commas (1,234,567) or plain digits, an
# optional decimal part, or a bare decimal (.5); an optional exponent.
_NUMBER = re.compile(
    r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])"
)


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def normalize_answer(text: str) -> str:
    """Lower-case, unify Unicode forms (NFKC), drop punctuation and the articles a/an/the, and
    collapse whitespace, so ``"The Eiffel-Tower!"`` and ``"eiffel tower"`` compare equal."""
    text = unicodedata.normalize("NFKC", _check_str(text, "text")).lower()
    text = text.replace("-", " ").translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(_check_str(prediction, "prediction")) == normalize_answer(
        _check_str(reference, "reference")
    )


def extract_number(text: str) -> float | None:
    """The last number written in ``text``, or None: ``"so 1,250.5 - 3 = -2"`` -> ``-2.0``.

    Thousands commas (``1,234``), signs (also the Unicode minus), decimals (``.5``, ``3.25``)
    and exponents (``1e-3``) are read; a trailing full stop ends a sentence, not a decimal.
    """
    _check_str(text, "text")
    found = [m.group() for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group())]
    if not found:
        return None
    return float(found[-1].replace(",", "").replace("−", "-"))


def numeric_match(
    prediction: str, reference: float | str, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9
) -> bool:
    """True when the last number in ``prediction`` equals ``reference`` within the tolerances."""
    _check_str(prediction, "prediction")
    if isinstance(reference, str):
        value = extract_number(reference)
        if value is None:
            raise ValueError(f"reference {reference!r} contains no number; pass the number itself")
    elif isinstance(reference, bool) or not isinstance(reference, (int, float)):
        raise TypeError(f"reference must be a number or a str holding one, got {reference!r}")
    else:
        value = float(reference)
    got = extract_number(prediction)
    return got is not None and math.isclose(got, value, rel_tol=rel_tol, abs_tol=abs_tol)


def is_json(text: str) -> bool:
    """True when the whole of ``text`` (surrounding whitespace aside) is one JSON value."""
    try:
        json.loads(_check_str(text, "text"))
    except json.JSONDecodeError:
        return False
    return True


def parses_as_python(text: str) -> bool:
    """True when ``text`` is syntactically valid Python (it may still be wrong: see the sandbox)."""
    try:
        ast.parse(_check_str(text, "text"))
    except (SyntaxError, ValueError):  # ValueError: source with a NUL byte
        return False
    return True


def matches_pattern(text: str, pattern: str | re.Pattern[str]) -> bool:
    """True when the whole of ``text`` matches the regular expression ``pattern``."""
    _check_str(text, "text")
    if isinstance(pattern, str):
        try:
            pattern = re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"pattern {pattern!r} is not a valid regular expression: {err}"
            ) from None
    elif not isinstance(pattern, re.Pattern):
        raise TypeError(f"pattern must be a str or compiled regex, got {type(pattern).__name__}")
    return pattern.fullmatch(text) is not None


def within_word_limit(text: str, max_words: int) -> bool:
    """True when ``text`` has at most ``max_words`` whitespace-separated words."""
    _check_str(text, "text")
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 0:
        raise ValueError(f"max_words must be an int >= 0, got {max_words!r}")
    return len(text.split()) <= max_words
