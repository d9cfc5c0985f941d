"""The report card over the book's models: every shipped model on one suite, with intervals.

    OMP_NUM_THREADS=1 python recipes/report_card.py            # about 11 minutes on one thread
    OMP_NUM_THREADS=1 python recipes/report_card.py --models reference   # one model (seconds)

writes ``gptlab/assets/evaluation/report_cards/``:

* ``<model>.json`` / ``<model>.md``: the report card of each model on the ``"card"`` suite
  (code pass@1 in the sandbox, general-knowledge multiple choice, Shakespeare cloze, bits per
  byte on the held-out plays; each score with its 95% bootstrap interval), exactly what
  ``python -m gptlab eval --model NAME --suite card`` writes; a chat model's card adds
  ``code_pass@1_chat`` (see below);
* ``smoke/<model>.json``: the same models on the ``"smoke"`` suite (the first few items of every
  task), which ``tests/test_report_card.py`` re-evaluates and compares;
* ``judge.json``: SmolLM2 as a judge on the multiple-choice questions (the right answer against
  one wrong one, in both orders): its position bias and its agreement with the answer key;
* ``table.md`` and ``summary.json``: one table, rows models and columns tasks, and the wall
  time of every step.

The suite's ``code_pass@1`` asks every model the same way, the way a base model is used: continue
the function from its signature and docstring. A chat model answers that with a Markdown fence
and prose, and scores 0. So chat models (SmolLM2) get a second code column, ``code_pass@1_chat``:
the same 63 problems and hidden tests, asked in the model's chat template with a Python code
block opened in its reply (:func:`gptlab.applications.evaluate_chat_code`, greedy, at most 192
new tokens), with a 95% bootstrap interval of the same settings as the other scores and the
outcome of every problem (``per_problem``); base models get "—" in the table. Chapter 9's
``recipes/smollm2_code.py`` runs the same protocol on the same weights, so the outcomes must agree
problem by problem with ``gptlab/assets/applications/smollm2_code.json`` (checked by
``tests/test_report_card.py``).

The models: the reference Shakespeare GPT (``gptlab.load_reference_model()``), chapter 9's code
model (``gptlab.applications.load_code_model()``), chapter 8's chatbot
(``gptlab.chat.load_chat_model()``, shipped by ``recipes/chat_model.py``) and
SmolLM2-135M-Instruct (``gptlab.load_pretrained("smollm2-135m-instruct")``). ``--models`` runs a
subset; the table and summary then reuse the stored cards of the others.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time
from typing import Any

import torch

from gptlab.evaluate import (
    bootstrap_ci,
    evaluate_suite,
    load_code_benchmark,
    load_multiple_choice_set,
    score_dict,
    write_report,
)
from gptlab.evaluate.benchmarks import EVALUATION_DIR
from gptlab.evaluate.judge import judge_both_orders, position_bias

OUT_DIR = EVALUATION_DIR / "report_cards"
SUITE = "card"
MODELS = {
    "reference": "reference Shakespeare GPT (2.6M)",
    "code_model": "chapter 9 code model (1.1M)",
    "chat_model": "chapter 8 chatbot (2.6M)",
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct",
}
TASKS = ("code_pass@1", "mc_accuracy", "cloze_accuracy", "bits_per_byte")  # the suite's
CHAT_TASK = "code_pass@1_chat"  # chat models only: code asked in the chat template
COLUMNS = (TASKS[0], CHAT_TASK, *TASKS[1:])  # the table's columns
CHAT_MODELS = ("smollm2-135m-instruct",)
CHAT_MAX_NEW_TOKENS = 192  # as recipes/smollm2_code.py
NOT_APPLICABLE = "—"


def load_model(name: str) -> tuple[Any, Any]:
    """One of the book's shipped models by its report-card name."""
    if name == "reference":
        from gptlab import load_reference_model

        return load_reference_model()
    if name == "code_model":
        from gptlab.applications import load_code_model

        return load_code_model()
    if name == "chat_model":
        from gptlab.chat import load_chat_model

        return load_chat_model()
    if name == "smollm2-135m-instruct":
        from gptlab import load_pretrained

        return load_pretrained(name)
    raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")


def chat_code_score(model: Any, tokenizer: Any, bootstrap: dict[str, Any]) -> dict[str, Any]:
    """pass@1 of a chat model on all the code problems, asked in its chat template, with the
    95% bootstrap interval of the card's ``bootstrap`` settings and every problem's outcome."""
    from gptlab.applications import evaluate_chat_code

    problems = load_code_benchmark()
    code = evaluate_chat_code(model, tokenizer, problems, max_new_tokens=CHAT_MAX_NEW_TOKENS)
    interval = bootstrap_ci(
        code.per_problem_pass_at_k(1),
        confidence=bootstrap["confidence"],
        n_resamples=bootstrap["n_resamples"],
        seed=bootstrap["seed"],
    )
    return score_dict(
        interval,
        description=(
            "share of the book's code problems whose greedy function passes the tests, asked "
            "in the chat template (applications.evaluate_chat_code)"
        ),
        protocol=f"applications.chat_code_prompt, greedy, max_new_tokens={CHAT_MAX_NEW_TOKENS}",
        outcomes=code.reasons(),
        per_problem={pid: s.result.reason for pid, (s,) in code.samples.items()},
    )


def judge_pairs(limit: int | None = None) -> list[tuple[str, str, str]]:
    """(question, right answer, wrong answer) from the multiple-choice set; the wrong one is
    the option after the right one, so the pairs are fixed."""
    pairs = []
    for item in load_multiple_choice_set()[:limit]:
        question = item.context.removeprefix("Question: ").removesuffix("\nAnswer:").strip()
        wrong = item.options[(item.answer + 1) % len(item.options)]
        pairs.append((question, item.options[item.answer].strip(), wrong.strip()))
    return pairs


def run_judge(model: Any, tokenizer: Any, limit: int | None = None) -> dict[str, Any]:
    """Judge every pair in both orders; summarise position bias and agreement with the key."""
    pairs = judge_pairs(limit)
    judgements = [judge_both_orders(model, tokenizer, *pair) for pair in pairs]
    verdicts = [v for j in judgements for v in (j.forward, j.swapped)]
    # forward shows (right, wrong) as (A, B), swapped shows (wrong, right): the right answer is
    # in slot A in the forward order and in slot B in the swapped order
    right = [j.forward.choice == "A" for j in judgements] + [
        j.swapped.choice == "B" for j in judgements
    ]
    consistent = [j for j in judgements if j.consistent]
    return {
        "judge": "smollm2-135m-instruct",
        "task": "right answer vs the next (wrong) option of each multiple-choice question",
        **position_bias(judgements),
        "agreement_with_key": sum(right) / len(verdicts),
        "agreement_when_consistent": (
            sum(j.preferred == 1 for j in consistent) / len(consistent) if consistent else None
        ),
        "items": [
            {
                "question": q,
                "right": r,
                "wrong": w,
                "forward": [j.forward.choice, round(j.forward.margin, 4)],
                "swapped": [j.swapped.choice, round(j.swapped.margin, 4)],
            }
            for (q, r, w), j in zip(pairs, judgements, strict=True)
        ],
    }


def cell(score: dict[str, Any] | None) -> str:
    if score is None:
        return NOT_APPLICABLE
    return f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]"


def table(cards: dict[str, dict[str, Any]]) -> str:
    """Rows: models; columns: tasks; each cell the score and its 95% bootstrap interval
    ("—" where a column does not apply to a model)."""
    lines = [
        "| model | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, card in cards.items():
        cells = [cell(card["scores"].get(task)) for task in COLUMNS]
        lines.append(f"| {MODELS.get(name, name)} | " + " | ".join(cells) + " |")
    n = next(iter(cards.values()))["scores"]
    counts = ", ".join(f"{t} n={n[t]['n']}" for t in TASKS)
    lines += [
        "",
        f"Suite `{SUITE}`; 95% percentile bootstrap intervals over items ({counts}; "
        "bits per byte over text chunks, lower is better). `code_pass@1` asks every model to "
        "continue the function (the completion protocol); `code_pass@1_chat` asks SmolLM2 "
        f"in its ChatML template, the same {n[TASKS[0]]['n']} problems and tests "
        f"({NOT_APPLICABLE}: not asked; chapter 8's chatbot was tuned on small talk, not code).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--out", default=str(OUT_DIR), help="output folder")
    parser.add_argument("--judge-items", type=int, default=None, help="limit the judge's pairs")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    names = [n for n in args.models.split(",") if n]
    start = time.perf_counter()
    cards: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    for name in names:
        t0 = time.perf_counter()
        model, tokenizer = load_model(name)
        cards[name] = evaluate_suite(model, tokenizer, SUITE, progress=False)
        if name in CHAT_MODELS:
            t1 = time.perf_counter()
            chat = chat_code_score(model, tokenizer, cards[name]["bootstrap"])
            cards[name]["scores"][CHAT_TASK] = chat
            seconds[f"{name} {CHAT_TASK}"] = round(time.perf_counter() - t1, 1)
        write_report(cards[name], out / name, overwrite=True)
        smoke = evaluate_suite(model, tokenizer, "smoke", progress=False)
        write_report(smoke, out / "smoke" / name, overwrite=True)
        if name == "smollm2-135m-instruct":
            t1 = time.perf_counter()
            judge = run_judge(model, tokenizer, args.judge_items)
            (out / "judge.json").write_text(json.dumps(judge, indent=2) + "\n", encoding="utf-8")
            seconds["judge"] = round(time.perf_counter() - t1, 1)
        seconds[name] = round(time.perf_counter() - t0, 1)
        scores = cards[name]["scores"]
        print(f"{name}: {seconds[name]} s", {t: cell(scores.get(t)) for t in COLUMNS})
    # A subset (--models chat_model) re-evaluates only those; the table keeps the others'
    # stored cards and times, so adding a model does not re-run SmolLM2's eleven minutes.
    previous = (
        json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    )
    for name in MODELS:
        if name not in cards and (out / f"{name}.json").is_file():
            cards[name] = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
            for key, value in previous.get("seconds", {}).items():
                if (
                    key == name
                    or key.startswith(f"{name} ")
                    or (key == "judge" and name == "smollm2-135m-instruct")
                ):
                    seconds.setdefault(key, value)
    cards = {name: cards[name] for name in MODELS if name in cards}
    if set(cards) == set(MODELS):
        (out / "table.md").write_text(table(cards), encoding="utf-8")
        summary = {
            "suite": SUITE,
            "command": "OMP_NUM_THREADS=1 python recipes/report_card.py",
            "seconds": {**seconds, "total": round(sum(seconds[m] for m in MODELS), 1)},
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            # per-problem outcomes stay in the model's own card
            "models": {
                name: {
                    t: {k: v for k, v in card["scores"][t].items() if k != "per_problem"}
                    for t in COLUMNS
                    if t in card["scores"]
                }
                for name, card in cards.items()
            },
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(table(cards))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
