"""Chapter 9's fine-tuning run, ten times longer: the measurements behind its "longer run" rows.

    OMP_NUM_THREADS=1 python recipes/assistant.py            # about 6 CPU-minutes

Section 9.4 of notebooks/09_applications.ipynb fine-tunes the reference model for 150 steps on
a mixture of Django's English -> French strings ("Translate into French.") and ChatterBot
conversations (an assistant system prompt), repeated three and two times (``REPEATS``) so both
tasks get about half of the steps. ChatterBot is split with
:func:`gptlab.chat.split_conversations`: deduplicated, and no held-out exchange occurs in
training (a random split of the raw corpus put copies of 118 of its 201 held-out conversations
into training). This script runs exactly that for 1,500 steps (the notebook's ``SCALE = 10``)
and measures what the notebook measures: held-out reply losses before and after, chrF /
script / placeholders on the held-out French strings against the copy and un-tuned
baselines, a few translations, and the notebook's multi-turn conversation. It writes only
those results (gptlab/assets/applications/assistant_run.json, a few KB): the fine-tuned
weights (10 MB) are not shipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time

import torch

from gptlab import applications, chat
from gptlab.data import load_corpus, split_documents
from gptlab.reference import load_reference_model
from gptlab.utils import atomic_write, provenance, seed_everything

OUT = pathlib.Path(applications.__file__).resolve().parent / "assets" / "applications"
SYSTEM = {
    "fr": "Translate into French.",
    "chat": "You are a friendly assistant. Answer in a sentence or two.",
}
CHAT_MESSAGES = ["Hello", "What is your name?", "Do you like books?", "Tell me a joke."]
REPEATS = {"fr": 3, "chat": 2}  # copies of each task's training set in the mixture


def chat_split() -> tuple[list, list]:
    """The ChatterBot (train, test) conversations of chapter 9: deduplicated, nothing leaks."""
    return chat.split_conversations(load_corpus("chatterbot").documents, 0.1, seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=pathlib.Path, default=OUT / "assistant_run.json")
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    args = parser.parse_args(argv)
    seed_everything(0)
    wall, cpu = time.perf_counter(), time.process_time()

    model, tok = load_reference_model()
    block = model.config.block_size
    short = [d for d in load_corpus("django-translations").documents
             if d.genre == "fr" and len(d.turns[0]) <= 60]  # fmt: skip
    tr_train, tr_test = split_documents(short, val_fraction=0.1, seed=0)
    test_pairs = [d.turns for d in tr_test]
    chat_train, chat_test = chat_split()

    def dataset(conversations: list, task: str) -> chat.ChatDataset:
        return chat.ChatDataset(conversations, tok, block, system=SYSTEM[task])

    fr_train = dataset([d.turns for d in tr_train], "fr")
    chat_train_set = dataset([d.turns for d in chat_train], "chat")
    mixture = applications.merge_chat_datasets(
        *[fr_train] * REPEATS["fr"], *[chat_train_set] * REPEATS["chat"]
    )
    tests = {"fr": dataset(test_pairs, "fr"), "chat": dataset([d.turns for d in chat_test], "chat")}

    sources = [src for src, _ in test_pairs]
    references = [ref for _, ref in test_pairs]

    def scores(outputs: list[str]) -> dict[str, float]:
        return {
            "chrf": round(applications.chrf(outputs, references), 2),
            "script_rate": round(applications.script_rate(outputs, "latin"), 4),
            "placeholder_rate": round(applications.placeholder_rate(sources, outputs), 4),
            "exact_match": round(applications.exact_match(outputs, references), 4),
        }

    def translate(m: torch.nn.Module) -> list[str]:
        return applications.greedy_replies(m, tok, sources, system=SYSTEM["fr"], max_new_tokens=40)

    before = {task: chat.evaluate_chat(model, part) for task, part in tests.items()}
    untuned = scores(translate(model))
    tuned = copy.deepcopy(model)
    history = chat.finetune_chat(
        tuned, mixture, steps=args.steps, batch_size=16, lr=1e-3, warmup_steps=min(10, args.steps),
        log_interval=100,
    )  # fmt: skip
    after = {task: chat.evaluate_chat(tuned, part) for task, part in tests.items()}
    outputs = translate(tuned)
    session = chat.ChatSession(tuned, tok, system=SYSTEM["chat"], max_new_tokens=32,
                               repetition_penalty=1.3)  # fmt: skip
    for message in CHAT_MESSAGES:
        session.send(message)

    results = {
        "name": "chapter 9 fine-tuning run (reference model, French strings + ChatterBot)",
        **provenance(),
        "command": "OMP_NUM_THREADS=1 python recipes/assistant.py",
        "hardware": args.hardware,
        "steps": args.steps,
        "chat_split": "chat.split_conversations(load_corpus('chatterbot').documents, 0.1, seed=0)",
        "batch_size": 16,
        "examples": {
            "fr_train": len(fr_train),
            "chat_train": len(chat_train_set),
            "repeats": REPEATS,
            "mixture": len(mixture),
            "fr_test": len(tests["fr"]),
            "chat_test": len(tests["chat"]),
        },  # fmt: skip
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "final_train_loss": round(history.train_loss[-1], 4),
        "reply_loss_before": {k: round(v, 4) for k, v in before.items()},
        "reply_loss_after": {k: round(v, 4) for k, v in after.items()},
        "translation": {
            "copy": scores(sources),
            "untuned": untuned,
            "tuned": scores(outputs),
        },
        "examples_fr": [[s, r, o] for s, r, o in zip(sources, references, outputs, strict=True)][
            :10
        ],
        "transcript": session.transcript(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    print(json.dumps({k: results[k] for k in ("reply_loss_after", "translation")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
