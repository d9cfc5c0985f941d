"""Training-step throughput: gptlab.GPT against transformers' GPT2LMHeadModel, same everything.

Both models get the same configuration and the same initial weights (gptlab's, converted with
save_hf_gpt2), the same batch, the same loss over the same positions, and the same optimizer
(torch AdamW, one group, weight decay 0.1). A training step is forward + backward + AdamW step.
Steps are timed alternately (gptlab, transformers, gptlab, ...) on one thread, and the median
step is reported as tokens per second of *CPU time* (``time.process_time``): on a shared machine
wall-clock time mostly measures the neighbours, CPU time measures the work. Wall-clock ratios
are printed too. The first-step losses are compared to prove both compute the same thing.
Writes benchmarks/results_train.md.

    python benchmarks/bench_train.py              # about a minute on one idle CPU core

Two vocabularies are timed: GPT-2's 50,257 tokens (for a model this small the output layer and
the softmax over the vocabulary dominate the step, and that work is identical in both
libraries) and 65 characters (the Transformer blocks dominate).
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import transformers
from transformers import GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from gptlab.model import GPT, GPTConfig
from gptlab.pretrained import save_hf_gpt2
from gptlab.utils import atomic_write

RESULTS = pathlib.Path(__file__).with_name("results_train.md")


def hf_twin(model: GPT) -> GPT2LMHeadModel:
    """The same network and weights as a transformers GPT2LMHeadModel (SDPA attention, no cache)."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_gpt2(model, tmp)
        hf = GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")
    hf.config.use_cache = False  # a training step needs no KV cache
    return hf.train()


def make_step(model: torch.nn.Module, forward: Callable[[], torch.Tensor]) -> Callable[[], float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step() -> float:
        loss = forward()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def compare(config: GPTConfig, batch_size: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    ours = GPT(config).train()
    theirs = hf_twin(ours)
    T = config.block_size
    data = torch.randint(
        config.vocab_size, (batch_size, T + 1), generator=torch.Generator().manual_seed(1)
    )
    x, y = data[:, :T].contiguous(), data[:, 1:].contiguous()
    # transformers shifts labels itself; shift_labels=y makes it score the same T positions as we do
    step_ours = make_step(ours, lambda: ours(x, y)[1])
    step_theirs = make_step(theirs, lambda: theirs(input_ids=x, labels=y, shift_labels=y).loss)

    loss_ours, loss_theirs = step_ours(), step_theirs()  # also the warm-up step
    if abs(loss_ours - loss_theirs) > 1e-4:
        raise AssertionError(f"not the same computation: losses {loss_ours} vs {loss_theirs}")
    step_ours(), step_theirs()  # second warm-up: AdamW state exists now
    cpu: dict[str, list[float]] = {"gptlab": [], "transformers": []}
    wall: dict[str, list[float]] = {"gptlab": [], "transformers": []}
    for _ in range(steps):
        for name, step in (("gptlab", step_ours), ("transformers", step_theirs)):
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            step()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
    tokens = batch_size * T
    result = {name: tokens / statistics.median(ts) for name, ts in cpu.items()}
    result["wall_ratio"] = statistics.median(wall["transformers"]) / statistics.median(
        wall["gptlab"]
    )
    result["loss_diff"] = abs(loss_ours - loss_theirs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=4, help="timed steps per model and configuration"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    base = dict(n_layer=4, n_head=4, n_embd=256, block_size=128, dropout=0.0)
    configs = {
        "GPT-2 vocabulary (50,257)": GPTConfig(vocab_size=50257, **base),
        "character vocabulary (65)": GPTConfig(vocab_size=65, **base),
    }
    rows = []
    for label, config in configs.items():
        r = compare(config, args.batch_size, args.steps)
        ratio = r["gptlab"] / r["transformers"]
        rows.append((label, r["gptlab"], r["transformers"], ratio, r["wall_ratio"], r["loss_diff"]))
        print(
            f"{label:26s} gptlab {r['gptlab']:7.0f} tok/s  transformers {r['transformers']:7.0f} tok/s  "
            f"ratio {ratio:.2f}x (wall {r['wall_ratio']:.2f}x)  first-step loss diff {r['loss_diff']:.1e}"
        )

    shape = ", ".join(f"{k}={v}" for k, v in base.items())
    lines = [
        "# Training step: gptlab.GPT vs transformers.GPT2LMHeadModel",
        "",
        "Generated by `python benchmarks/bench_train.py` (one run; numbers vary with machine load).",
        "",
        f"- model: {shape}; batch {args.batch_size} x {base['block_size']} tokens; forward + backward + AdamW",
        f"- same initial weights, same batch, same loss positions; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {torch.get_num_threads()} CPU thread(s), "
        f"{platform.processor() or platform.machine()}",
        f"- median of {args.steps} steps each, measured alternately; tokens per second of CPU time "
        "(the wall-clock ratio is shown for comparison)",
        "",
        "| configuration | gptlab tok/s | transformers tok/s | ratio | wall-clock ratio | first-step loss diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {lab} | {a:.0f} | {b:.0f} | {r:.2f}x | {w:.2f}x | {d:.1e} |"
        for lab, a, b, r, w, d in rows
    ]
    with atomic_write(RESULTS, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
