"""DPO on instruction constraints: "answer in one word", "reply in lowercase", "end with a question".

    OMP_NUM_THREADS=1 python recipes/dpo.py                        # defaults: see --help
    OMP_NUM_THREADS=1 python recipes/dpo.py --steps 3 --out /tmp/dpo.json   # a smoke run

Starting from the reference model, a short supervised fine-tune on ChatterBot conversations
(``--sft-steps``, the chapter-8 recipe) gives a chatbot. Each training question from the
ChatterBot split gets one of the constraints of :data:`gptlab.align.INSTRUCTIONS` appended;
the chatbot samples ``--samples`` replies to it, the constraint's verifier ranks them, and one
reply that follows the instruction (chosen) and one that does not (rejected) form a preference
pair. DPO then trains LoRA adapters on those pairs, with the LoRA-disabled chatbot as the
reference (no second copy of the weights). The script measures, on held-out questions, how
often the greedy reply follows each instruction before and after, with bootstrap intervals,
and writes them, the training time and the KL to the chatbot, as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import random
import sys
import time

import torch

from gptlab import __version__, applications, chat
from gptlab.align import INSTRUCTIONS, PreferencePair, sample_group, train_dpo
from gptlab.data import load_corpus
from gptlab.evaluate import bootstrap_ci, paired_bootstrap
from gptlab.lora import apply_lora
from gptlab.reference import load_reference_model
from gptlab.utils import atomic_write, seed_everything

MAX_NEW_TOKENS = 24


def questions(n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Distinct short first user messages of ChatterBot's leak-free (train, test) split."""
    train, test = chat.split_conversations(load_corpus("chatterbot").documents, 0.1, seed=0)

    def firsts(docs: list, n: int) -> list[str]:
        seen = dict.fromkeys(d.turns[0].strip() for d in docs if len(d.turns[0]) <= 60)
        return list(seen)[:n]

    return firsts(train, n_train), firsts(test, n_test)


def constrained(question: str, instruction: str) -> str:
    return f"{question} {instruction}"


def follow_rates(model, tok, test_questions: list[str]) -> dict[str, list[float]]:
    """Per instruction: 1.0/0.0 per held-out question, does the greedy reply follow it."""
    out = {}
    for instruction, check in INSTRUCTIONS.items():
        prompts = [constrained(q, instruction) for q in test_questions]
        replies = applications.greedy_replies(model, tok, prompts, max_new_tokens=MAX_NEW_TOKENS)
        out[instruction] = [check(r, None) for r in replies]
    return out


def build_pairs(model, tok, train_questions: list[str], samples: int) -> list[PreferencePair]:
    """Sample replies, rank them by the instruction's verifier, pair a pass with a fail."""
    eos = chat.end_token_id(tok)
    rng = random.Random(0)
    generator = torch.Generator().manual_seed(0)
    pairs = []
    for i, question in enumerate(train_questions):
        instruction = list(INSTRUCTIONS)[i % len(INSTRUCTIONS)]
        prompt = chat.tokenize_conversation([constrained(question, instruction)], tok)[0]
        replies = sample_group(model, prompt, samples, MAX_NEW_TOKENS, eos_token_id=eos,
                               generator=generator)  # fmt: skip
        passed, failed = [], []
        for ids in replies:
            text = tok.decode([t for t in ids if t != eos]).strip()
            (passed if INSTRUCTIONS[instruction](text, None) else failed).append(ids)
        if passed and failed:
            pairs.append(PreferencePair(prompt, rng.choice(passed), rng.choice(failed)))
    if not pairs:
        raise RuntimeError(
            "no question got both a reply that follows its instruction and one that does not; "
            "raise --samples or --questions"
        )
    return pairs


def interval(scores: list[float]) -> dict[str, float]:
    ci = bootstrap_ci(scores, seed=0)
    return {"rate": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="DPO steps")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/dpo.json"))
    parser.add_argument("--sft-steps", type=int, default=300, help="chat SFT before DPO")
    parser.add_argument("--questions", type=int, default=300, help="training questions")
    parser.add_argument("--n-test", type=int, default=60, help="held-out questions")
    parser.add_argument("--samples", type=int, default=8, help="replies sampled per question")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--checkpoint-dir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    seed_everything(0)

    model, tok = load_reference_model()
    train_q, test_q = questions(args.questions, args.n_test)
    train_docs, _ = chat.split_conversations(load_corpus("chatterbot").documents, 0.1, seed=0)
    started = time.perf_counter()
    sft_set = chat.ChatDataset([d.turns for d in train_docs], tok, model.config.block_size)
    chat.finetune_chat(model, sft_set, steps=args.sft_steps, batch_size=16, lr=1e-3,
                       warmup_steps=min(20, args.sft_steps))  # fmt: skip
    sft_seconds = time.perf_counter() - started
    before = follow_rates(model, tok, test_q)

    started = time.perf_counter()
    pairs = build_pairs(model, tok, train_q, args.samples)
    pair_seconds = time.perf_counter() - started
    apply_lora(model, r=8, alpha=16.0)
    started = time.perf_counter()
    history = train_dpo(
        model, pairs, steps=args.steps, beta=args.beta, reference="lora", batch_size=8,
        lr=args.lr, warmup_steps=min(10, args.steps), checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=100 if args.checkpoint_dir else 0, tokenizer=tok,
    )  # fmt: skip
    dpo_seconds = time.perf_counter() - started
    after = follow_rates(model, tok, test_q)

    def overall(rates: dict[str, list[float]]) -> list[float]:
        return [s for scores in rates.values() for s in scores]

    diff = paired_bootstrap(overall(after), overall(before), seed=0)
    results = {
        "task": "instruction constraints, preference pairs ranked by verifiers",
        "command": " ".join(["python", "recipes/dpo.py", *(argv or sys.argv[1:])]),
        "settings": {
            k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()
        },  # fmt: skip
        "pairs": len(pairs),
        "follow_rate_before": {k: interval(v) for k, v in before.items()}
        | {"all": interval(overall(before))},
        "follow_rate_after": {k: interval(v) for k, v in after.items()}
        | {"all": interval(overall(after))},
        "improvement": {"estimate": diff.estimate, "low": diff.low, "high": diff.high},
        "sft_seconds": sft_seconds,
        "pair_seconds": pair_seconds,
        "dpo_seconds": dpo_seconds,
        "final_kl": history.kl[-1],
        "final_reward_accuracy": history.reward_accuracy[-1],
        "history": history.to_dict(),
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    a, b = results["follow_rate_before"]["all"], results["follow_rate_after"]["all"]
    print(f"instructions followed {a['rate']:.1%} -> {b['rate']:.1%} ({len(pairs)} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
