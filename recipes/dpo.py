"""DPO on instruction constraints: "answer in one word", "reply in lowercase", "end with a question".

    OMP_NUM_THREADS=1 python recipes/dpo.py                        # defaults: see --help
    OMP_NUM_THREADS=1 python recipes/dpo.py --steps 3 --out /tmp/dpo.json   # a smoke run

The starting point is chapter 8's chatbot (:func:`gptlab.chat.load_chat_model`, the reference
model fine-tuned on ChatterBot by ``recipes/chat_model.py``). Each training question from the
ChatterBot split gets one of the constraints of :data:`gptlab.align.INSTRUCTIONS` appended;
the chatbot samples ``--samples`` replies to it, the constraint's verifier ranks them, and one
reply that follows the instruction (chosen) and one that does not (rejected) form a preference
pair. DPO then trains LoRA adapters on those pairs, with the LoRA-disabled chatbot as the
reference (no second copy of the weights). The baseline is supervised fine-tuning on the
chosen replies alone (same adapters, steps and learning rate). The script measures, on
held-out questions, how often the greedy reply follows each instruction before, after the
baseline and after DPO, with bootstrap intervals, and writes them, the training times, the
sampled KL to the chatbot and the history, as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import platform
import random
import sys
import time

import torch

from gptlab import __version__, applications, chat
from gptlab.align import (
    INSTRUCTIONS,
    PreferencePair,
    sampled_kl,
    sequence_logprobs,
    train_dpo,
)
from gptlab.align.tasks import (
    CHATBOT_SYSTEM,
    build_preference_pairs,
    chatterbot_questions,
    follow_rates,
    instruction_prompt,
    pooled_scores,
    rate_table,
)
from gptlab.evaluate import paired_bootstrap
from gptlab.lora import apply_lora
from gptlab.utils import atomic_write, round_floats, seed_everything

MAX_NEW_TOKENS = 24


def sft_on_chosen(model, pairs: list[PreferencePair], steps: int, lr: float) -> list[float]:
    """The baseline: maximise the likelihood of the chosen replies only (rejection sampling
    fine-tuning), with the same LoRA adapters, batch size and steps as DPO. Returns the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = random.Random(0)
    losses = []
    model.eval()  # as train_dpo: dropout off
    for _ in range(steps):
        batch = rng.sample(pairs, min(8, len(pairs)))
        out = sequence_logprobs(model, [p.prompt_ids for p in batch], [p.chosen_ids for p in batch])
        loss = -out.total.sum() / out.mask.sum()  # mean negative log-likelihood per reply token
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def examples(model, tok, test_questions: list[str]) -> dict[str, list[list[str]]]:
    """The greedy replies to the first three held-out questions, per instruction."""
    out = {}
    for instruction in INSTRUCTIONS:
        prompts = [instruction_prompt(q, instruction) for q in test_questions[:3]]
        replies = applications.greedy_replies(
            model, tok, prompts, system=CHATBOT_SYSTEM, max_new_tokens=MAX_NEW_TOKENS
        )
        out[instruction] = [[q, r] for q, r in zip(test_questions[:3], replies, strict=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="DPO steps (and baseline steps)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/dpo.json"))
    parser.add_argument("--questions", type=int, default=300, help="training questions")
    parser.add_argument("--n-test", type=int, default=60, help="held-out questions")
    parser.add_argument("--samples", type=int, default=8, help="replies sampled per question")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    seed_everything(0)

    model, tok = chat.load_chat_model()
    model.eval()
    train_q, test_q = chatterbot_questions(args.questions, args.n_test)
    before = follow_rates(model, tok, test_q, max_new_tokens=MAX_NEW_TOKENS)
    examples_before = examples(model, tok, test_q)

    started = time.perf_counter()
    pairs = build_preference_pairs(
        model, tok, train_q, samples=args.samples, max_new_tokens=MAX_NEW_TOKENS
    )
    pair_seconds = time.perf_counter() - started
    shown_pairs = [
        {
            "prompt": tok.decode(p.prompt_ids),
            "chosen": tok.decode(p.chosen_ids),
            "rejected": tok.decode(p.rejected_ids),
        }
        for p in pairs[:6]
    ]

    baseline = copy.deepcopy(model)
    apply_lora(baseline, r=8, alpha=16.0)
    started = time.perf_counter()
    baseline_losses = sft_on_chosen(baseline, pairs, args.steps, args.lr)
    baseline_seconds = time.perf_counter() - started
    after_baseline = follow_rates(baseline, tok, test_q, max_new_tokens=MAX_NEW_TOKENS)
    del baseline

    apply_lora(model, r=8, alpha=16.0)
    started = time.perf_counter()
    history = train_dpo(
        model, pairs, steps=args.steps, beta=args.beta, reference="lora", batch_size=8,
        lr=args.lr, warmup_steps=min(10, args.steps), checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=100 if args.checkpoint_dir else 0, tokenizer=tok,
    )  # fmt: skip
    dpo_seconds = time.perf_counter() - started
    after = follow_rates(model, tok, test_q, max_new_tokens=MAX_NEW_TOKENS)
    test_prompts = [
        chat.tokenize_conversation([instruction_prompt(q, instruction)], tok, CHATBOT_SYSTEM)[0]
        for instruction in INSTRUCTIONS
        for q in test_q[:20]
    ]
    kl = sampled_kl(model, test_prompts, "lora", samples_per_prompt=4,
                    max_new_tokens=MAX_NEW_TOKENS, eos_token_id=chat.end_token_id(tok))  # fmt: skip

    diff = paired_bootstrap(pooled_scores(after), pooled_scores(before), seed=0)
    vs_baseline = paired_bootstrap(pooled_scores(after), pooled_scores(after_baseline), seed=0)
    results = {
        "task": "instruction constraints, preference pairs ranked by verifiers",
        "command": " ".join(["python", "recipes/dpo.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },  # fmt: skip
        "system": CHATBOT_SYSTEM,
        "max_new_tokens": MAX_NEW_TOKENS,
        "pairs": len(pairs),
        "example_pairs": shown_pairs,
        "follow_rate_before": rate_table(before),
        "follow_rate_sft_on_chosen": rate_table(after_baseline),
        "follow_rate_after": rate_table(after),
        "improvement": {"estimate": diff.estimate, "low": diff.low, "high": diff.high},
        "dpo_minus_sft_on_chosen": {
            "estimate": vs_baseline.estimate,
            "low": vs_baseline.low,
            "high": vs_baseline.high,
        },  # fmt: skip
        "examples_before": examples_before,
        "examples_after": examples(model, tok, test_q),
        "sampled_kl_after": {"mean": kl.mean, "stderr": kl.stderr, "n": kl.n},
        "pair_seconds": pair_seconds,
        "dpo_seconds": dpo_seconds,
        "sft_on_chosen_seconds": baseline_seconds,
        "sft_on_chosen_losses": round_floats(baseline_losses),
        "final_reward_accuracy": history.reward_accuracy[-1],
        "history": round_floats(history.to_dict()),
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=1) + "\n")
    a, b = results["follow_rate_before"]["all"], results["follow_rate_after"]["all"]
    print(f"instructions followed {a['rate']:.1%} -> {b['rate']:.1%} ({len(pairs)} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
