"""Contamination checks: normalisation, n-grams, overlap reports, and the chapter 9 chat split."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from gptlab.chat import exchange_texts, split_conversations
from gptlab.data import load_corpus, split_documents
from gptlab.evaluate.contamination import (
    ContaminationError,
    ContaminationReport,
    check_split,
    find_overlap,
    ngrams,
    normalize,
    words,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]

TRAIN = ["the quick brown fox jumps over the lazy dog", "Hello there!", "Hello there"]
HELDOUT = [
    "The QUICK, brown fox -- jumps over the lazy dog.",  # 0: duplicate of train 0
    "a quick brown fox jumps over the lazy dog today",  # 1: 1 of its 3 8-grams in train 0
    "hello  there",  # 2: short, duplicate of train 1 (the first of two equal items)
    "hello",  # 3: short, equal to nothing (a part of a training item does not count)
    "?!...",  # 4: no words at all
    "completely different words that never appear in the training texts",  # 5: clean
]


# --- normalisation and n-grams -----------------------------------------------------------------


def test_words_lowercase_split_on_punctuation_symbols_and_underscores():
    assert words("What's AI?  snake_case, a+b=3") == [
        "what", "s", "ai", "snake", "case", "a", "b", "3",
    ]  # fmt: skip
    assert words("ＡＢＣ １２") == ["abc", "12"]  # NFKC folds full-width letters and digits
    assert words("Café déjà-vu") == ["café", "déjà", "vu"]  # accents are letters
    assert words("") == [] and words(" ... ") == []


def test_cjk_characters_are_one_word_each():
    assert words("你好吗？") == ["你", "好", "吗"]
    assert words("我用Python写代码") == ["我", "用", "python", "写", "代", "码"]
    assert normalize("你好，世界!") == "你 好 世 界"


def test_ngrams_by_hand():
    assert ngrams("To be, or not to be", 5) == [
        ("to", "be", "or", "not", "to"),
        ("be", "or", "not", "to", "be"),
    ]
    assert ngrams("a b c", 1) == [("a",), ("b",), ("c",)]
    assert ngrams("too short", 3) == []


def test_bad_n_and_bad_texts():
    with pytest.raises(ValueError, match="n must be >= 1"):
        ngrams("a b", 0)
    with pytest.raises(TypeError, match="n must be an int"):
        ngrams("a b", 2.0)
    with pytest.raises(TypeError, match="text must be a str"):
        words(3)
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        find_overlap("one text", ["x"])
    with pytest.raises(TypeError, match=r"heldout_texts\[1\] must be a str"):
        find_overlap(["x"], ["y", None])


# --- find_overlap ------------------------------------------------------------------------------


def test_find_overlap_hand_computed():
    report = find_overlap(TRAIN, HELDOUT, n=8)
    assert (report.n, report.n_train, report.n_heldout) == (8, 3, 6)
    assert report.exact == {0: 0, 2: 1}
    assert report.overlap == pytest.approx({0: 1.0, 1: 1 / 3, 2: 1.0})
    assert not report.clean
    assert report.contaminated() == [0, 1, 2]
    assert report.contaminated(0.5) == [0, 2]  # duplicates leak whatever the threshold
    text = str(report)
    assert "6 held-out items vs 3 training items (8-grams)" in text
    assert "2 exact duplicates (33.3%), 3 overlap (50.0%)" in text


def test_a_shorter_n_finds_more_shared_ngrams():
    # "hello" stays too short for 2-grams, so it is still compared whole; item 5 shares nothing
    report = find_overlap(TRAIN, HELDOUT, n=2)
    assert report.contaminated() == [0, 1, 2]
    assert report.overlap[1] == pytest.approx(7 / 9)  # all but ("a", "quick"), ("dog", "today")


def test_clean_split_and_repeated_ngrams_count_once():
    report = find_overlap(["a b c d"], ["x y z w", "a b c a b c q"], n=3)
    # distinct 3-grams of item 1: abc, bca, cab, bcq -> one of four is in training
    assert report.exact == {} and report.overlap == {1: 0.25}
    assert find_overlap(["a b c d"], ["x y z w"], n=3).clean


def test_find_overlap_scales_to_many_items():
    train = [f"item {i} says the same long sentence about number {i}" for i in range(20_000)]
    heldout = [f"item {i} says the same long sentence about number {i}" for i in (7, 19_999)]
    heldout.append("item 20000 is new and shares no eight words in a row")
    report = find_overlap(train, heldout)
    assert report.exact == {0: 7, 1: 19_999}
    assert 2 not in report.overlap


# --- check_split -------------------------------------------------------------------------------


def test_check_split_raises_with_counts_examples_and_a_fix():
    with pytest.raises(ContaminationError) as info:
        check_split(TRAIN, HELDOUT)
    message = str(info.value)
    assert "3 of 6 held-out items leak into training" in message
    assert "2 exact duplicates, 1 more share at least one 8-gram" in message
    assert "held-out 0 'the quick brown fox" in message and "= training 0" in message
    assert "(33% of its 8-grams in training)" in message
    assert "split_conversations" in message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value.report, ContaminationReport)
    assert info.value.report.contaminated() == [0, 1, 2]


def test_check_split_threshold_and_clean_return():
    with pytest.raises(ContaminationError, match="2 of 6 .* over 50% of their 8-grams"):
        check_split(TRAIN, HELDOUT, max_fraction=0.5)
    report = check_split(TRAIN, [HELDOUT[1], HELDOUT[5]], max_fraction=0.5)
    assert report.overlap == pytest.approx({0: 1 / 3})  # allowed: below the threshold
    assert check_split(TRAIN, HELDOUT[3:]).clean
    with pytest.raises(ValueError, match=r"max_fraction must be in \[0, 1\)"):
        check_split(TRAIN, HELDOUT, max_fraction=1.0)
    with pytest.raises(TypeError, match="max_fraction must be a number"):
        check_split(TRAIN, HELDOUT, max_fraction=True)


# --- the chapter 9 chat split ------------------------------------------------------------------


def _exchanges(documents) -> list[str]:
    return [text for doc in documents for text in exchange_texts(doc.turns)]


@pytest.fixture(scope="module")
def chatterbot():
    return load_corpus("chatterbot").documents  # fetched from PyPI once, then cached


def test_raw_chatterbot_split_of_chapter_9_leaks(chatterbot):
    """The split chapter 9 and recipes/assistant.py used: most held-out exchanges are in training."""
    train, test = split_documents(chatterbot, 0.1, seed=0)
    with pytest.raises(ContaminationError) as info:
        check_split(_exchanges(train), _exchanges(test))
    report = info.value.report
    assert len(report.exact) >= 100  # 119 of 211 held-out exchanges are duplicates
    conversations = find_overlap(
        ["\n".join(d.turns) for d in train], ["\n".join(d.turns) for d in test]
    )
    assert len(conversations.exact) / len(test) > 0.5


def test_recipe_uses_a_split_that_does_not_leak(chatterbot):
    """Fails on the old recipe, which split the raw corpus (and had no chat_split)."""
    spec = importlib.util.spec_from_file_location("assistant", ROOT / "recipes" / "assistant.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    train, test = recipe.chat_split()
    assert [d.title for d in test] == [
        d.title for d in split_conversations(chatterbot, 0.1, seed=0)[1]
    ]
    report = check_split(_exchanges(train), _exchanges(test))
    assert report.clean and report.n_heldout >= 80
    distinct = {tuple(map(normalize, d.turns)) for d in chatterbot}
    assert len(train) + len(test) == len(distinct) == 896


def test_shipped_assistant_run_was_measured_on_the_leak_free_split():
    """Fails until recipes/assistant.py is re-run: the shipped numbers used the leaking split."""
    from gptlab.applications import load_result

    run = load_result("assistant_run")
    _, test = split_conversations(load_corpus("chatterbot").documents, 0.1, seed=0)
    assert run.get("chat_split", "").startswith("chat.split_conversations(")
    assert run["examples"]["chat_test"] == len(test)
