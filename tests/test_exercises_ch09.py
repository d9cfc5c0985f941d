"""Chapter 9 checkers: each accepts a right answer and rejects the usual wrong ones with a hint."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from gptlab.applications import placeholders
from gptlab.exercises import check, registered
from gptlab.exercises.ch09 import char_ngram_f_score, cut_at_top_level


def _verdict(exercise_id, answer, capsys):
    ok = check(exercise_id, answer)
    return ok, capsys.readouterr().out


def test_all_five_are_registered():
    assert {f"9.{k}" for k in range(1, 6)} <= set(registered())


def test_a_stub_is_not_solved(capsys):
    def stub(*args):
        raise NotImplementedError

    for k in range(1, 6):
        ok, out = _verdict(f"9.{k}", stub, capsys)
        assert not ok and "not solved yet" in out and "NotImplementedError" in out


def test_passing_a_result_instead_of_a_function(capsys):
    ok, out = _verdict("9.1", 42, capsys)
    assert not ok and "pass your function itself" in out


# --- 9.1 English number words ----------------------------------------------------------------

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
        "nineteen"]  # fmt: skip
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def words_to_number(text: str) -> int:
    total, group = 0, 0
    for word in text.replace("-", " ").split():
        if word in ONES:
            group += ONES.index(word)
        elif word in TENS:
            group += 10 * TENS.index(word)
        elif word == "hundred":
            group *= 100
        else:
            total += group * {"thousand": 1_000, "million": 1_000_000}[word]
            group = 0
    return total + group


def test_9_1_accepts_a_parser(capsys):
    ok, out = _verdict("9.1", words_to_number, capsys)
    assert ok and "correct" in out


def no_hyphens(text):
    """Reads only the first half of "forty-two"."""
    return words_to_number(" ".join(w.split("-")[0] for w in text.split()))


def scale_the_total(text):
    """'thousand' multiplies everything said so far, millions included."""
    total, group = 0, 0
    for word in text.replace("-", " ").split():
        if word in ONES:
            group += ONES.index(word)
        elif word in TENS:
            group += 10 * TENS.index(word)
        elif word == "hundred":
            group *= 100
        else:
            total = (total + group) * {"thousand": 1_000, "million": 1_000_000}[word]
            group = 0
    return total + group


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (no_hyphens, "split hyphenated words"),
        (scale_the_total, "multiply the whole group"),
        (lambda text: str(words_to_number(text)), "should return an int"),
        (lambda text: words_to_number(text) + 1, "expected"),
    ],
)
def test_9_1_rejects(wrong, hint, capsys):
    ok, out = _verdict("9.1", wrong, capsys)
    assert not ok and hint in out


# --- 9.2 the loss on the reply only ----------------------------------------------------------


def response_loss(logits, targets, is_response):
    masked = targets.masked_fill(~is_response, -100)
    return F.cross_entropy(logits.flatten(0, 1), masked.flatten(), ignore_index=-100)


def test_9_2_accepts_masked_mean(capsys):
    ok, out = _verdict("9.2", response_loss, capsys)
    assert ok and "correct" in out

    def by_hand(logits, targets, is_response):
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
        return -picked[is_response].mean()

    assert _verdict("9.2", by_hand, capsys)[0]


def _per_token(logits, targets):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda lg, t, m: F.cross_entropy(lg.flatten(0, 1), t.flatten()), "every position"),
        (lambda lg, t, m: _per_token(lg, t)[m.flatten()].sum(), "you summed"),
        (lambda lg, t, m: (_per_token(lg, t) * m.flatten()).sum() / m.numel(), "is_response.sum()"),
        (lambda lg, t, m: _per_token(lg, t)[~m.flatten()].mean(), "prompt positions"),
        (lambda lg, t, m: 1.0, "scalar torch.Tensor"),
    ],
)
def test_9_2_rejects(wrong, hint, capsys):
    ok, out = _verdict("9.2", wrong, capsys)
    assert not ok and hint in out


# --- 9.3 placeholders -------------------------------------------------------------------------

PATTERN = r"%\([^)]+\)[a-z]|%[sd%]|\{[A-Za-z0-9_]*\}"


def keeps_placeholders(source: str, output: str) -> bool:
    import re

    return Counter(re.findall(PATTERN, source)) == Counter(re.findall(PATTERN, output))


def test_9_3_accepts_counters_and_the_package(capsys):
    assert _verdict("9.3", keeps_placeholders, capsys)[0]
    assert _verdict("9.3", lambda s, o: placeholders(s) == placeholders(o), capsys)[0]


def _as_sets(source, output):
    return set(placeholders(source)) == set(placeholders(output))


def _in_order(source, output):
    import re

    return re.findall(PATTERN, source) == re.findall(PATTERN, output)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_as_sets, "compare counts"),
        (_in_order, "their order may change"),
        (lambda s, o: True, "should give False"),
        (lambda s, o: "yes", "True or False"),
    ],
)
def test_9_3_rejects(wrong, hint, capsys):
    ok, out = _verdict("9.3", wrong, capsys)
    assert not ok and hint in out


# --- 9.4 character n-gram F-score ----------------------------------------------------------


def char_ngram_f(prediction, reference, n, beta=2.0):
    p_text, r_text = "".join(prediction.split()), "".join(reference.split())
    p = Counter(p_text[i : i + n] for i in range(len(p_text) - n + 1))
    r = Counter(r_text[i : i + n] for i in range(len(r_text) - n + 1))
    matched = sum((p & r).values())
    if matched == 0:
        return 0.0
    precision, recall = matched / sum(p.values()), matched / sum(r.values())
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def test_9_4_accepts_and_agrees_with_chrf_of_order_one(capsys):
    from gptlab.applications import chrf

    assert _verdict("9.4", char_ngram_f, capsys)[0]
    # chrF of order 1 on one pair is the unigram F-score
    assert char_ngram_f("Supprimé", "Supprimer", 1) * 100 == pytest.approx(
        chrf(["Supprimé"], ["Supprimer"], order=1)
    )
    assert char_ngram_f_score("aaaa", "aa", 1) == pytest.approx(5 * 0.5 / (4 * 0.5 + 1))


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda p, r, n, beta=2.0: char_ngram_f(p, r, n, beta=1.0), "use beta = 2"),
        (lambda p, r, n, beta=2.0: 100 * char_ngram_f(p, r, n), "not a percentage"),
        (
            lambda p, r, n, beta=2.0: char_ngram_f_score(p, r, n, strip_whitespace=False),
            "remove the whitespace",
        ),
        (lambda p, r, n, beta=2.0: char_ngram_f_score(p, r, n, clip=False), "clip the matches"),
        (lambda p, r, n, beta=2.0: "0.5", "should return a float"),
    ],
)
def test_9_4_rejects(wrong, hint, capsys):
    ok, out = _verdict("9.4", wrong, capsys)
    assert not ok and hint in out


# --- 9.5 cutting a sample after its function ----------------------------------------------


def cut(text):
    lines = text.split("\n")
    for i in range(1, len(lines)):
        line = lines[i]
        if line and not line[0].isspace() and not line.startswith("#"):
            return "\n".join(lines[:i]).rstrip() + "\n"
    return None


def test_9_5_accepts_the_line_rule(capsys):
    assert _verdict("9.5", cut, capsys)[0]
    assert _verdict("9.5", cut_at_top_level, capsys)[0]


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda t: cut(t) or t, "return None"),
        (lambda t: None if cut(t) is None else cut(t) + "\n\n", "trailing blank lines"),
        (
            lambda t: cut(t.replace("\n#", "\nX")) if "\n#" in t else cut(t),
            "a comment at column 0",
        ),
        (lambda t: t.split("\n")[0] + "\n", "expected"),
    ],
)
def test_9_5_rejects(wrong, hint, capsys):
    ok, out = _verdict("9.5", wrong, capsys)
    assert not ok and hint in out
