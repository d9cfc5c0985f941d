"""GRPO on chapter 9's numbers -> Chinese numerals: reinforcement learning from a verifier.

    OMP_NUM_THREADS=1 python recipes/grpo.py                      # every experiment: see --help
    OMP_NUM_THREADS=1 python recipes/grpo.py --experiments main --steps 3 --out /tmp/grpo.json

Chapter 9 fine-tunes a 2-layer GPT to write English number words as Chinese numerals
("three hundred five" -> "三百零五"). Here the supervised fine-tune is kept *short*
(``--sft-steps``), so the model is right only some of the time, and GRPO takes over: for each
prompt it samples a group of answers, the verifier (exact match with
:func:`gptlab.applications.number_to_chinese`) scores them 0 or 1, and the policy moves toward
the answers that scored above their group's mean.

Every experiment starts from the same SFT model and changes one thing (:data:`EXPERIMENTS`):
the seed, the group size (at a fixed 64 samples per step), the KL coefficient, and the reward
(``partial_credit`` pays :func:`gptlab.align.char_overlap_reward`, which can be hacked). Each
reports held-out exact match (greedy) with a bootstrap interval and a paired comparison with
the SFT model, the partial-credit score of the same replies, their length, the sampled KL to
the SFT model and the training history, in one JSON file (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import platform
import sys
import time

import torch

from gptlab import GPT, __version__, applications, chat
from gptlab.align import (
    char_overlap_reward,
    exact_answer_reward,
    reward_from_text,
    sampled_kl,
    train_grpo,
)
from gptlab.align.tasks import number_task, rate_interval
from gptlab.evaluate import paired_bootstrap
from gptlab.tokenizers import BPETokenizer
from gptlab.utils import atomic_write, round_floats

MAX_NEW_TOKENS = 16
REWARDS = {"exact": exact_answer_reward, "partial_credit": char_overlap_reward}
# name -> what it changes from the main run (group size 8 x 8 prompts, KL 0.04, exact reward)
EXPERIMENTS: dict[str, dict] = {
    "main": {},
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
    "group2": {"group_size": 2, "prompts_per_step": 32},
    "group4": {"group_size": 4, "prompts_per_step": 16},
    "group16": {"group_size": 16, "prompts_per_step": 4},
    "no_kl": {"kl_coef": 0.0},
    "strong_kl": {"kl_coef": 1.0},
    "partial_credit": {"reward": "partial_credit"},
}
MAIN = {"seed": 0, "group_size": 8, "prompts_per_step": 8, "kl_coef": 0.04, "reward": "exact"}


def greedy_scores(model: GPT, tok: BPETokenizer, pairs: list[tuple[str, str]]) -> dict:
    """Per held-out pair: exact match and partial credit of the greedy reply, and its length."""
    replies = applications.greedy_replies(
        model, tok, [src for src, _ in pairs], max_new_tokens=MAX_NEW_TOKENS
    )
    return {
        "exact": [exact_answer_reward(r, ref) for r, (_, ref) in zip(replies, pairs, strict=True)],
        "partial": [
            char_overlap_reward(r, ref) for r, (_, ref) in zip(replies, pairs, strict=True)
        ],
        "chars": [len(r) for r in replies],
        "examples": [[src, ref, r] for (src, ref), r in zip(pairs[:8], replies[:8], strict=True)],
    }


def summary(scores: dict) -> dict:
    return {
        "exact_match": rate_interval(scores["exact"]),
        "partial_credit": sum(scores["partial"]) / len(scores["partial"]),
        "mean_chars": sum(scores["chars"]) / len(scores["chars"]),
        "examples": scores["examples"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="GRPO steps per experiment")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/grpo.json"))
    parser.add_argument("--sft-steps", type=int, default=150, help="short SFT before GRPO")
    parser.add_argument("--numbers", type=int, default=10_000, help="task: numbers 0..N-1")
    parser.add_argument("--n-test", type=int, default=300, help="held-out numbers")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--experiments", default=",".join(EXPERIMENTS), help="comma-separated names of EXPERIMENTS"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.experiments.split(",") if n]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        parser.error(f"unknown experiments {unknown}; choose from {', '.join(EXPERIMENTS)}")
    started = time.perf_counter()
    task = number_task(args.sft_steps, numbers=args.numbers, n_test=args.n_test, seed=0)
    sft_seconds = time.perf_counter() - started
    sft, tok, test_pairs = task.model, task.tokenizer, task.test_pairs
    before = greedy_scores(sft, tok, test_pairs)
    prompts, references = task.prompts, task.references
    test_prompts = [chat.tokenize_conversation([src], tok)[0] for src, _ in test_pairs[:60]]
    eos = chat.end_token_id(tok)
    frozen_sft = copy.deepcopy(sft)  # the reference of the KL measurement (gets frozen)

    runs = {}
    for name in names:
        config = MAIN | EXPERIMENTS[name]
        model = copy.deepcopy(sft)
        started = time.perf_counter()
        history = train_grpo(
            model, prompts, reward_from_text(tok, REWARDS[config["reward"]], references),
            steps=args.steps, group_size=config["group_size"],
            prompts_per_step=config["prompts_per_step"], max_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=eos, lr=args.lr, kl_coef=config["kl_coef"],
            warmup_steps=min(10, args.steps), seed=config["seed"], tokenizer=tok,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        after = greedy_scores(model, tok, test_pairs)
        diff = paired_bootstrap(after["exact"], before["exact"], seed=0)
        kl = sampled_kl(model, test_prompts, frozen_sft, samples_per_prompt=4,
                        max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos)  # fmt: skip
        runs[name] = {
            "config": config,
            "after": summary(after),
            "improvement": {"estimate": diff.estimate, "low": diff.low, "high": diff.high},
            "sampled_kl": {"mean": kl.mean, "stderr": kl.stderr, "n": kl.n},
            "grpo_seconds": seconds,
            "history": round_floats(history.to_dict()),
        }
        em = runs[name]["after"]["exact_match"]["rate"]
        print(f"{name}: exact match {sum(before['exact']) / len(before['exact']):.1%} -> {em:.1%}")

    results = {
        "task": "English number words -> Chinese numerals (gptlab.applications)",
        "command": " ".join(["python", "recipes/grpo.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },  # fmt: skip
        "main_config": MAIN,
        "max_new_tokens": MAX_NEW_TOKENS,
        "sft_seconds": sft_seconds,
        "before": summary(before),
        "runs": runs,
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
