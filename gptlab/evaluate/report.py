"""Report cards: one call runs a suite of evaluations and returns every score with its interval.

A score without its uncertainty invites over-reading (is 0.31 better than 0.28 on 68
questions? No). :func:`evaluate_suite` therefore reports each score with a seeded bootstrap
interval and the number of items it rests on, and :func:`write_report` saves the card as JSON
(for programs) and Markdown (for people), atomically and without overwriting by accident.

Suites: ``"smoke"`` is a tiny version of everything for tests; ``"book"`` is what the chapter
reports: code pass@1 on the book's benchmark, accuracy on its general-knowledge questions and on
Shakespeare next-line cloze, and bits per byte on the held-out plays. ``"card"`` is ``"book"``
with bits per byte on the first 20,000 characters of each play, so that the report card over
all the book's models (``recipes/report_card.py``) runs in minutes on one CPU thread.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.evaluate._checks import check_model, check_tokenizer
from gptlab.evaluate.benchmarks import (
    held_out_plays,
    load_code_benchmark,
    load_multiple_choice_set,
    shakespeare_cloze,
)
from gptlab.evaluate.code_eval import evaluate_code
from gptlab.evaluate.likelihood import LN2, text_likelihood
from gptlab.evaluate.multiple_choice import evaluate_multiple_choice
from gptlab.evaluate.uncertainty import Interval, bootstrap_ci

__all__ = [
    "SUITES",
    "SuiteSpec",
    "evaluate_suite",
    "report_markdown",
    "score_dict",
    "write_report",
]


@dataclass(frozen=True)
class SuiteSpec:
    """How much of each evaluation a suite runs (``None``: all of it)."""

    code_problems: int | None
    code_max_new_tokens: int
    mc_items: int | None
    cloze_items: int
    bpb_chars_per_play: int | None
    chunk_chars: int


SUITES: dict[str, SuiteSpec] = {
    "smoke": SuiteSpec(3, 12, 8, 8, 1500, 500),
    "book": SuiteSpec(None, 128, None, 200, None, 4000),
    # the report card over the book's models (recipes/report_card.py): everything, except that
    # bits per byte reads the first 20,000 characters of each held-out play (SmolLM2 needs
    # about 1.5 s per 1,000 characters on one CPU thread)
    "card": SuiteSpec(None, 128, None, 200, 20_000, 4000),
}


def _chunks(text: str, size: int) -> list[str]:
    """Cut ``text`` at blank lines into pieces of at least ``size`` characters (the last may be
    shorter): the units that bits per byte is bootstrapped over."""
    pieces, current = [], ""
    for paragraph in text.split("\n\n"):
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current.strip():
        pieces.append(current)
    return pieces


_SCORE_KEYS = ("value", "low", "high", "n", "confidence")


def score_dict(interval: Interval, **extra: Any) -> dict[str, Any]:
    """One report-card score as a JSON-ready dict: ``value`` (the estimate), its interval
    ``low``..``high``, the ``n`` items it rests on and the ``confidence``, then ``extra``
    (a description, per-item outcomes, ...) in the order given."""
    if not isinstance(interval, Interval):
        raise TypeError(
            f"interval must be the Interval that bootstrap_ci() returns, got {type(interval).__name__}"
        )
    clash = sorted(set(extra) & set(_SCORE_KEYS))
    if clash:
        raise ValueError(f"extra fields {clash} would overwrite the interval's; rename them")
    return {
        "value": interval.estimate,
        "low": interval.low,
        "high": interval.high,
        "n": interval.n,
        "confidence": interval.confidence,
        **extra,
    }


def evaluate_suite(
    model: torch.nn.Module,
    tokenizer: Any,
    suite_name: str = "book",
    *,
    seed: int = 0,
    n_resamples: int = 2000,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the suite ``suite_name`` and return its report card as a JSON-ready dict.

    ``scores`` maps each evaluation to ``value``, its 95% bootstrap interval ``low``..``high``
    and the ``n`` items (problems, questions, text chunks) it rests on.
    """
    from tqdm import tqdm

    check_model(model)
    check_tokenizer(tokenizer)
    if suite_name not in SUITES:
        raise ValueError(f"unknown suite {suite_name!r}; choose one of {sorted(SUITES)}")
    spec = SUITES[suite_name]
    ci = {"n_resamples": n_resamples, "seed": seed}
    scores: dict[str, dict[str, Any]] = {}
    steps = tqdm(total=4, desc=f"suite {suite_name}", disable=not progress)

    problems = load_code_benchmark()[: spec.code_problems]
    code = evaluate_code(
        model, tokenizer, problems, max_new_tokens=spec.code_max_new_tokens, progress=progress
    )
    scores["code_pass@1"] = score_dict(
        bootstrap_ci(code.per_problem_pass_at_k(1), **ci),
        description="share of the book's code problems whose greedy completion passes the tests",
        outcomes=code.reasons(),
    )
    steps.update()

    questions = load_multiple_choice_set()[: spec.mc_items]
    mc = evaluate_multiple_choice(model, tokenizer, questions)
    scores["mc_accuracy"] = score_dict(
        bootstrap_ci([float(c) for c in mc.correct], **ci),
        description="general-knowledge questions, 4 options, by per-byte log-likelihood",
        chance=mc.chance,
    )
    steps.update()

    plays = held_out_plays()
    cloze = evaluate_multiple_choice(
        model, tokenizer, shakespeare_cloze(spec.cloze_items, seed, plays=plays)
    )
    scores["cloze_accuracy"] = score_dict(
        bootstrap_ci([float(c) for c in cloze.correct], **ci),
        description="which line comes next, 4 options, in plays the reference model never saw",
        chance=cloze.chance,
    )
    steps.update()

    texts = [c for p in plays for c in _chunks(p.text[: spec.bpb_chars_per_play], spec.chunk_chars)]
    parts = [p for p in text_likelihood(model, tokenizer, texts) if p.bytes > 0]
    scores["bits_per_byte"] = score_dict(
        bootstrap_ci(
            [p.nats / (LN2 * p.bytes) for p in parts], weights=[p.bytes for p in parts], **ci
        ),
        description="held-out Shakespeare plays (lower is better), total bits / total bytes",
        bytes=sum(p.bytes for p in parts),
    )
    steps.update()
    steps.close()

    from gptlab import __version__

    config = model.config
    return {
        "suite": suite_name,
        "gptlab_version": __version__,
        "model": {
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "block_size": config.block_size,
            "vocab_size": getattr(config, "vocab_size", None),
        },
        "held_out_plays": [p.title for p in plays],
        "bootstrap": {"confidence": 0.95, **ci},
        "scores": scores,
    }


def _check_report(report: Any) -> dict[str, Any]:
    if not isinstance(report, dict) or not isinstance(report.get("scores"), dict):
        raise TypeError("report must be the dict evaluate_suite() returns (with a 'scores' dict)")
    return report


def _format(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.3f}"


def report_markdown(report: dict[str, Any]) -> str:
    """The report card as a Markdown table: score, value, 95% interval, n."""
    report = _check_report(report)
    model = report.get("model", {})
    lines = [
        f"# Report card: suite `{report.get('suite', '?')}`",
        "",
        f"Model: {model.get('class', '?')}, {model.get('parameters', 0):,} parameters, "
        f"context {model.get('block_size', '?')} tokens. gptlab {report.get('gptlab_version', '?')}.",
        "",
        "| score | value | 95% interval | n | what |",
        "|---|---:|---:|---:|---|",
    ]
    for name, s in report["scores"].items():
        interval = f"{_format(s['low'])} to {_format(s['high'])}"
        lines.append(
            f"| {name} | {_format(s['value'])} | {interval} | {s['n']} | {s.get('description', '')} |"
        )
    lines += ["", "Intervals: percentile bootstrap over items, seeded (see `bootstrap`)."]
    return "\n".join(lines) + "\n"


def _write_atomic(path: pathlib.Path, text: str, overwrite: bool) -> None:
    """Write to a temporary name in the same folder, then rename into place, so a reader never
    sees half a file; without ``overwrite`` a file that appeared meanwhile is not replaced."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        temporary = pathlib.Path(handle.name)
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            os.link(temporary, path)  # fails if path exists: no silent overwrite
        except FileExistsError:
            raise FileExistsError(
                f"{path} appeared while writing; pass overwrite=True to replace it"
            ) from None
        except OSError:  # a file system without hard links: check, then rename
            if path.exists():
                raise FileExistsError(f"{path} already exists; pass overwrite=True") from None
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_report(
    report: dict[str, Any], path: str | os.PathLike[str], *, overwrite: bool = False
) -> tuple[pathlib.Path, pathlib.Path]:
    """Save ``report`` as ``<path>.json`` and ``<path>.md`` (a ``.json``/``.md`` suffix on
    ``path`` is replaced); returns both paths. Refuses to replace existing files unless
    ``overwrite=True``."""
    report = _check_report(report)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path, got {type(path).__name__}")
    base = pathlib.Path(path)
    if base.suffix in (".json", ".md"):
        base = base.with_suffix("")
    targets = (base.with_name(base.name + ".json"), base.with_name(base.name + ".md"))
    if not overwrite:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise FileExistsError(
                f"{', '.join(existing)} already exists; pass overwrite=True to replace it, or "
                "choose another path"
            )
    base.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(targets[0], json.dumps(report, indent=2, sort_keys=False) + "\n", overwrite)
    _write_atomic(targets[1], report_markdown(report), overwrite)
    return targets
