"""Chapter 11's ablation: GPT-2's architecture with Llama's parts swapped in one at a time.

    OMP_NUM_THREADS=1 python recipes/llama_ablation.py --steps 200 --seeds 3

Six small models learn Shakespeare (the reference model's tokenizer and splits) under one fixed
CPU budget: the same windows, the same number of steps, the same seeds, the same optimiser and
schedule (chapter 4's loop, :func:`gptlab.train.train`), the same initialisation rule:

* ``gpt``: :class:`gptlab.GPT` without biases (Llama has none, so biases are not what is tested);
* ``rmsnorm``: its LayerNorms replaced by :class:`gptlab.llama.RMSNorm`;
* ``swiglu``: its GELU MLPs replaced by Llama's SwiGLU MLP, ``8C // 3`` wide (same size);
* ``gqa``: its attention replaced by grouped-query attention with half as many KV heads;
* ``rope``: a :class:`gptlab.Llama` (RoPE, no position table) with the other three parts put
  back to GPT's, i.e. GPT with rotary positions instead of ``wpe``;
* ``llama``: :class:`gptlab.Llama` itself, all four; the parameters GQA saves go to the MLP
  (``3C`` wide, as Llama 2 did), so it stays within a few percent of GPT's size.

It writes gptlab/assets/ablation/llama_ablation.json: per run the first training losses
(chapter 11 re-runs those steps and compares), the final validation loss on fixed windows, wall
and CPU seconds; per variant the mean over seeds with a 95 % t-interval and the min-max range.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from gptlab.attention import CausalSelfAttention
from gptlab.llama import Llama, LlamaConfig, LlamaMLP, RMSNorm
from gptlab.model import GPT, MLP, GPTConfig
from gptlab.reference import load_reference_tokenizer, reference_splits
from gptlab.train import TrainConfig, evaluate, train
from gptlab.utils import atomic_write, provenance

OUT = pathlib.Path(__file__).resolve().parents[1] / "gptlab" / "assets" / "ablation"
OUT_FILE = OUT / "llama_ablation.json"

# The model body every variant shares, and the training run they all get.
MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 64}
N_KV_HEAD = 2  # grouped-query attention: two query heads share each key/value head
TRAIN = {
    "batch_size": 8,
    "lr": 2e-3,
    "min_lr": 2e-4,
    "warmup_steps": 20,
    "weight_decay": 0.1,
    "betas": [0.9, 0.99],
    "grad_clip": 1.0,
}
EVAL = {"batch_size": 16, "eval_iters": 20, "seed": 0}  # the same windows for every run
N_EARLY = 3  # first training losses recorded; the notebook re-runs these steps
CURVE_EVERY = 10  # the stored training curve keeps every 10th step's loss

VARIANTS: dict[str, str] = {
    "gpt": "GPT (no biases)",
    "rmsnorm": "+ RMSNorm",
    "rope": "+ RoPE",
    "swiglu": "+ SwiGLU",
    "gqa": "+ GQA",
    "llama": "Llama (all four)",
}
# Residual output projections: GPT-2 scales their initial weights by 1 / sqrt(2 * n_layer).
_RESIDUAL = ("c_proj.weight", "o_proj.weight", "down_proj.weight")
# 95 % two-sided Student t quantiles by degrees of freedom (n_seeds - 1).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def swiglu_hidden(n_embd: int) -> int:
    """SwiGLU width with the parameters of a 4x GELU MLP: ``3·C·h = 8·C²`` gives ``h = 8C/3``,
    truncated as Llama's code does (exercise 11.5)."""
    return 8 * n_embd // 3


def _gpt_config(vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, bias=False, **MODEL)


def _llama_config(vocab_size: int, n_kv_head: int, intermediate_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        block_size=MODEL["block_size"],
        n_layer=MODEL["n_layer"],
        n_head=MODEL["n_head"],
        n_kv_head=n_kv_head,
        n_embd=MODEL["n_embd"],
        intermediate_size=intermediate_size,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )


def build(variant: str, vocab_size: int) -> nn.Module:
    """The untrained model of ``variant`` (one of :data:`VARIANTS`), before :func:`initialise`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    C, n_head = MODEL["n_embd"], MODEL["n_head"]
    if variant == "llama":
        return Llama(_llama_config(vocab_size, N_KV_HEAD, 3 * C))
    if variant == "rope":  # Llama with GPT's norm, MLP and multi-head attention put back
        model = Llama(_llama_config(vocab_size, n_head, swiglu_hidden(C)))
        gpt_mlp = _gpt_config(vocab_size)
        for layer in model.model.layers:
            layer.input_layernorm = nn.LayerNorm(C, bias=False)
            layer.post_attention_layernorm = nn.LayerNorm(C, bias=False)
            layer.mlp = MLP(gpt_mlp)
        model.model.norm = nn.LayerNorm(C, bias=False)
        return model
    model = GPT(_gpt_config(vocab_size))
    for block in model.transformer.h:
        if variant == "rmsnorm":
            block.ln_1, block.ln_2 = RMSNorm(C), RMSNorm(C)
        elif variant == "swiglu":
            block.mlp = LlamaMLP(_llama_config(vocab_size, n_head, swiglu_hidden(C)))
        elif variant == "gqa":
            block.attn = CausalSelfAttention(C, n_head, bias=False, n_kv_head=N_KV_HEAD)
    if variant == "rmsnorm":
        model.transformer.ln_f = RMSNorm(C)
    return model


@torch.no_grad()
def initialise(model: nn.Module, seed: int) -> nn.Module:
    """GPT-2's rule for every variant alike: N(0, 0.02) weights, residual projections / sqrt(2L),
    norm gains 1. ``seed`` fixes the draw, so a run is reproducible."""
    torch.manual_seed(seed)
    std_residual = 0.02 / math.sqrt(2 * MODEL["n_layer"])
    for name, p in model.named_parameters():  # a tied tensor appears once
        if p.dim() == 1:
            nn.init.ones_(p)  # LayerNorm / RMSNorm gains (no biases anywhere)
        else:
            nn.init.normal_(p, 0.0, std_residual if name.endswith(_RESIDUAL) else 0.02)
    return model


def train_config(steps: int, seed: int) -> TrainConfig:
    """The one training configuration every variant gets."""
    return TrainConfig(
        block_size=MODEL["block_size"], max_steps=steps, seed=seed, eval_interval=0,
        device="cpu", amp=False, progress=False,
        **{**TRAIN, "betas": tuple(TRAIN["betas"])},
    )  # fmt: skip


def run(
    variant: str,
    seed: int,
    steps: int,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor | None,
    vocab_size: int,
    *,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train one variant for ``steps`` steps (or only the first ``stop_at`` of that schedule).

    Returns the parameter count, the training losses, wall and CPU seconds and, when ``val_ids``
    is given, the validation loss on :data:`EVAL`'s fixed windows.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < TRAIN["warmup_steps"]:
        raise ValueError(
            f"steps must be an int >= {TRAIN['warmup_steps']} (the warm-up), got {steps!r}"
        )
    model = initialise(build(variant, vocab_size), seed)
    wall, cpu = time.perf_counter(), time.process_time()
    history = train(model, train_ids, None, train_config(steps, seed), stop_at=stop_at)
    result: dict[str, Any] = {
        "variant": variant,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_loss": history.train_loss,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }
    if val_ids is not None:
        result["val_loss"] = evaluate(
            model, val_ids, block_size=MODEL["block_size"], device="cpu", amp=False, **EVAL
        )
    return result


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Mean over seeds, sample std, a 95 % Student-t interval (None for one seed), min and max."""
    if not values:
        raise ValueError("summarise needs at least one value (one seed)")
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    half = None
    if std is not None:
        half = _T95.get(len(values) - 1, 1.96) * std / math.sqrt(len(values))
    return {
        "mean": mean,
        "std": std,
        "ci95": None if half is None else [mean - half, mean + half],
        "min": min(values),
        "max": max(values),
        "per_seed": list(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every variant")
    parser.add_argument("--out", type=pathlib.Path, default=OUT_FILE, help="JSON file to write")
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.steps < TRAIN["warmup_steps"]:
        parser.error(f"--steps must be at least the warm-up, {TRAIN['warmup_steps']}")

    tokenizer = load_reference_tokenizer()
    train_ids, val_ids = reference_splits()
    vocab_size = tokenizer.vocab_size
    load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    run("gpt", 0, args.steps, train_ids, None, vocab_size, stop_at=1)  # warm-up, not recorded:
    # one-time costs (allocator, kernels) would otherwise land on the first run's timing
    runs = []
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for seed in range(args.seeds):
        for variant in VARIANTS:
            r = run(variant, seed, args.steps, train_ids, val_ids, vocab_size)
            print(
                f"{variant:8} seed {seed}: val loss {r['val_loss']:.4f} "
                f"({r['parameters']:,} parameters, {r['cpu_seconds']:.0f} CPU-s)",
                flush=True,
            )
            curve = r["train_loss"][CURVE_EVERY - 1 :: CURVE_EVERY]  # loss after 10, 20, ... steps
            runs.append(
                {**r, "early_train_losses": r["train_loss"][:N_EARLY], "train_curve": curve}
            )
    gpt_params = next(r["parameters"] for r in runs if r["variant"] == "gpt")
    variants = {}
    for name, label in VARIANTS.items():
        mine = [r for r in runs if r["variant"] == name]
        variants[name] = {
            "label": label,
            "parameters": mine[0]["parameters"],
            "parameters_vs_gpt": round(mine[0]["parameters"] / gpt_params - 1, 4),
            "val_loss": summarise([r["val_loss"] for r in mine]),
            "final_train_loss": summarise([r["train_loss"][-1] for r in mine]),
            "wall_seconds_per_run": statistics.fmean(r["wall_seconds"] for r in mine),
            "cpu_seconds_per_run": statistics.fmean(r["cpu_seconds"] for r in mine),
        }
    tokens = args.steps * TRAIN["batch_size"] * MODEL["block_size"]
    results = {
        "name": "chapter 11 ablation: GPT-2 with one Llama part swapped in at a time",
        **provenance(),
        "command": "OMP_NUM_THREADS=1 python recipes/llama_ablation.py "
        f"--steps {args.steps} --seeds {args.seeds}",
        "hardware": args.hardware,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average,
        "data": {
            "corpus": "shakespeare",
            "tokenizer": "reference (byte-level BPE)",
            "vocab_size": vocab_size,
            "train_tokens": len(train_ids),
            "val_tokens": len(val_ids),
            "tokens_per_run": tokens,
        },  # fmt: skip
        "model": {
            **MODEL,
            "n_kv_head_gqa": N_KV_HEAD,
            "swiglu_hidden": swiglu_hidden(MODEL["n_embd"]),
            "llama_intermediate_size": 3 * MODEL["n_embd"],
        },  # fmt: skip
        "train": {**TRAIN, "steps": args.steps, "seeds": list(range(args.seeds))},
        "eval": {**EVAL, "block_size": MODEL["block_size"], "split": "validation"},
        "early_steps": N_EARLY,
        "curve_every": CURVE_EVERY,
        "variants": variants,
        "runs": [{k: v for k, v in r.items() if k != "train_loss"} for r in runs],
        "total_wall_seconds": time.perf_counter() - start_wall,
        "total_cpu_seconds": time.process_time() - start_cpu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['total_cpu_seconds']:.0f} CPU-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
