"""Supervised fine-tuning of SmolLM2-135M-Instruct with LoRA: a skill it lacks, and what it costs.

    OMP_NUM_THREADS=2 python recipes/smollm2_lora.py \\
        --out gptlab/assets/lora/smollm2_numerals.json \\
        --adapter-dir gptlab/assets/lora/smollm2_numerals_adapter        # the stored run
    python recipes/smollm2_lora.py --steps 2 --n-test 4 --train-numbers 16 --facts 2 \\
        --out /tmp/smollm2_lora.json --adapter-dir /tmp/smollm2_lora_adapter   # a smoke run

Chapter 8's LoRA on the book's real model. SmolLM2 is asked, in its ChatML template, to write
an English number ("four thousand three hundred twenty-one") in Chinese numerals (四千三百二十一),
which it cannot do (0 of 300 held-out numbers, greedy). The numbers 0..9999 are split as in
chapter 9 (the held-out numbers are never trained on; ``check_split`` proves the requests and
answers do not overlap). LoRA adapters of rank 8 on the attention's query and value projections
(460,800 parameters, 0.3% of the model) are trained with :func:`gptlab.chat.finetune_chat` on
the replies only. The script measures exact match on the held-out numbers before and after, with
bootstrap intervals and a paired interval for the change, by number of digits; and whether the
model still answers short factual questions (:data:`gptlab.align.tasks.FACTS`), the forgetting a
narrow fine-tune can cause. With ``--replay N`` the training set also holds SmolLM2's own greedy
replies to N ChatterBot questions (leak-free split; each repeated ``--replay-copies`` times), a
common remedy for that forgetting. It writes the results as JSON (``--out``) and the adapter
(``--adapter-dir``), which chapter 8 loads onto SmolLM2 to show the tuned model live.
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
from gptlab import __version__, applications, chat
from gptlab.align.tasks import FACTS, chatterbot_questions, fact_scores, fact_summary, rate_interval
from gptlab.evaluate import paired_bootstrap
from gptlab.evaluate.contamination import check_split
from gptlab.lora import apply_lora, count_trainable_parameters, save_lora_adapter
from gptlab.utils import atomic_write, round_floats, seed_everything

MODEL = "smollm2-135m-instruct"
TEMPLATE = "chatml"
TARGETS = ("q_proj", "v_proj")
RANK, ALPHA = 8, 16.0
MAX_NEW_TOKENS = 16  # the longest numeral below 10,000 is 7 characters
REPLAY_TOKENS = 96  # replayed replies must end within this many tokens


def conversations(pairs: list[tuple[str, str]]) -> list[list[str]]:
    """``[request, numeral]`` for each ``(English words, numeral)`` pair."""
    return [[applications.NUMERAL_REQUEST + words, numeral] for words, numeral in pairs]


def exact_scores(model, tok, pairs: list[tuple[str, str]]) -> tuple[list[float], list[str]]:
    """1.0 per pair whose greedy reply is exactly the numeral; and the replies."""
    replies = applications.greedy_replies(
        model, tok, [c[0] for c in conversations(pairs)], template=TEMPLATE,
        max_new_tokens=MAX_NEW_TOKENS,
    )  # fmt: skip
    return [float(r == n) for r, (_, n) in zip(replies, pairs, strict=True)], replies


def by_digits(numbers: list[int], scores: list[float]) -> dict[str, dict[str, float]]:
    """Exact match by how many digits the number has (1-2, 3, 4)."""
    groups = {"1-2 digits": lambda n: n < 100, "3 digits": lambda n: 100 <= n < 1000,
              "4 digits": lambda n: n >= 1000}  # fmt: skip
    table = {}
    for name, keep in groups.items():
        chosen = [s for n, s in zip(numbers, scores, strict=True) if keep(n)]
        if chosen:
            table[name] = rate_interval(chosen)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--n-test", type=int, default=300, help="held-out numbers")
    parser.add_argument("--train-numbers", type=int, default=0,
                        help="use only this many training numbers (0: all)")  # fmt: skip
    parser.add_argument("--facts", type=int, default=len(FACTS), help="factual questions asked")
    parser.add_argument(
        "--replay",
        type=int,
        default=0,
        help="also train on SmolLM2's replies to this many questions (0: none)",
    )
    parser.add_argument("--replay-copies", type=int, default=8,
                        help="how many times each replayed conversation is in the training set")  # fmt: skip
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/smollm2_lora.json"))
    parser.add_argument("--adapter-dir", type=pathlib.Path, default=None,
                        help="where to save the LoRA adapter (default: not saved)")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size", "n_test", "facts", "replay_copies"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("train_numbers", "replay"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (none/all) or positive")
    seed_everything(0)
    started_all = time.perf_counter()

    model, tok = gptlab.load_pretrained(MODEL)
    train_numbers, test_numbers = applications.split_numbers(10_000, args.n_test, seed=0)
    if args.train_numbers:
        train_numbers = train_numbers[:: max(1, len(train_numbers) // args.train_numbers)]
        train_numbers = train_numbers[: args.train_numbers]
    train_pairs = applications.number_pairs(train_numbers)
    test_pairs = applications.number_pairs(test_numbers)
    # the request's fixed wording is in every example by design: check the numbers and numerals
    leak = check_split(["\n".join(p) for p in train_pairs], ["\n".join(p) for p in test_pairs])
    facts = FACTS[: args.facts]

    before, replies_before = exact_scores(model, tok, test_pairs)
    facts_before, fact_replies_before = fact_scores(model, tok, facts, template=TEMPLATE)

    replay = []
    if args.replay:  # the base model's own answers, kept only where it ended its reply
        questions = chatterbot_questions(args.replay, 1)[0]
        check_split(questions, [q for q, _ in facts])  # no fact question is replayed
        replies = applications.greedy_replies(
            model, tok, questions, template=TEMPLATE, max_new_tokens=REPLAY_TOKENS
        )
        replay = [[q, r] for q, r in zip(questions, replies, strict=True)
                  if r and len(tok.encode(r)) < REPLAY_TOKENS - 2]  # fmt: skip
    apply_lora(model, r=RANK, alpha=ALPHA, target_modules=TARGETS)
    lora_params = count_trainable_parameters(model)
    train_chats = conversations(train_pairs) + replay * args.replay_copies
    train_set = chat.ChatDataset(train_chats, tok, 128, template=TEMPLATE)
    val_set = chat.ChatDataset(conversations(test_pairs[:64]), tok, 64, template=TEMPLATE)
    started = time.perf_counter()
    history = chat.finetune_chat(
        model, train_set, val_set, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=min(10, args.steps), eval_interval=max(1, args.steps // 4),
    )  # fmt: skip
    train_seconds = time.perf_counter() - started

    after, replies_after = exact_scores(model, tok, test_pairs)
    facts_after, fact_replies_after = fact_scores(model, tok, facts, template=TEMPLATE)
    if args.adapter_dir is not None:
        save_lora_adapter(model, args.adapter_dir, overwrite=True, metadata={"base_model": MODEL,
                          "recipe": "recipes/smollm2_lora.py", "steps": args.steps})  # fmt: skip

    change = paired_bootstrap(after, before, seed=0)
    results = {
        "task": "English number words -> Chinese numerals, SmolLM2-135M-Instruct with LoRA",
        "command": " ".join(["python", "recipes/smollm2_lora.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },  # fmt: skip
        "model": MODEL,
        "request": applications.NUMERAL_REQUEST,
        "lora": {
            "r": RANK,
            "alpha": ALPHA,
            "targets": list(TARGETS),
            "parameters": lora_params,
            "model_parameters": sum(p.numel() for p in model.parameters()),
        },  # fmt: skip
        "train_numbers": len(train_pairs),
        "replay": {
            "conversations": len(replay),
            "copies": args.replay_copies,
            "share": len(replay) * args.replay_copies / len(train_chats),
            "examples": replay[:3],
        },  # fmt: skip
        "test_numbers": test_numbers,
        "split_check": str(leak),
        "exact_before": rate_interval(before),
        "exact_after": rate_interval(after),
        "change": {"estimate": change.estimate, "low": change.low, "high": change.high},
        "by_digits_before": by_digits(test_numbers, before),
        "by_digits_after": by_digits(test_numbers, after),
        "replies_before": replies_before,
        "replies_after": replies_after,
        **fact_summary(
            facts, (facts_before, fact_replies_before), (facts_after, fact_replies_after)
        ),
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / args.steps,
        "threads": torch.get_num_threads(),
        "total_seconds": time.perf_counter() - started_all,
        "history": round_floats(history.to_dict()),
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    a, b = results["exact_before"], results["exact_after"]
    print(
        f"held-out numerals exact {a['rate']:.1%} -> {b['rate']:.1%} "
        f"[{b['low']:.1%}, {b['high']:.1%}]; facts {results['facts_before']['rate']:.0%} -> "
        f"{results['facts_after']['rate']:.0%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
