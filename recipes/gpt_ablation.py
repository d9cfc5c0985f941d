"""Chapter 4's ablations: what each part of a GPT is worth, under one fixed CPU budget.

    OMP_NUM_THREADS=1 python recipes/gpt_ablation.py --steps 200 --seeds 3

The model and the training run are chapter 11's ablation baseline (``recipes/llama_ablation.py``:
:class:`gptlab.GPT` without biases, 2 blocks, 4 heads, width 128, 64-token windows of Shakespeare,
200 AdamW steps of 8 windows, the same seeds, initialisation and validation windows), so the two
tables share a baseline. One thing changes per variant:

* ``bigram``: no blocks at all; each token's logits come from its own embedding (a bigram model
  of rank 128, tied to the embedding table);
* ``no_wpe``: the position table is zero and frozen (no positional information but the mask's);
* ``no_sqrt_dk``: attention scores are not divided by ``sqrt(d_k)`` (the queries are multiplied
  by ``sqrt(d_k)``, which is the same thing);
* ``no_residual``: each block computes ``x = mlp(ln_2(attn(ln_1(x))))`` with no skip connections;
* ``lr_*``: the baseline at other peak learning rates (the baseline's is 2e-3).

It writes gptlab/assets/ablation/gpt_ablation.json: per run the first training losses (tests
re-run those steps), the validation loss on fixed windows, and seconds; per variant the mean over
seeds with a 95 % t-interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import sys
import time
import types
from typing import Any

import torch
import torch.nn as nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_ablation as base  # noqa: E402  (the shared baseline, training run and statistics)

from gptlab.reference import load_reference_tokenizer, reference_splits  # noqa: E402
from gptlab.train import evaluate, train  # noqa: E402
from gptlab.utils import atomic_write, provenance  # noqa: E402

OUT_FILE = base.OUT / "gpt_ablation.json"
LEARNING_RATES = {"lr_5e-4": 5e-4, "lr_8e-3": 8e-3, "lr_3e-2": 3e-2}
VARIANTS: dict[str, str] = {
    "gpt": "GPT (baseline, lr 2e-3)",
    "bigram": "bigram (no blocks)",
    "no_wpe": "no position table",
    "no_sqrt_dk": "no 1/sqrt(d_k)",
    "no_residual": "no residual connections",
    **{name: f"lr {lr:g}" for name, lr in LEARNING_RATES.items()},
}


def _no_residual_forward(self, x, kv_cache=None, layer_idx=0):  # noqa: ANN001, ANN202
    x = self.attn(self.ln_1(x), kv_cache=kv_cache, layer_idx=layer_idx)
    return self.mlp(self.ln_2(x))


def build(variant: str, vocab_size: int, seed: int) -> nn.Module:
    """The initialised model of ``variant`` (the baseline GPT with one part changed)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    model = base.initialise(base.build("gpt", vocab_size), seed)
    if variant == "bigram":
        model.transformer.h = nn.ModuleList()
    if variant in ("bigram", "no_wpe"):
        nn.init.zeros_(model.transformer.wpe.weight)
        model.transformer.wpe.weight.requires_grad_(False)
    if variant == "no_sqrt_dk":
        C, n_head = base.MODEL["n_embd"], base.MODEL["n_head"]
        factor = math.sqrt(C // n_head)

        def unscale(module, inputs, output):  # noqa: ANN001, ANN202
            return torch.cat((output[..., :C] * factor, output[..., C:]), dim=-1)

        for block in model.transformer.h:
            block.attn.c_attn.register_forward_hook(unscale)  # q·k / sqrt(d) -> q·k
    if variant == "no_residual":
        for block in model.transformer.h:
            block.forward = types.MethodType(_no_residual_forward, block)
    return model


def run(variant: str, seed: int, steps: int, train_ids, val_ids, vocab_size: int,
        *, stop_at: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train one variant; return parameters, training losses, seconds and the validation loss."""
    model = build(variant, vocab_size, seed)
    config = base.train_config(steps, seed)
    if variant in LEARNING_RATES:
        lr = LEARNING_RATES[variant]
        config = dataclasses.replace(config, lr=lr, min_lr=lr / 10)
    wall, cpu = time.perf_counter(), time.process_time()
    history = train(model, train_ids, None, config, stop_at=stop_at)
    result: dict[str, Any] = {
        "variant": variant,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_loss": history.train_loss,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }
    if val_ids is not None:
        result["val_loss"] = evaluate(
            model, val_ids, block_size=base.MODEL["block_size"], device="cpu", amp=False,
            **base.EVAL,
        )  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every variant")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--out", type=pathlib.Path, default=OUT_FILE, help="JSON file to write")
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    args = parser.parse_args(argv)
    chosen = args.variants.split(",")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.steps < base.TRAIN["warmup_steps"]:
        parser.error(f"--steps must be at least the warm-up, {base.TRAIN['warmup_steps']}")

    vocab_size = load_reference_tokenizer().vocab_size
    train_ids, val_ids = reference_splits()
    run("gpt", 0, args.steps, train_ids, None, vocab_size, stop_at=1)  # warm-up, not recorded
    runs = []
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for seed in range(args.seeds):
        for variant in chosen:
            r = run(variant, seed, args.steps, train_ids, val_ids, vocab_size)
            print(f"{variant:12} seed {seed}: val loss {r['val_loss']:.4f} "
                  f"({r['cpu_seconds']:.0f} CPU-s)", flush=True)  # fmt: skip
            curve = r["train_loss"][base.CURVE_EVERY - 1 :: base.CURVE_EVERY]
            runs.append({**r, "early_train_losses": r["train_loss"][: base.N_EARLY],
                         "train_curve": curve})  # fmt: skip
    variants = {}
    for name in chosen:
        mine = [r for r in runs if r["variant"] == name]
        variants[name] = {
            "label": VARIANTS[name],
            "parameters": mine[0]["parameters"],
            "val_loss": base.summarise([r["val_loss"] for r in mine]),
            "final_train_loss": base.summarise([r["train_loss"][-1] for r in mine]),
            "cpu_seconds_per_run": statistics.fmean(r["cpu_seconds"] for r in mine),
        }
    results = {
        "name": "chapter 4 ablation: one part of a GPT removed or changed at a time",
        **provenance(),
        "command": "OMP_NUM_THREADS=1 python recipes/gpt_ablation.py "
        f"--steps {args.steps} --seeds {args.seeds}",
        "hardware": args.hardware,
        "torch_threads": torch.get_num_threads(),
        "model": base.MODEL,
        "train": {**base.TRAIN, "steps": args.steps, "seeds": list(range(args.seeds)),
                  "tokens_per_run": args.steps * base.TRAIN["batch_size"] * base.MODEL["block_size"]},
        "eval": {**base.EVAL, "block_size": base.MODEL["block_size"], "split": "validation"},
        "early_steps": base.N_EARLY,
        "curve_every": base.CURVE_EVERY,
        "variants": variants,
        "runs": [{k: v for k, v in r.items() if k != "train_loss"} for r in runs],
        "total_wall_seconds": time.perf_counter() - start_wall,
        "total_cpu_seconds": time.process_time() - start_cpu,
    }  # fmt: skip
    with atomic_write(args.out, "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['total_cpu_seconds']:.0f} CPU-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
