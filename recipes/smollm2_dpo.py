"""DPO with LoRA on SmolLM2-135M-Instruct: chapter 14's instruction constraints on a real model.

    OMP_NUM_THREADS=1 python recipes/smollm2_dpo.py                    # defaults: see --help
    OMP_NUM_THREADS=1 python recipes/smollm2_dpo.py --questions 6 --n-test 3 --steps 2 \\
        --out /tmp/smollm2_dpo.json --adapter-dir /tmp/smollm2_dpo_adapter   # a smoke run

The same experiment as ``recipes/dpo.py``, on the book's real model: ChatterBot questions with
one of :data:`gptlab.align.INSTRUCTIONS` appended, asked in SmolLM2's ChatML template; its own
sampled replies ranked by the instruction's verifier into preference pairs; DPO on LoRA adapters
(rank 8 on the attention's query and value projections) with the LoRA-disabled model as the
reference. Besides how often the greedy reply follows each instruction (before and after, with
bootstrap intervals), the script checks that the model still knows things: short factual
questions asked with "Answer in one word." are scored by whether the reply contains the answer.
It writes the results as JSON (``--out``) and the adapter (``--adapter-dir``), which chapter 14
loads to show the tuned model live.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

import gptlab
from gptlab import __version__
from gptlab.align import INSTRUCTIONS, sampled_kl, train_dpo
from gptlab.align.tasks import (
    FACTS,
    build_preference_pairs,
    chatterbot_questions,
    fact_scores,
    fact_summary,
    follow_rates,
    greedy_instruction_replies,
    instruction_prompt,
    pooled_scores,
    prompt_ids,
    rate_table,
)
from gptlab.evaluate import paired_bootstrap
from gptlab.lora import apply_lora, save_lora_adapter
from gptlab.utils import atomic_write, round_floats, seed_everything

MODEL = "smollm2-135m-instruct"
TEMPLATE = "chatml"
TARGETS = ("q_proj", "v_proj")


def examples(model, tok, questions: list[str], max_new_tokens: int) -> dict[str, list[str]]:
    return {
        instruction: greedy_instruction_replies(
            model,
            tok,
            questions,
            instruction,
            system=None,
            template=TEMPLATE,
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        for instruction in INSTRUCTIONS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80, help="DPO steps")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/smollm2_dpo.json"))
    parser.add_argument("--adapter-dir", type=pathlib.Path, default=None,
                        help="where to save the LoRA adapter (default: not saved)")  # fmt: skip
    parser.add_argument("--questions", type=int, default=120, help="training questions")
    parser.add_argument("--n-test", type=int, default=40, help="held-out questions")
    parser.add_argument("--samples", type=int, default=8, help="replies sampled per question")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--facts", type=int, default=len(FACTS), help="factual questions asked")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args(argv)
    seed_everything(0)
    started_all = time.perf_counter()
    m = args.max_new_tokens
    facts = FACTS[: args.facts]

    model, tok = gptlab.load_pretrained(MODEL)
    train_q, test_q = chatterbot_questions(args.questions, args.n_test)
    before = follow_rates(model, tok, test_q, system=None, template=TEMPLATE, max_new_tokens=m)
    facts_before, fact_replies_before = fact_scores(
        model, tok, facts, template=TEMPLATE, max_new_tokens=m
    )
    examples_before = examples(model, tok, test_q[:3], m)

    started = time.perf_counter()
    pairs = build_preference_pairs(
        model, tok, train_q, samples=args.samples, system=None, template=TEMPLATE,
        max_new_tokens=m,
    )  # fmt: skip
    pair_seconds = time.perf_counter() - started

    apply_lora(model, r=8, alpha=16.0, target_modules=TARGETS)
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    started = time.perf_counter()
    history = train_dpo(
        model, pairs, steps=args.steps, beta=args.beta, reference="lora", batch_size=4,
        lr=args.lr, warmup_steps=min(5, args.steps), tokenizer=tok,
    )  # fmt: skip
    dpo_seconds = time.perf_counter() - started
    model.eval()
    after = follow_rates(model, tok, test_q, system=None, template=TEMPLATE, max_new_tokens=m)
    facts_after, fact_replies_after = fact_scores(
        model, tok, facts, template=TEMPLATE, max_new_tokens=m
    )
    kl_prompts = [
        prompt_ids(tok, instruction_prompt(q, instruction), None, TEMPLATE)
        for instruction in INSTRUCTIONS
        for q in test_q[:8]
    ]
    kl = sampled_kl(model, kl_prompts, "lora", samples_per_prompt=2, max_new_tokens=m,
                    eos_token_id=tok.encode("<|im_end|>", allowed_special="all")[0])  # fmt: skip
    if args.adapter_dir is not None:
        save_lora_adapter(model, args.adapter_dir, overwrite=True, metadata={"base_model": MODEL,
                          "recipe": "recipes/smollm2_dpo.py", "steps": args.steps})  # fmt: skip

    diff = paired_bootstrap(pooled_scores(after), pooled_scores(before), seed=0)
    results = {
        "task": "instruction constraints on SmolLM2-135M-Instruct, pairs ranked by verifiers",
        "command": " ".join(["python", "recipes/smollm2_dpo.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },  # fmt: skip
        "model": MODEL,
        "lora": {"r": 8, "alpha": 16.0, "targets": list(TARGETS), "parameters": lora_params},
        "pairs": len(pairs),
        "example_pairs": [
            {"chosen": tok.decode(p.chosen_ids), "rejected": tok.decode(p.rejected_ids)}
            for p in pairs[:6]
        ],
        "follow_rate_before": rate_table(before),
        "follow_rate_after": rate_table(after),
        "improvement": {"estimate": diff.estimate, "low": diff.low, "high": diff.high},
        **fact_summary(
            facts, (facts_before, fact_replies_before), (facts_after, fact_replies_after)
        ),
        "test_questions": test_q[:3],
        "examples_before": examples_before,
        "examples_after": examples(model, tok, test_q[:3], m),
        "sampled_kl_after": {"mean": kl.mean, "stderr": kl.stderr, "n": kl.n},
        "pair_seconds": pair_seconds,
        "dpo_seconds": dpo_seconds,
        "total_seconds": time.perf_counter() - started_all,
        "history": round_floats(history.to_dict()),
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    a, b = results["follow_rate_before"]["all"], results["follow_rate_after"]["all"]
    print(f"instructions followed {a['rate']:.1%} -> {b['rate']:.1%} ({len(pairs)} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
