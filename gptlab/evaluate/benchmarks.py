"""The book's evaluation sets: a code benchmark, general-knowledge questions, Shakespeare cloze.

The first two ship as JSONL files in ``gptlab/assets/evaluation/`` (written for GPT Lab; each
folder's README says where they come from and under which licence) and are validated when
loaded, so a hand edit that breaks an item fails loudly. The cloze set is built at run time
from the plays the reference model never trained on.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gptlab.evaluate._checks import check_int
from gptlab.evaluate.multiple_choice import MultipleChoiceItem

__all__ = [
    "CODE_BENCHMARK_FILE",
    "EVALUATION_DIR",
    "MULTIPLE_CHOICE_FILE",
    "BenchmarkFileError",
    "CodeProblem",
    "held_out_plays",
    "load_code_benchmark",
    "load_multiple_choice_set",
    "question_context",
    "shakespeare_cloze",
]

EVALUATION_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "evaluation"
CODE_BENCHMARK_FILE = EVALUATION_DIR / "code" / "problems.jsonl"
MULTIPLE_CHOICE_FILE = EVALUATION_DIR / "multiple_choice" / "general.jsonl"


class BenchmarkFileError(ValueError):
    """An evaluation file is missing, is not JSONL, or holds an item that breaks the format."""


@dataclass(frozen=True)
class CodeProblem:
    """A function to write: ``prompt`` (signature + docstring) is what the model sees and
    continues; ``tests`` are hidden ``assert`` lines; ``solution`` is a reference body."""

    id: str
    entry_point: str
    difficulty: int  # 1 trivial .. 5 moderately hard
    prompt: str
    solution: str
    tests: str

    def program(self, completion: str) -> str:
        """The program to run: the prompt followed by a completion (the function's body)."""
        if not isinstance(completion, str):
            raise TypeError(f"completion must be a str, got {type(completion).__name__}")
        return self.prompt + completion


def _read_jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise BenchmarkFileError(
            f"{path} does not exist; reinstall gptlab or, in a clone, restore it with "
            f"'git checkout -- {path.name}'"
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkFileError(f"{path.name} line {number} is not JSON: {err}") from None
        if not isinstance(record, dict):
            raise BenchmarkFileError(f"{path.name} line {number} must be a JSON object")
        records.append((number, record))
    if not records:
        raise BenchmarkFileError(f"{path} holds no items")
    return records


def _field(record: dict[str, Any], name: str, kind: type, where: str) -> Any:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, kind) or (kind is str and not value):
        raise BenchmarkFileError(f"{where}: field {name!r} must be a non-empty {kind.__name__}")
    return value


def _check_unique(ids: list[str], path: pathlib.Path) -> None:
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise BenchmarkFileError(
                f"{path.name}: id {item_id!r} appears twice; ids must be unique"
            )
        seen.add(item_id)


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def load_code_benchmark(path: str | os.PathLike[str] | None = None) -> list[CodeProblem]:
    """The book's code benchmark (or another file in its format), validated item by item."""
    path = pathlib.Path(CODE_BENCHMARK_FILE if path is None else path)
    problems = []
    for number, record in _read_jsonl(path):
        where = f"{path.name} line {number}"
        item_id = _field(record, "id", str, where)
        where = f"{where} ({item_id})"
        entry = _field(record, "entry_point", str, where)
        difficulty = _field(record, "difficulty", int, where)
        prompt, solution, tests = (
            _field(record, k, str, where) for k in ("prompt", "solution", "tests")
        )
        if not 1 <= difficulty <= 5:
            raise BenchmarkFileError(f"{where}: difficulty must be 1..5, got {difficulty}")
        if not entry.isidentifier() or f"def {entry}(" not in prompt:
            raise BenchmarkFileError(f"{where}: the prompt must define {entry}(...)")
        if not prompt.endswith("\n"):
            raise BenchmarkFileError(f"{where}: the prompt must end with a newline")
        if not _parses(prompt + solution):
            raise BenchmarkFileError(f"{where}: prompt + solution is not valid Python")
        if not _parses(tests) or "assert" not in tests or entry not in tests:
            raise BenchmarkFileError(
                f"{where}: tests must be valid Python asserts that call {entry}"
            )
        problems.append(CodeProblem(item_id, entry, difficulty, prompt, solution, tests))
    _check_unique([p.id for p in problems], path)
    return problems


def question_context(question: str) -> str:
    """How a question is shown to a base model: ``"Question: ...\\nAnswer:"``; options follow
    with a leading space, as the next words of the text."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty str")
    return f"Question: {question.strip()}\nAnswer:"


def load_multiple_choice_set(
    path: str | os.PathLike[str] | None = None,
) -> list[MultipleChoiceItem]:
    """The book's 4-option general-knowledge set as :class:`MultipleChoiceItem` s, validated."""
    path = pathlib.Path(MULTIPLE_CHOICE_FILE if path is None else path)
    items = []
    for number, record in _read_jsonl(path):
        where = f"{path.name} line {number}"
        item_id = _field(record, "id", str, where)
        where = f"{where} ({item_id})"
        question = _field(record, "question", str, where)
        options = _field(record, "options", list, where)
        answer = _field(record, "answer", int, where)
        if len(options) != 4 or not all(isinstance(o, str) and o.strip() for o in options):
            raise BenchmarkFileError(f"{where}: needs exactly 4 non-empty string options")
        if len({o.strip().lower() for o in options}) != 4:
            raise BenchmarkFileError(f"{where}: two options are the same")
        if not 0 <= answer < 4:
            raise BenchmarkFileError(f"{where}: answer must be an option index 0..3, got {answer}")
        context = question_context(question)
        items.append(MultipleChoiceItem(context, tuple(" " + o for o in options), answer, item_id))
    _check_unique([item.id for item in items], path)
    return items


# ----------------------------------------------------------------------------- Shakespeare cloze


def held_out_plays(documents: Sequence[Any] | None = None, val_fraction: float = 0.1) -> list[Any]:
    """The plays that lie wholly inside the last ``val_fraction`` of the corpus text.

    The reference model trained on the head of ``load_corpus("shakespeare").text`` and validated
    on its last 10%, so these plays (Timon of Athens, Titus Andronicus, Troilus and Cressida)
    are text it has never seen; the play cut by the boundary is left out on both sides.
    """
    if documents is None:
        from gptlab.data import load_corpus

        documents = load_corpus("shakespeare").documents
    if isinstance(val_fraction, bool) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction!r}")
    total = sum(len(d.text) for d in documents) + max(len(documents) - 1, 0)  # joined with "\n"
    cut = total - round(total * val_fraction)
    held, start = [], 0
    for doc in documents:
        if start >= cut:
            held.append(doc)
        start += len(doc.text) + 1
    if not held:
        raise ValueError(
            f"no document lies wholly in the last {val_fraction:.0%} of the text; raise val_fraction"
        )
    return held


def _is_verse(line: str) -> bool:
    """A line of speech long enough to test: not blank, short, or a speaker's name."""
    stripped = line.strip()
    return len(stripped) >= 20 and not stripped.endswith(":") and not stripped.startswith("[")


def shakespeare_cloze(
    n: int = 200,
    seed: int = 0,
    *,
    plays: Sequence[Any] | None = None,
    context_lines: int = 4,
) -> list[MultipleChoiceItem]:
    """``n`` four-option items "which line comes next?" from held-out plays.

    Each item shows ``context_lines`` lines of a play; the options are the true next line and
    three other lines of the same play of similar length, so the item is split by play and
    length gives little away. The answer's position is balanced over the four slots. ``plays``
    defaults to :func:`held_out_plays`; pass other documents to build a set from them.
    """
    check_int(n, "n")
    check_int(seed, "seed", 0)
    check_int(context_lines, "context_lines")
    plays = held_out_plays() if plays is None else list(plays)
    if not plays:
        raise ValueError("plays is empty; pass at least one document with .title and .text")
    rng = random.Random(seed)
    pools = []  # (play, its lines, shuffled target line numbers, distinct verse lines)
    for play in plays:
        lines = play.text.split("\n")
        verse = [i for i in range(context_lines, len(lines)) if _is_verse(lines[i])]
        distinct = sorted({lines[i].strip() for i in verse})
        if len(distinct) >= 4:
            rng.shuffle(verse)
            pools.append((play, lines, verse, distinct))
    capacity = sum(len(pool[2]) for pool in pools)
    if capacity < n:
        raise ValueError(f"these plays give at most {capacity} cloze items, fewer than n={n}")
    answers = [i % 4 for i in range(n)]
    rng.shuffle(answers)
    items: list[MultipleChoiceItem] = []
    taken = [0] * len(pools)
    turn = 0
    while len(items) < n:
        p = turn % len(pools)  # take the plays in turn, so each gives about n / len(plays)
        turn += 1
        play, lines, verse, distinct = pools[p]
        if taken[p] == len(verse):
            continue
        target = verse[taken[p]]
        taken[p] += 1
        right = lines[target].strip()
        others = [o for o in distinct if o != right]
        close = [o for o in others if abs(len(o) - len(right)) <= max(8, len(right) // 4)]
        wrong = rng.sample(close if len(close) >= 3 else others, 3)
        answer = answers[len(items)]
        options = [w + "\n" for w in wrong]
        options.insert(answer, right + "\n")
        context = "\n".join(lines[target - context_lines : target]) + "\n"
        items.append(MultipleChoiceItem(context, tuple(options), answer, f"{play.title}:{target}"))
    return items
