"""gptlab.evaluate.benchmarks: the shipped sets are well-formed and their tests test something."""

from __future__ import annotations

import collections
import json
import os

import pytest

from gptlab.data import Document
from gptlab.evaluate import benchmarks as b
from gptlab.evaluate.sandbox import run_tests


def _harness(problems, body):
    """One sandboxed program that runs each problem in a fresh namespace and lists the ids
    whose tests passed; 63 separate processes would take far longer."""
    jobs = [(p.id, p.program(p.solution if body is None else body), p.tests) for p in problems]
    return (
        f"JOBS = {json.dumps(jobs)}\n"
        "PASSED = []\n"
        "for job_id, program, tests in JOBS:\n"
        "    space = {}\n"
        "    try:\n"
        "        exec(program, space)\n"
        "        exec(tests, space)\n"
        "    except Exception:\n"
        "        continue\n"
        "    PASSED.append(job_id)\n"
    )


def test_code_benchmark_is_large_graded_and_unique():
    problems = b.load_code_benchmark()
    assert len(problems) >= 50
    assert len({p.id for p in problems}) == len(problems)
    assert len({p.entry_point for p in problems}) == len(problems)
    assert set(collections.Counter(p.difficulty for p in problems)) == {1, 2, 3, 4, 5}
    for p in problems:
        assert p.prompt.startswith(f"def {p.entry_point}(") and '"""' in p.prompt


@pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX limits")
def test_every_reference_solution_passes_in_the_sandbox():
    problems = b.load_code_benchmark()
    ids = [p.id for p in problems]
    result = run_tests(_harness(problems, None), f"assert PASSED == {ids!r}, PASSED", timeout=30)
    assert result.passed, result.detail


@pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX limits")
def test_return_none_fails_every_problem():
    problems = b.load_code_benchmark()
    result = run_tests(
        _harness(problems, "    return None\n"), "assert PASSED == [], PASSED", timeout=30
    )
    assert result.passed, result.detail


@pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX limits")
def test_the_hardest_reference_solutions_pass_one_process_each():
    for p in [p for p in b.load_code_benchmark() if p.difficulty == 5][:2]:
        assert run_tests(p.program(p.solution), p.tests).passed


def test_loader_refuses_a_broken_item(tmp_path):
    good = json.loads(b.CODE_BENCHMARK_FILE.read_text().splitlines()[0])
    for change in [
        {"difficulty": 6},
        {"solution": "    return (\n"},
        {"tests": "print('no asserts')"},
        {"prompt": "def other(x):\n    pass\n"},
    ]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({**good, **change}) + "\n")
        with pytest.raises(b.BenchmarkFileError):
            b.load_code_benchmark(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(b.BenchmarkFileError, match="twice"):
        b.load_code_benchmark(path)
    with pytest.raises(b.BenchmarkFileError, match="does not exist"):
        b.load_code_benchmark(tmp_path / "missing.jsonl")


def test_multiple_choice_set_is_balanced_and_well_formed():
    items = b.load_multiple_choice_set()
    assert len(items) >= 60
    counts = collections.Counter(item.answer for item in items)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) - min(counts.values()) <= 1
    for item in items:
        assert len(item.options) == 4 and item.context.startswith("Question: ")
        assert item.context.endswith("\nAnswer:") and all(o.startswith(" ") for o in item.options)


def test_multiple_choice_loader_refuses_a_broken_item(tmp_path):
    good = json.loads(b.MULTIPLE_CHOICE_FILE.read_text().splitlines()[0])
    for change in [{"answer": 4}, {"options": ["a", "b", "c"]}, {"options": ["a", "A", "b", "c"]}]:
        path = tmp_path / "bad.jsonl"
        path.write_text(json.dumps({**good, **change}) + "\n")
        with pytest.raises(b.BenchmarkFileError):
            b.load_multiple_choice_set(path)


def _play(title, n_lines):
    lines = []
    for i in range(n_lines):
        lines += [f"SPEAKER{i % 3}:", f"{title} line number {i} says something long enough."]
    return Document(title, "tragedy", "\n".join(lines) + "\n")


def test_held_out_plays_are_those_wholly_in_the_tail():
    docs = [_play("A", 50), _play("B", 50), _play("C", 5)]
    total = sum(len(d.text) for d in docs) + 2
    fraction = (len(docs[2].text) + 10) / total  # the cut falls inside B, just before C
    assert [d.title for d in b.held_out_plays(docs, fraction)] == ["C"]


def test_cloze_items_come_from_one_play_each_and_balance_the_answer():
    plays = [_play("Alpha", 40), _play("Beta", 40)]
    items = b.shakespeare_cloze(40, seed=1, plays=plays)
    assert items == b.shakespeare_cloze(40, seed=1, plays=plays)  # seeded
    assert collections.Counter(i.answer for i in items) == {0: 10, 1: 10, 2: 10, 3: 10}
    for item in items:
        title = item.id.split(":")[0]
        assert all(title in option for option in item.options)  # split by play
        line = int(item.id.split(":")[1])
        play = next(p for p in plays if p.title == title)
        assert item.options[item.answer] == play.text.split("\n")[line] + "\n"
        assert item.context.endswith("\n") and len(item.context.split("\n")) == 5
    with pytest.raises(ValueError, match="at most"):
        b.shakespeare_cloze(1000, plays=plays)


def test_cloze_from_the_real_corpus_uses_only_held_out_plays():
    items = b.shakespeare_cloze(12, seed=0)
    titles = {item.id.split(":")[0] for item in items}
    assert titles == {"Timon of Athens", "Titus Andronicus", "Troilus and Cressida"}
