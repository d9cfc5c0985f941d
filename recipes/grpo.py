"""GRPO on chapter 9's numbers -> Chinese numerals: reinforcement learning from a verifier.

    OMP_NUM_THREADS=1 python recipes/grpo.py                      # defaults: see --help
    OMP_NUM_THREADS=1 python recipes/grpo.py --steps 3 --out /tmp/grpo.json   # a smoke run

Chapter 9 fine-tunes a 2-layer GPT to write English number words as Chinese numerals
("three hundred five" -> "三百零五"). Here the supervised fine-tune is kept *short*
(``--sft-steps``), so the model is right only some of the time, and GRPO takes over: for each
prompt it samples a group of answers, the verifier (exact match with
:func:`gptlab.applications.number_to_chinese`) scores them 0 or 1, and the policy moves toward
the answers that scored above their group's mean. The script measures held-out exact match
(greedy) before and after GRPO with bootstrap intervals and a paired comparison, and writes
them, the training time and the KL to the SFT model, as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import torch

from gptlab import GPT, GPTConfig, __version__, applications, chat
from gptlab.align import exact_answer_reward, reward_from_text, train_grpo
from gptlab.evaluate import bootstrap_ci, paired_bootstrap
from gptlab.tokenizers import BPETokenizer
from gptlab.utils import atomic_write, seed_everything

BLOCK = 48


def exact_scores(model: GPT, tok: BPETokenizer, pairs: list[tuple[str, str]]) -> list[float]:
    """1.0/0.0 per held-out pair: the greedy reply equals the Chinese numeral."""
    replies = applications.greedy_replies(model, tok, [src for src, _ in pairs], max_new_tokens=16)
    return [exact_answer_reward(r, ref) for r, (_, ref) in zip(replies, pairs, strict=True)]


def interval(scores: list[float]) -> dict[str, float]:
    ci = bootstrap_ci(scores, seed=0)
    return {"rate": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="GRPO steps")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/grpo.json"))
    parser.add_argument("--sft-steps", type=int, default=150, help="short SFT before GRPO")
    parser.add_argument("--numbers", type=int, default=10_000, help="task: numbers 0..N-1")
    parser.add_argument("--n-test", type=int, default=300, help="held-out numbers")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.04)
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    seed_everything(0)

    train_numbers, test_numbers = applications.split_numbers(args.numbers, args.n_test, seed=0)
    train_pairs = applications.number_pairs(train_numbers)
    test_pairs = applications.number_pairs(test_numbers)
    text = "".join(chat.format_conversation(list(p)) for p in train_pairs)
    tok = BPETokenizer.train(text, vocab_size=400)  # as chapter 9
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=4,
                          n_embd=128))  # fmt: skip

    started = time.perf_counter()
    train_set = chat.ChatDataset(train_pairs, tok, block_size=BLOCK)
    chat.finetune_chat(model, train_set, steps=args.sft_steps, batch_size=32, lr=3e-3,
                       warmup_steps=min(20, args.sft_steps))  # fmt: skip
    sft_seconds = time.perf_counter() - started
    before = exact_scores(model, tok, test_pairs)

    prompts = [chat.tokenize_conversation([src], tok)[0] for src, _ in train_pairs]
    reward_fn = reward_from_text(tok, exact_answer_reward, [ref for _, ref in train_pairs])
    started = time.perf_counter()
    history = train_grpo(
        model, prompts, reward_fn, steps=args.steps, group_size=args.group_size,
        prompts_per_step=args.prompts_per_step, max_new_tokens=16,
        eos_token_id=chat.end_token_id(tok), lr=args.lr, kl_coef=args.kl_coef,
        warmup_steps=min(10, args.steps), checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=100 if args.checkpoint_dir else 0, tokenizer=tok,
    )  # fmt: skip
    grpo_seconds = time.perf_counter() - started
    after = exact_scores(model, tok, test_pairs)
    diff = paired_bootstrap(after, before, seed=0)

    results = {
        "task": "English number words -> Chinese numerals (gptlab.applications)",
        "command": " ".join(["python", "recipes/grpo.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },  # fmt: skip
        "exact_match_before": interval(before),
        "exact_match_after": interval(after),
        "improvement": {"estimate": diff.estimate, "low": diff.low, "high": diff.high},
        "sft_seconds": sft_seconds,
        "grpo_seconds": grpo_seconds,
        "final_kl": history.kl[-1],
        "mean_reward_first_10": sum(history.mean_reward[:10]) / len(history.mean_reward[:10]),
        "mean_reward_last_10": sum(history.mean_reward[-10:]) / len(history.mean_reward[-10:]),
        "history": history.to_dict(),
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    rate_before, rate_after = results["exact_match_before"], results["exact_match_after"]
    print(f"held-out exact match {rate_before['rate']:.1%} -> {rate_after['rate']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
