"""gptlab.evaluate.verifiers: normalised exact match, numbers, format checks."""

from __future__ import annotations

import pytest

from gptlab.evaluate import verifiers as v


@pytest.mark.parametrize(
    "prediction, reference, same",
    [
        ("The Eiffel-Tower!", "eiffel tower", True),
        ("  PARIS. ", "Paris", True),
        ("an apple", "apple", True),
        ("Paris, France", "Paris", False),
        ("theory", "ory", False),  # "the" is removed as a word only
    ],
)
def test_exact_match_after_normalisation(prediction, reference, same):
    assert v.exact_match(prediction, reference) is same


@pytest.mark.parametrize(
    "text, number",
    [
        ("The answer is 42.", 42.0),
        ("so 1,250.5 - 3 = -2", -2.0),
        ("It costs $1,234,567 in total", 1234567.0),
        ("about .5 of it", 0.5),
        ("temperature fell to −7 degrees", -7.0),  # Unicode minus
        ("3.25 then 10", 10.0),
        ("x = 1e-3", 0.001),
        ("no digits here", None),
        ("12,34", 34.0),  # not a thousands group: two numbers
        ("version2 has 5 parts", 5.0),  # digits glued to a word are not a number
    ],
)
def test_extract_number_reads_the_last_number(text, number):
    assert v.extract_number(text) == number


def test_numeric_match():
    assert v.numeric_match("so the total is 1,000.", 1000)
    assert v.numeric_match("#### 18", "18")
    assert not v.numeric_match("I think 17", 18)
    assert not v.numeric_match("no idea", 18)
    with pytest.raises(ValueError):
        v.numeric_match("5", "five")


def test_format_checks():
    assert v.is_json('{"a": [1, 2]}') and not v.is_json("{'a': 1}")
    assert v.parses_as_python("def f():\n    return 1\n")
    assert not v.parses_as_python("def f(:\n") and not v.parses_as_python("x = 1\x00")
    assert v.matches_pattern("2026-12-01", r"\d{4}-\d{2}-\d{2}")
    assert not v.matches_pattern("on 2026-12-01", r"\d{4}-\d{2}-\d{2}")  # whole text must match
    assert v.within_word_limit("one two three", 3) and not v.within_word_limit("a b c d", 3)
    with pytest.raises(ValueError):
        v.matches_pattern("x", "(")
    with pytest.raises(TypeError):
        v.exact_match(None, "a")
