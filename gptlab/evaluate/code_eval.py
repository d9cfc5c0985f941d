"""Functional correctness of generated code: sample completions, run them, estimate pass@k.

"35% of the samples parse" says nothing about whether the code works. Here the model continues
each problem's prompt (a signature and docstring), the completion is cut where the function
ends, and prompt + completion runs against the problem's hidden tests in the sandbox. With
``n`` samples per problem of which ``c`` pass, :func:`~gptlab.evaluate.passk.pass_at_k` turns
the counts into pass@k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.evaluate._checks import check_int, check_model, check_tokenizer, model_device
from gptlab.evaluate.benchmarks import CodeProblem
from gptlab.evaluate.passk import pass_at_k
from gptlab.evaluate.sandbox import ExecutionResult, run_many

__all__ = [
    "CodeEvaluation",
    "CodeSample",
    "evaluate_code",
    "sample_completions",
    "truncate_completion",
]


@dataclass(frozen=True)
class CodeSample:
    """One completion of one problem and what running it against the tests did."""

    problem_id: str
    completion: str
    result: ExecutionResult


@dataclass(frozen=True)
class CodeEvaluation:
    """Every sample, grouped by problem in benchmark order."""

    samples: dict[str, list[CodeSample]]

    def counts(self) -> list[tuple[int, int]]:
        """``(n, c)`` per problem: samples drawn and samples that passed."""
        return [(len(s), sum(x.result.passed for x in s)) for s in self.samples.values()]

    def per_problem_pass_at_k(self, k: int) -> list[float]:
        """pass@k of each problem (the unbiased estimator), in benchmark order."""
        return [pass_at_k(n, c, k) for n, c in self.counts()]

    def pass_at_k(self, k: int) -> float:
        """pass@k averaged over problems."""
        scores = self.per_problem_pass_at_k(k)
        return sum(scores) / len(scores)

    def reasons(self) -> dict[str, int]:
        """How many samples ended each way: passed, failed, timeout, memory, error, forbidden."""
        tally: dict[str, int] = {}
        for samples in self.samples.values():
            for s in samples:
                tally[s.result.reason] = tally.get(s.result.reason, 0) + 1
        return tally


def truncate_completion(completion: str) -> str:
    """Keep the function body: cut at the first non-blank line that is not indented.

    A base model does not stop when the function ends; it goes on with another ``def``, a
    ``print`` or a comment at column 0. None of that belongs to the answer (and running it could
    fail a correct function).
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    kept = []
    for line in completion.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            break
        kept.append(line)
    return "".join(kept)


@torch.no_grad()
def sample_completions(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float | None = None,
    max_new_tokens: int = 128,
    seed: int = 0,
    stop_at_top_level: bool = False,
) -> list[str]:
    """``n`` raw continuations of ``prompt`` (``temperature=0``: greedy, so all ``n`` agree).

    A prompt longer than the context window is cut to its last ``block_size`` tokens, which are
    all the model would see anyway. ``stop_at_top_level`` (only with ``n=1``) stops as soon as
    a line starts at column 0, where :func:`truncate_completion` would cut anyway: the kept
    body is the same, and a model that has finished its function is not asked for 100 tokens
    more.
    """
    from gptlab.sampling import generate, stream

    check_model(model)
    check_tokenizer(tokenizer)
    check_int(n, "n")
    check_int(max_new_tokens, "max_new_tokens")
    ids = list(getattr(tokenizer, "encode_ordinary", tokenizer.encode)(prompt))
    ids = ids[-model.config.block_size :]
    if not ids:
        raise ValueError("the prompt encodes to no tokens")
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    if stop_at_top_level:
        if n != 1:
            raise ValueError("stop_at_top_level works one sample at a time; pass n=1")
        new: list[int] = []
        tokens = stream(
            model, idx, max_new_tokens, temperature=temperature, top_p=top_p, generator=generator
        )
        for token in tokens:
            new.append(token)
            text = tokenizer.decode(new)
            if truncate_completion(text) != text:  # a top-level line has begun
                break
        return [tokenizer.decode(new)]
    out = generate(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        num_return_sequences=n,
        generator=generator,
    )
    return [tokenizer.decode(row[len(ids) :].tolist()) for row in out]


def evaluate_code(
    model: torch.nn.Module,
    tokenizer: Any,
    problems: Sequence[CodeProblem],
    *,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float | None = None,
    max_new_tokens: int = 128,
    seed: int = 0,
    workers: int = 1,
    timeout: float = 5.0,
    progress: bool = False,
) -> CodeEvaluation:
    """Sample ``n_samples`` completions per problem, run each in the sandbox, keep every result.

    Greedy decoding (``temperature=0``, the default) gives pass@1 directly; for pass@k with
    k > 1 sample at a temperature such as 0.8 with ``n_samples`` well above k.
    """
    from tqdm import tqdm

    if isinstance(problems, CodeProblem) or not isinstance(problems, Sequence) or not problems:
        raise ValueError("problems must be a non-empty list of CodeProblem (load_code_benchmark())")
    samples: dict[str, list[CodeSample]] = {}
    for i, problem in enumerate(tqdm(problems, desc="code", disable=not progress)):
        if not isinstance(problem, CodeProblem):
            raise TypeError(f"problems[{i}] must be a CodeProblem, got {type(problem).__name__}")
        if problem.id in samples:
            raise ValueError(f"problem id {problem.id!r} appears twice; ids must be unique")
        completions = sample_completions(
            model,
            tokenizer,
            problem.prompt,
            n=n_samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed + i,
            stop_at_top_level=n_samples == 1,  # same bodies, far fewer tokens
        )
        bodies = [truncate_completion(c) for c in completions]
        jobs = [(problem.program(body), problem.tests) for body in bodies]
        results = run_many(jobs, workers=workers, timeout=timeout)
        samples[problem.id] = [
            CodeSample(problem.id, b, r) for b, r in zip(bodies, results, strict=True)
        ]
    return CodeEvaluation(samples)
