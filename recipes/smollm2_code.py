"""SmolLM2-135M-Instruct writes the functions of the book's code benchmark; the tests run them.

    OMP_NUM_THREADS=1 python recipes/smollm2_code.py            # about 5 CPU-minutes

Chapter 9 restates its code result as functional correctness. For every one of the 63 problems
of ``gptlab.evaluate.load_code_benchmark()`` this script asks SmolLM2 for the function in its
chat template, with a Python code block opened in its reply
(:func:`gptlab.applications.chat_code_prompt`), lets it write the function greedily up to the
closing code fence (:func:`~gptlab.applications.chat_function`, at most 192 new tokens), and
runs that code against the problem's hidden tests in the sandbox
(:func:`~gptlab.applications.evaluate_chat_code`). Greedy decoding draws one sample per
problem, so pass@1 is the share of problems whose sample passes. It writes every function and
every verdict to gptlab/assets/applications/smollm2_code.json; the notebook re-runs a few
problems live and checks that they agree.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import gptlab
from gptlab import applications
from gptlab.evaluate import bootstrap_ci, load_code_benchmark
from gptlab.utils import atomic_write, provenance

OUT = pathlib.Path(applications.__file__).resolve().parent / "assets" / "applications"
MAX_NEW_TOKENS = 192


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT / "smollm2_code.json")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    args = parser.parse_args(argv)
    wall, cpu = time.perf_counter(), time.process_time()
    problems = load_code_benchmark()[: args.limit]
    model, tok = gptlab.load_pretrained("smollm2-135m-instruct")
    evaluation = applications.evaluate_chat_code(
        model, tok, problems, max_new_tokens=MAX_NEW_TOKENS
    )
    scores = evaluation.per_problem_pass_at_k(1)
    interval = bootstrap_ci(scores)
    records = []
    for problem in problems:
        (sample,) = evaluation.samples[problem.id]
        records.append(
            {
                "id": problem.id,
                "difficulty": problem.difficulty,
                "code": sample.completion,
                "passed": sample.result.passed,
                "reason": sample.result.reason,
                "detail": sample.result.detail,
            }
        )
    result = {
        "name": "SmolLM2-135M-Instruct on the GPT Lab code benchmark (greedy, pass@1)",
        **provenance(),
        "command": "OMP_NUM_THREADS=1 python recipes/smollm2_code.py",
        "hardware": args.hardware,
        "model": "smollm2-135m-instruct",
        "prompt": "applications.chat_code_prompt(problem.prompt)",
        "instruction": applications.CODE_INSTRUCTION,
        "max_new_tokens": MAX_NEW_TOKENS,
        "n_problems": len(problems),
        "passed": sum(r["passed"] for r in records),
        "pass_at_1": evaluation.pass_at_k(1),
        "interval_95": [interval.low, interval.high],
        "reasons": evaluation.reasons(),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "problems": records,
    }
    with atomic_write(args.out, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(
        f"pass@1 {result['passed']}/{len(problems)} = {result['pass_at_1']:.3f} "
        f"[{interval.low:.3f}, {interval.high:.3f}]; {result['reasons']}; "
        f"{result['wall_seconds']} s wall -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
