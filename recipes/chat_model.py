"""Chapter 8's chatbot, shipped: the reference model fine-tuned on ChatterBot dialogues.

    OMP_NUM_THREADS=1 python recipes/chat_model.py      # about a minute on one thread

Chapter 8 fine-tunes the reference Shakespeare GPT on the deduplicated ChatterBot conversations
(leak-free split from ``gptlab.chat.split_conversations``; loss on the replies only; system
prompt "A friendly chatbot.") for 200 AdamW steps of 8 conversations, and then discards the
model when the notebook ends. This recipe runs exactly that fine-tuning (the same data, split,
settings and seeded batch order as the chapter's "masked" run) and writes the result to
``gptlab/assets/chat_model/`` in the reference model's layout (``model.safetensors``,
``tokenizer.json``, ``meta.json``, and ``manifest.json`` with every file's sha256 and the
measurements), so that ``gptlab.chat.load_chat_model()`` can load it, verified, for the report
card (``recipes/report_card.py``) and for ``python -m gptlab eval --model DIR``.
``tests/test_chat_model.py`` re-runs the first steps and checks them against the manifest.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import time
from typing import Any

import torch

from gptlab import chat
from gptlab.checkpoint import save_checkpoint
from gptlab.data import load_corpus
from gptlab.reference import MANIFEST_FILE, WEIGHTS_FILE, load_reference_model
from gptlab.utils import atomic_write, provenance, seed_everything, sha256_file

OUT = chat.CHAT_MODEL_DIR
SETTINGS: dict[str, Any] = {
    "steps": 200,
    "batch_size": 8,
    "lr": 1e-3,
    "warmup_steps": 10,
    "system": "A friendly chatbot.",
    "val_fraction": 0.1,
    "split_seed": 0,
}


def datasets(tokenizer: Any, block_size: int) -> tuple[chat.ChatDataset, chat.ChatDataset]:
    """Chapter 8's training and held-out sets: split_conversations deduplicates, keeps related
    conversations together and refuses a split in which a held-out exchange leaks."""
    conversations = load_corpus("chatterbot").documents
    train_docs, val_docs = chat.split_conversations(
        conversations, val_fraction=SETTINGS["val_fraction"], seed=SETTINGS["split_seed"]
    )
    system = SETTINGS["system"]
    train_set = chat.ChatDataset(
        [d.turns for d in train_docs], tokenizer, block_size, system=system
    )
    val_set = chat.ChatDataset([d.turns for d in val_docs], tokenizer, block_size, system=system)
    return train_set, val_set


def fine_tune(steps: int) -> tuple[torch.nn.Module, Any, chat.History]:
    """The reference model fine-tuned for ``steps`` of chapter 8's run (its first ``steps``)."""
    seed_everything(0)
    base, tokenizer = load_reference_model()
    model = copy.deepcopy(base).train()
    train_set, val_set = datasets(tokenizer, model.config.block_size)
    history = chat.finetune_chat(
        model,
        train_set,
        val_set,
        steps=steps,
        batch_size=SETTINGS["batch_size"],
        lr=SETTINGS["lr"],
        warmup_steps=SETTINGS["warmup_steps"],
        eval_interval=0,
        log_interval=0,
    )
    return model.eval(), tokenizer, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="output folder")
    args = parser.parse_args()
    wall, cpu = time.perf_counter(), time.process_time()
    model, tokenizer, history = fine_tune(SETTINGS["steps"])
    ours = {WEIGHTS_FILE, "tokenizer.json", "meta.json", MANIFEST_FILE}
    if args.out.exists():  # replace an earlier run of this recipe, and nothing else
        foreign = sorted(p.name for p in args.out.iterdir() if p.name not in ours)
        if foreign:
            raise SystemExit(f"{args.out} holds files this recipe did not write: {foreign}")
        for name in ours:
            (args.out / name).unlink(missing_ok=True)
    save_checkpoint(args.out, model, step=SETTINGS["steps"], history=history, tokenizer=tokenizer)
    files = {
        name: sha256_file(args.out / name) for name in (WEIGHTS_FILE, "tokenizer.json", "meta.json")
    }
    manifest = {
        "name": "gptlab-chatbot",
        "description": "The reference Shakespeare GPT fine-tuned for 200 steps on ChatterBot "
        "dialogues with a reply-only loss (chapter 8's chatbot).",
        **provenance(),
        "recipe": {"command": "OMP_NUM_THREADS=1 python recipes/chat_model.py"},
        "settings": SETTINGS,
        "parameters": model.num_parameters(),
        "results": {
            "first_train_losses": history.train_loss[:5],
            "val_reply_loss_before": history.val_loss[0],
            "val_reply_loss_after": history.val_loss[-1],
        },
        "script_wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "files": files,
    }
    with atomic_write(args.out / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    print(json.dumps(manifest["results"], indent=2))


if __name__ == "__main__":
    main()
