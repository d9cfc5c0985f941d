"""How fast does gptlab's pure-Python BPE trainer learn a 4,096-token vocabulary?

One run trains on the Shakespeare corpus (``gptlab.data.load_corpus("shakespeare")``, 4.8 MB)
twice: with ``gptlab.BPETokenizer.train`` (Python; incremental pair counts + a lazy heap) and with
Hugging Face ``tokenizers`` (Rust; ByteLevel pre-tokenizer, BpeTrainer, same vocabulary size,
same special token). Prints wall-clock and CPU seconds, the ratio, and how many tokens each
vocabulary needs for the whole corpus, and writes them to benchmarks/results_bpe.md.

    python benchmarks/bench_bpe.py                 # about 15 s on one CPU core
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

import tokenizers as hf_tokenizers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from gptlab.data import load_corpus
from gptlab.tokenizers import BPETokenizer
from gptlab.utils import atomic_write

RESULTS = pathlib.Path(__file__).with_name("results_bpe.md")
SPECIAL = "<|endoftext|>"


def timed(fn):
    """Run ``fn`` once; return (result, wall seconds, CPU seconds of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def train_hf(text: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    return tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--corpus", default="shakespeare")
    args = parser.parse_args()

    text = load_corpus(args.corpus).text
    ours, ours_wall, ours_cpu = timed(lambda: BPETokenizer.train(text, args.vocab_size))
    hf, hf_wall, hf_cpu = timed(lambda: train_hf(text, args.vocab_size))

    n_bytes = len(text.encode("utf-8"))
    ours_tokens = len(ours.encode(text))
    hf_tokens = len(hf.encode(text).ids)
    threads = os.environ.get("RAYON_NUM_THREADS", f"default ({os.cpu_count()} cores visible)")
    rows = [
        ("gptlab BPETokenizer.train (Python)", ours_wall, ours_cpu, ours.vocab_size, ours_tokens),
        ("HF tokenizers BpeTrainer (Rust)", hf_wall, hf_cpu, hf.get_vocab_size(), hf_tokens),
    ]
    lines = [
        "# BPE training speed (benchmarks/bench_bpe.py)",
        "",
        f"Corpus: `load_corpus({args.corpus!r}).text`, {len(text):,} characters, {n_bytes:,} "
        f"UTF-8 bytes. Vocabulary {args.vocab_size:,} tokens including `{SPECIAL}`. "
        f"Python {platform.python_version()}, tokenizers {hf_tokenizers.__version__}, "
        f"{platform.machine()} CPU; Rayon threads: {threads}. One run each.",
        "",
        "| trainer | wall s | CPU s | vocab | tokens for the corpus | bytes/token |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {vocab:,} | {n:,} | {n_bytes / n:.2f} |"
            for name, wall, cpu, vocab, n in rows
        ),
        "",
        f"- gptlab / HF wall time: **{ours_wall / hf_wall:.1f}x** "
        f"(CPU time: {ours_cpu / hf_cpu:.1f}x)",
        "- same algorithm family, so both vocabularies compress the corpus alike (bytes/token); "
        "individual merges can differ where pair counts tie, which each library breaks its own way",
        "",
        "Timings vary with the machine and its load; the ratio is the point.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    with atomic_write(RESULTS, mode="w", encoding="utf-8") as handle:
        handle.write(report)


if __name__ == "__main__":
    main()
