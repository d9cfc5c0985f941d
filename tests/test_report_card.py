"""The stored report cards (recipes/report_card.py) are what the package computes.

The recipe stores, besides the ``card`` suite of every model, the ``smoke`` suite (the first
three code problems, the first eight questions, eight cloze items, the first 1,500 characters
of each held-out play). These tests re-evaluate that slice and compare it with the stored
report: pass counts and accuracies within one item (a near-tie between two options may flip
on another CPU's float32 kernels), bits per byte within 1e-3.

A chat model's card also holds ``code_pass@1_chat``: the code problems asked in its chat
template (``gptlab.applications.evaluate_chat_code``), the outcome of every problem included.
Chapter 9's ``recipes/smollm2_code.py`` runs the same greedy protocol on the same weights, so
the two stored results must agree problem by problem.
"""

from __future__ import annotations

import json

import pytest

from gptlab.evaluate import bootstrap_ci, evaluate_suite, load_code_benchmark, truncate_completion
from gptlab.evaluate.benchmarks import EVALUATION_DIR
from gptlab.evaluate.code_eval import sample_completions
from gptlab.evaluate.judge import JudgeVerdict, PairJudgement, position_bias

CARDS = EVALUATION_DIR / "report_cards"
MODELS = ("reference", "code_model", "chat_model", "smollm2-135m-instruct")
TASKS = ("code_pass@1", "mc_accuracy", "cloze_accuracy", "bits_per_byte")
CHAT_TASK = "code_pass@1_chat"
CHAT_MODELS = ("smollm2-135m-instruct",)
COLUMNS = ("code_pass@1", CHAT_TASK, "mc_accuracy", "cloze_accuracy", "bits_per_byte")


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _compare(fresh: dict, stored: dict) -> None:
    for task in TASKS:
        new, old = fresh["scores"][task], stored["scores"][task]
        assert new["n"] == old["n"], task
        tolerance = 1e-3 if task == "bits_per_byte" else 1.0 / old["n"] + 1e-12
        assert abs(new["value"] - old["value"]) <= tolerance, (task, new["value"], old["value"])


def _cell(score: dict | None) -> str:
    return (
        "—" if score is None else f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"
    )


def test_every_model_has_a_card_and_a_row():
    table = (CARDS / "table.md").read_text(encoding="utf-8")
    summary = _load(CARDS / "summary.json")
    assert set(summary["models"]) == set(MODELS)
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]
    assert header == "| model | " + " | ".join(COLUMNS) + " |"
    assert len(rows) == len(MODELS)
    for name, row in zip(MODELS, rows, strict=True):
        card = _load(CARDS / f"{name}.json")
        assert card["suite"] == "card"
        tasks = (*TASKS, CHAT_TASK) if name in CHAT_MODELS else TASKS
        assert set(card["scores"]) == set(tasks) and set(summary["models"][name]) == set(tasks)
        for task in tasks:
            s = card["scores"][task]
            assert s["low"] <= s["value"] <= s["high"]
            assert summary["models"][name][task]["value"] == s["value"]
            assert summary["models"][name][task]["low"] == s["low"]
            assert summary["models"][name][task]["high"] == s["high"]
        cells = [c.strip() for c in row.strip("|").split("|")][1:]  # after the model's name
        assert cells == [_cell(card["scores"].get(t)) for t in COLUMNS], name
        markdown = (CARDS / f"{name}.md").read_text(encoding="utf-8")
        assert all(f"| {task} |" in markdown for task in tasks)
        assert (CARDS / "smoke" / f"{name}.json").is_file()
    assert summary["seconds"]["total"] < 900  # the recipe stays a recipe of minutes


def test_chat_code_outcomes_agree_with_chapter_9():
    """Both greedy, same weights, same prompt: the report card's chat-protocol code score and
    chapter 9's stored result agree problem by problem, and the interval is the card's bootstrap
    of those outcomes."""
    card = _load(CARDS / "smollm2-135m-instruct.json")
    chat = card["scores"][CHAT_TASK]
    chapter_9 = _load(EVALUATION_DIR.parent / "applications" / "smollm2_code.json")
    assert chat["protocol"].endswith(f"max_new_tokens={chapter_9['max_new_tokens']}")
    ids = [p.id for p in load_code_benchmark()]
    assert list(chat["per_problem"]) == ids == [p["id"] for p in chapter_9["problems"]]
    assert chat["per_problem"] == {p["id"]: p["reason"] for p in chapter_9["problems"]}
    assert chat["outcomes"] == chapter_9["reasons"]
    passed = [float(chat["per_problem"][i] == "passed") for i in ids]
    assert chat["n"] == len(ids) and chat["value"] == sum(passed) / len(ids)
    assert chat["value"] == pytest.approx(chapter_9["pass_at_1"])
    settings = card["bootstrap"]
    interval = bootstrap_ci(
        passed,
        confidence=settings["confidence"],
        n_resamples=settings["n_resamples"],
        seed=settings["seed"],
    )
    assert (chat["low"], chat["high"]) == (interval.low, interval.high)
    assert card["scores"]["code_pass@1"]["value"] == 0.0  # the completion protocol: 0 of 63


def test_reference_model_slice_matches_the_stored_report():
    from gptlab import load_reference_model

    model, tokenizer = load_reference_model()
    fresh = evaluate_suite(model, tokenizer, "smoke", progress=False)
    _compare(fresh, _load(CARDS / "smoke" / "reference.json"))


def test_chat_model_slice_matches_the_stored_report():
    from gptlab.chat import load_chat_model

    model, tokenizer = load_chat_model()
    fresh = evaluate_suite(model, tokenizer, "smoke", progress=False)
    _compare(fresh, _load(CARDS / "smoke" / "chat_model.json"))


def test_smollm2_slice_matches_the_stored_report():
    from gptlab import load_pretrained

    model, tokenizer = load_pretrained("smollm2-135m-instruct")
    fresh = evaluate_suite(model, tokenizer, "smoke", progress=False)
    _compare(fresh, _load(CARDS / "smoke" / "smollm2-135m-instruct.json"))


def test_stopping_at_a_top_level_line_keeps_the_same_body():
    from gptlab import load_reference_model

    model, tokenizer = load_reference_model()
    for problem in load_code_benchmark()[:3]:
        full = sample_completions(model, tokenizer, problem.prompt, max_new_tokens=48)[0]
        early = sample_completions(
            model, tokenizer, problem.prompt, max_new_tokens=48, stop_at_top_level=True
        )[0]
        assert truncate_completion(early) == truncate_completion(full)
        assert len(early) <= len(full)
    with pytest.raises(ValueError, match="n=1"):
        sample_completions(model, tokenizer, "def f():\n", n=2, stop_at_top_level=True)


def _pair(first: str, second: str) -> PairJudgement:
    return PairJudgement(JudgeVerdict(first, 1.0), JudgeVerdict(second, 1.0))


def test_position_bias_by_hand():
    # a consistent pair (A then B: the same answer both times), two that keep slot A, one B
    summary = position_bias([_pair("A", "B"), _pair("A", "A"), _pair("A", "A"), _pair("B", "B")])
    assert summary == {
        "pairs": 4,
        "consistent": 0.25,
        "first_slot": 5 / 8,
        "always_first": 0.5,
        "always_second": 0.25,
    }
    assert _pair("A", "B").preferred == 1 and _pair("B", "A").preferred == 2
    assert _pair("A", "A").preferred is None
    with pytest.raises(ValueError, match="non-empty"):
        position_bias([])


def test_stored_judge_summary_matches_its_items():
    judge = _load(CARDS / "judge.json")
    items = judge["items"]
    pairs = [_pair(i["forward"][0], i["swapped"][0]) for i in items]
    summary = position_bias(pairs)
    for key, value in summary.items():
        assert judge[key] == pytest.approx(value)
    right = sum(i["forward"][0] == "A" for i in items) + sum(i["swapped"][0] == "B" for i in items)
    assert judge["agreement_with_key"] == pytest.approx(right / (2 * len(items)))
