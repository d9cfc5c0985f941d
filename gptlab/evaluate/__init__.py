"""Evaluating models: what a score means, how sure it is, and whether the test set leaked.

One concept per module:

* :mod:`~gptlab.evaluate.likelihood` -- perplexity and bits per byte over sliding windows;
* :mod:`~gptlab.evaluate.multiple_choice` -- options scored by log-likelihood, accuracy;
* :mod:`~gptlab.evaluate.verifiers` -- exact match, numeric answers, format checks;
* :mod:`~gptlab.evaluate.sandbox` -- running generated code against tests, fenced in;
* :mod:`~gptlab.evaluate.passk` -- the unbiased pass@k estimator;
* :mod:`~gptlab.evaluate.code_eval` -- sample, run and score code completions;
* :mod:`~gptlab.evaluate.uncertainty` -- bootstrap intervals, paired comparisons;
* :mod:`~gptlab.evaluate.benchmarks` -- the book's code, question and cloze sets;
* :mod:`~gptlab.evaluate.contamination` -- n-gram overlap between training and test text;
* :mod:`~gptlab.evaluate.judge` -- a chat model as judge of two answers, and its position bias;
* :mod:`~gptlab.evaluate.report` -- report cards (JSON + Markdown).
"""

from __future__ import annotations

from gptlab.evaluate.benchmarks import (
    BenchmarkFileError,
    CodeProblem,
    held_out_plays,
    load_code_benchmark,
    load_multiple_choice_set,
    question_context,
    shakespeare_cloze,
)
from gptlab.evaluate.code_eval import (
    CodeEvaluation,
    CodeSample,
    evaluate_code,
    sample_completions,
    truncate_completion,
)
from gptlab.evaluate.contamination import (
    ContaminationError,
    ContaminationReport,
    check_split,
    find_overlap,
    ngrams,
)
from gptlab.evaluate.judge import (
    JudgeVerdict,
    PairJudgement,
    judge_both_orders,
    judge_pair,
    position_bias,
)
from gptlab.evaluate.likelihood import (
    Likelihood,
    bits_per_byte,
    bits_per_byte_to_loss,
    loss_to_bits_per_byte,
    perplexity,
    sequence_nats,
    text_likelihood,
)
from gptlab.evaluate.multiple_choice import (
    MultipleChoiceItem,
    MultipleChoiceResult,
    OptionScore,
    centred_accuracy,
    choose_options,
    evaluate_multiple_choice,
    score_options,
)
from gptlab.evaluate.passk import mean_pass_at_k, pass_at_k
from gptlab.evaluate.report import (
    SUITES,
    evaluate_suite,
    report_markdown,
    score_dict,
    write_report,
)
from gptlab.evaluate.sandbox import REASONS, ExecutionResult, run_many, run_tests
from gptlab.evaluate.uncertainty import (
    Interval,
    SignTest,
    bootstrap_ci,
    paired_bootstrap,
    sign_test,
)
from gptlab.evaluate.verifiers import (
    exact_match,
    extract_number,
    is_json,
    matches_pattern,
    normalize_answer,
    numeric_match,
    parses_as_python,
    within_word_limit,
)

__all__ = [
    "REASONS",
    "SUITES",
    "BenchmarkFileError",
    "CodeEvaluation",
    "CodeProblem",
    "CodeSample",
    "ContaminationError",
    "ContaminationReport",
    "ExecutionResult",
    "Interval",
    "JudgeVerdict",
    "Likelihood",
    "MultipleChoiceItem",
    "MultipleChoiceResult",
    "OptionScore",
    "PairJudgement",
    "SignTest",
    "bits_per_byte",
    "bits_per_byte_to_loss",
    "bootstrap_ci",
    "centred_accuracy",
    "check_split",
    "evaluate_code",
    "choose_options",
    "evaluate_multiple_choice",
    "evaluate_suite",
    "exact_match",
    "extract_number",
    "find_overlap",
    "held_out_plays",
    "is_json",
    "judge_both_orders",
    "judge_pair",
    "load_code_benchmark",
    "load_multiple_choice_set",
    "loss_to_bits_per_byte",
    "matches_pattern",
    "mean_pass_at_k",
    "ngrams",
    "normalize_answer",
    "numeric_match",
    "paired_bootstrap",
    "parses_as_python",
    "pass_at_k",
    "perplexity",
    "position_bias",
    "question_context",
    "report_markdown",
    "run_many",
    "run_tests",
    "sample_completions",
    "score_dict",
    "score_options",
    "sequence_nats",
    "shakespeare_cloze",
    "sign_test",
    "text_likelihood",
    "truncate_completion",
    "within_word_limit",
    "write_report",
]
