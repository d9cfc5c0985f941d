"""How much does the KV cache buy, and how does gptlab's generate compare with transformers'?

One run times greedy generation of 256 new tokens on a small but realistic GPT, the shape of
the book's character-level Shakespeare model (nanoGPT's shakespeare-char: 6 layers, 6 heads,
384 wide, 65 symbols, 10.7M parameters), three ways: gptlab without the cache (re-run
the whole sequence every step), gptlab with the cache, and transformers' GPT2LMHeadModel.generate
(greedy, use_cache) on the same weights, loaded through save_hf_gpt2. Prints tokens/s and the
ratios, and writes them to benchmarks/results_generate.md.

    python benchmarks/bench_generate.py            # 1-2 minutes on one CPU core
    python benchmarks/bench_generate.py --smollm2  # also SmolLM2-135M, float32 and bf16 (~5 min)

With ``--smollm2`` it also times gptlab against transformers on the real SmolLM2-135M-Instruct
weights (gptlab.load_pretrained; transformers loads the same dequantised weights through
save_hf_llama), greedy, batch 1, in float32 and bfloat16.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import transformers
from transformers import GPT2LMHeadModel, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from gptlab.model import GPT, GPTConfig
from gptlab.pretrained import load_pretrained, save_hf_gpt2, save_hf_llama
from gptlab.sampling import generate
from gptlab.utils import atomic_write

RESULTS = pathlib.Path(__file__).with_name("results_generate.md")


def best_seconds(
    fns: list[Callable[[], torch.Tensor]], repeats: int
) -> list[tuple[float, torch.Tensor]]:
    """Best time of each function over ``repeats`` rounds, interleaved so that load from other
    work on the machine hits every contender alike; returns (seconds, output) per function."""
    best: list[tuple[float, torch.Tensor]] = [(float("inf"), torch.empty(0))] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            out = fn()
            best[i] = min(best[i], (time.perf_counter() - start, out), key=lambda r: r[0])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=65,
        help="65: characters; 50257: GPT-2's BPE, where the output layer dominates each step",
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of the cached paths")
    parser.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M-Instruct")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 keeps numbers steady on a shared machine (0: torch's default)",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    # block_size 512 > prompt + 256 new tokens: the window never slides.
    config = GPTConfig.preset("mini", vocab_size=args.vocab_size, block_size=512)
    model = GPT(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens))
    n = args.new_tokens

    with tempfile.TemporaryDirectory() as folder:
        save_hf_gpt2(model, folder)
        hf = GPT2LMHeadModel.from_pretrained(folder).eval()

    def ours_cached() -> torch.Tensor:
        return generate(model, prompt, n, temperature=0, use_cache=True)

    def ours_uncached() -> torch.Tensor:
        return generate(model, prompt, n, temperature=0, use_cache=False)

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                use_cache=True,
                pad_token_id=0,
            )

    # Warm up: first calls allocate and pick kernels.
    generate(model, prompt, 8, temperature=0)
    hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=0,
    )

    (t_cached, out_cached), (t_hf, out_hf) = best_seconds([ours_cached, theirs], args.repeats)
    [(t_uncached, out_uncached)] = best_seconds([ours_uncached], 1)  # slow: one run is plenty
    cached, hf_rate, uncached = n / t_cached, n / t_hf, n / t_uncached
    same_as_uncached = torch.equal(out_cached, out_uncached)
    same_as_hf = torch.equal(out_cached, out_hf)

    head_share = model.lm_head.weight.numel() / model.num_parameters()
    rows = [
        ("gptlab, no KV cache", uncached),
        ("gptlab, KV cache", cached),
        ("transformers generate (greedy, use_cache)", hf_rate),
    ]
    lines = [
        "# Generation speed (benchmarks/bench_generate.py)",
        "",
        f"Greedy decoding of {n} new tokens after a {args.prompt_tokens}-token prompt, batch 1, "
        f"float32 on {platform.machine()} CPU with {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        f"Model: GPTConfig.preset('mini', vocab_size={config.vocab_size}, block_size=512): {config.n_layer} layers, "
        f"{config.n_head} heads, n_embd {config.n_embd}, vocab {config.vocab_size}, "
        f"{model.num_parameters() / 1e6:.1f}M parameters. Best of {args.repeats} interleaved runs for "
        "the cached paths, one run without the cache.",
        "",
        "| path | tokens/s |",
        "|---|---:|",
        *(f"| {name} | {rate:,.1f} |" for name, rate in rows),
        "",
        f"- KV cache speed-up: **{cached / uncached:.1f}x** (goal >= 5x)",
        f"- gptlab / transformers: **{cached / hf_rate:.2f}x** (goal >= 1.0x)",
        f"- same tokens with and without the cache: {same_as_uncached}; "
        f"same tokens as transformers: {same_as_hf}",
        f"- the output layer (vocab x n_embd) is {head_share:.1%} of the weights each cached step "
        "reads; the cache cannot shrink that part, so a big vocabulary on a small model lowers "
        "the speed-up (try --vocab-size 50257)",
        "",
        "Timings vary with the machine and its load; the ratios are the point.",
    ]
    if args.smollm2:
        lines += ["", *smollm2_rows(args.new_tokens, args.repeats)]
    report = "\n".join(lines) + "\n"
    print(report)
    with atomic_write(RESULTS, "w") as f:
        f.write(report)


def read_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes per second this process reads from memory: the best of ``repeats`` sums over a
    float32 array far bigger than any cache. Batch-1 decoding reads every weight once per token,
    so this is the ceiling on (bytes per token) x (tokens per second) with these threads."""
    x = torch.ones(nbytes // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def bytes_per_token(model: torch.nn.Module, prompt_len: int, n: int) -> float:
    """Bytes one decoding step reads: every weight once (a tied table once), plus the KV cache
    at its mean length over the ``n`` steps."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    c = model.config
    mean_len = prompt_len + n / 2
    kv = 2 * c.n_layer * c.n_kv_head * c.head_dim * mean_len * model.lm_head.weight.element_size()
    return weights + kv


def chat_peak_rss_mib(turns: tuple[str, ...] = ("Hello!", "What is 2 + 2?")) -> float:
    """Peak resident memory of ``python -m gptlab chat`` (SmolLM2, greedy) over two short turns,
    measured by the kernel for the child process."""
    script = "\n".join((*turns, "/quit")) + "\n"
    subprocess.run(
        [sys.executable, "-m", "gptlab", "chat", "--max-new-tokens", "32"],
        input=script,
        text=True,
        check=True,
        capture_output=True,
    )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def smollm2_rows(n: int, repeats: int) -> list[str]:
    """gptlab vs transformers generate on SmolLM2-135M-Instruct, float32 and bfloat16, with the
    share of the machine's memory bandwidth each reaches, and the chat command's peak memory."""
    bandwidth = read_bandwidth()
    rows = [
        f"## SmolLM2-135M-Instruct, {n} new tokens after a chat prompt, batch 1",
        "",
        f"Memory read bandwidth measured in the same run ({torch.get_num_threads()} threads, "
        f"sum over 512 MiB): {bandwidth / 1e9:.1f} GB/s. 'share of bandwidth' = bytes read per "
        "token (all weights + the KV cache) x tokens/s / that bandwidth.",
        "",
        "| dtype | gptlab tokens/s | transformers tokens/s | gptlab / transformers | "
        "gptlab share of bandwidth | transformers share | same tokens |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for dtype in (torch.float32, torch.bfloat16):
        model, tokenizer = load_pretrained("smollm2-135m-instruct", dtype=dtype)
        with tempfile.TemporaryDirectory() as folder:
            save_hf_llama(model, folder)
            hf = LlamaForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        text = "<|im_start|>user\nTell me a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"
        prompt = torch.tensor(
            [tokenizer.encode(text, allowed_special={"<|im_start|>", "<|im_end|>"})]
        )

        def ours(model: torch.nn.Module = model, prompt: torch.Tensor = prompt) -> torch.Tensor:
            return generate(model, prompt, n, temperature=0)

        def theirs(hf: LlamaForCausalLM = hf, prompt: torch.Tensor = prompt) -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=False,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    pad_token_id=2,
                )

        ours(), theirs()  # warm up
        (t_ours, out_ours), (t_hf, out_hf) = best_seconds([ours, theirs], repeats)
        name = str(dtype).removeprefix("torch.")
        per_token = bytes_per_token(model, prompt.shape[1], n)
        rows.append(
            f"| {name} | {n / t_ours:,.1f} | {n / t_hf:,.1f} | **{t_hf / t_ours:.2f}x** | "
            f"{per_token * n / t_ours / bandwidth:.0%} | {per_token * n / t_hf / bandwidth:.0%} | "
            f"{torch.equal(out_ours, out_hf)} |"
        )
        del model, hf
    rows += [
        "",
        f"Peak resident memory of `python -m gptlab chat` (SmolLM2 in float32, two short turns): "
        f"{chat_peak_rss_mib():,.0f} MiB (the kernel's count, which includes the pages of the "
        "memory-mapped weights file while it is copied into the model).",
    ]
    return rows


if __name__ == "__main__":
    main()
