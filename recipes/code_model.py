"""Train chapter 9's code model: a small GPT on the Python standard library, on a CPU.

    OMP_NUM_THREADS=1 python recipes/code_model.py                 # ~30 CPU-minutes, resumable
    OMP_NUM_THREADS=1 python recipes/code_model.py --measure-only  # re-measure the shipped model

writes gptlab/assets/code_model/ (weights, tokenizer, meta.json, manifest.json with the
measurements below and every file's sha256), which ``gptlab.applications.load_code_model()``
loads and checks. Steps:

1. the ``python-stdlib`` corpus without its data tables (``encodings``, ``pydoc_data``), split
   by file: 5 % of the modules (seeded) are held out, so validation code was never seen;
2. a 2,048-token byte-level BPE tokenizer trained on the training files;
3. a 4-layer, 128-wide GPT (1.1M parameters, 4.4 MB of float32 weights: small enough to ship)
   trained with ``gptlab.train`` (AdamW, warm-up + cosine), checkpointed every 250 steps into
   ``runs/code_model`` so an interrupted run resumes where it stopped;
4. measured: validation loss and bits per character, and the share of 500 sampled functions
   (prompt ``"\\n\\ndef"``, temperature 0.5, 250 new tokens, cut at the next top-level
   statement) that ``ast.parse`` accepts, the same for the untrained model (same architecture,
   random weights), and the parse rate at other temperatures and with the bare prompt
   ``"def "``.

``--measure-only`` repeats step 4 on the shipped model and rewrites only the manifest's
``"results"`` (the weights, and so the hashes, stay the same).

The corpus is the standard library of the interpreter that runs the script, so the files (and
with them the exact numbers) depend on the Python version; manifest.json records it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import pathlib
import shutil
import sys
import time

import torch

from gptlab.applications import (
    CODE_MODEL_DIR,
    load_code_model,
    parse_rate,
    sample_functions,
    stdlib_code_split,
)
from gptlab.model import GPT, GPTConfig
from gptlab.reference import MANIFEST_FILE, sha256_file
from gptlab.tokenizers import BPETokenizer
from gptlab.train import (
    META_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    TrainConfig,
    evaluate,
    save_checkpoint,
    train,
)
from gptlab.utils import atomic_write, provenance, seed_everything

VOCAB_SIZE = 2048
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=256, dropout=0.0)
SAMPLING = dict(n=500, prompt="\n\ndef", max_new_tokens=250, temperature=0.5, seed=0)
TEMPERATURES = (0.2, 0.5, 0.8, 1.0)


def measure(model: GPT, untrained: GPT, tokenizer: BPETokenizer, val_text: str) -> dict:
    """Step 4: held-out loss, and the parse rates of sampled functions (see the docstring)."""
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    val_loss = evaluate(model, val_ids, batch_size=32, block_size=MODEL["block_size"],
                        eval_iters=50, seed=12, amp=False)  # fmt: skip
    chars_per_token = len(val_text) / len(val_ids)
    snippets = sample_functions(model, tokenizer, **SAMPLING)
    by_temperature = {
        str(t): parse_rate(sample_functions(model, tokenizer, **{**SAMPLING, "temperature": t}))
        for t in TEMPERATURES
    }
    bare = parse_rate(sample_functions(model, tokenizer, **{**SAMPLING, "prompt": "def "}))
    return {
        "val_loss": round(val_loss, 4),
        "val_bits_per_char": round(val_loss / chars_per_token / math.log(2), 4),
        "sampling": SAMPLING,
        "parse_rate": parse_rate(snippets),
        "finished_rate": sum(s is not None for s in snippets) / len(snippets),
        "parse_rate_untrained": parse_rate(sample_functions(untrained, tokenizer, **SAMPLING)),
        "parse_rate_by_temperature": by_temperature,
        "parse_rate_prompt_def_space": bare,
    }


def measure_only(out: pathlib.Path) -> int:
    """Re-measure the shipped model and rewrite the manifest's results (nothing else)."""
    seed_everything(0)
    untrained = GPT(GPTConfig(vocab_size=VOCAB_SIZE, **MODEL))  # as main() draws it
    model, tokenizer = load_code_model(directory=out)
    _, val_docs = stdlib_code_split()
    results = measure(model, untrained, tokenizer, "\n".join(d.text for d in val_docs))
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["results"] = results
    manifest["measured"] = datetime.date.today().isoformat()
    with atomic_write(out / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    print(json.dumps(results, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=CODE_MODEL_DIR)
    parser.add_argument("--run", type=pathlib.Path, default=pathlib.Path("runs/code_model"))
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    parser.add_argument("--measure-only", action="store_true", help="re-measure the shipped model")
    args = parser.parse_args(argv)
    if args.measure_only:
        return measure_only(args.out)
    seed_everything(0)
    wall = time.perf_counter()

    train_docs, val_docs = stdlib_code_split()
    train_text = "\n".join(d.text for d in train_docs)
    val_text = "\n".join(d.text for d in val_docs)
    tokenizer_path = args.run / "tokenizer.json"
    if tokenizer_path.exists():
        tokenizer = BPETokenizer.load(tokenizer_path)
    else:
        tokenizer = BPETokenizer.train(train_text, VOCAB_SIZE)
        args.run.mkdir(parents=True, exist_ok=True)
        tokenizer.save(tokenizer_path)
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    print(f"{len(train_docs)} training files ({len(train_ids):,} tokens), {len(val_docs)} held out")

    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **MODEL))
    untrained = copy.deepcopy(model)
    cfg = TrainConfig(
        batch_size=32, block_size=MODEL["block_size"], max_steps=args.max_steps, lr=3e-3,
        min_lr=3e-4, warmup_steps=min(100, args.max_steps), weight_decay=0.1, eval_interval=250, eval_iters=10,
        seed=1337, device="cpu", amp=False, checkpoint_dir=str(args.run / "checkpoint"),
        checkpoint_interval=250, progress=True,
    )  # fmt: skip
    resume = args.run / "checkpoint"
    resuming = (resume / META_FILE).exists()
    first_step = json.loads((resume / META_FILE).read_text())["step"] if resuming else 0
    train_cpu = time.process_time()
    history = train(
        model, train_ids, val_ids, cfg, tokenizer=tokenizer,
        resume_from=resume if resuming else None,
    )  # fmt: skip
    # An interrupted run resumes from its last checkpoint; the CPU time of the steps run by this
    # process, per step, estimates the whole run's.
    cpu_per_step = (time.process_time() - train_cpu) / max(1, args.max_steps - first_step)
    model.eval()

    results = measure(model, untrained, tokenizer, val_text)

    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, model, step=history.steps[-1] if history.steps else 0,
                    train_config=cfg, history=history, tokenizer=tokenizer)  # fmt: skip
    shutil.rmtree(args.out / "__pycache__", ignore_errors=True)
    files = {
        name: sha256_file(args.out / name) for name in (WEIGHTS_FILE, TOKENIZER_FILE, META_FILE)
    }
    manifest = {
        "name": "gptlab-code-stdlib",
        "description": "A 4-layer GPT trained from scratch on the Python standard library (no "
        "tests, no encodings/pydoc_data tables) with a 2,048-token BPE tokenizer, on a CPU.",
        **provenance(),
        "recipe": {"command": "OMP_NUM_THREADS=1 python recipes/code_model.py"},
        "hardware": args.hardware,
        "resumed_from_step": first_step,
        "script_wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds_per_step": round(cpu_per_step, 3),
        "training_cpu_seconds": round(cpu_per_step * args.max_steps, 1),
        "parameters": model.num_parameters(),
        "model_config": model.config.to_dict(),
        "data": {
            "corpus": "python-stdlib",
            "train_files": len(train_docs),
            "val_files": len(val_docs),
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "tokens_seen": history.tokens_seen[-1] if history.tokens_seen else 0,
        },
        "results": results,
        "files": files,
    }
    with atomic_write(args.out / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    print(json.dumps(manifest["results"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
