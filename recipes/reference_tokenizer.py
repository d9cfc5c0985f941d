"""Train the reference model's tokenizer: byte-level BPE, 4,096 tokens, on the training split.

    python recipes/reference_tokenizer.py [--out gptlab/assets/reference/tokenizer.json]

The training split is the text ``gptlab.data.train_val_split(corpus.text, val_fraction)`` keeps
for training (the first 90 % of the Shakespeare corpus), so the tokenizer never saw the plays
the model is validated on. BPE training is deterministic (ties are broken by the byte strings),
so this script always writes the same file; tests/test_reference.py checks that it does.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from gptlab.data import load_corpus, train_val_split
from gptlab.tokenizers import BPETokenizer

CORPUS = "shakespeare"
VAL_FRACTION = 0.1
VOCAB_SIZE = 4096
DEFAULT_OUT = pathlib.Path("gptlab/assets/reference/tokenizer.json")


def train_reference_tokenizer() -> BPETokenizer:
    """The reference BPE tokenizer, trained on the training split of the corpus."""
    train_text, _ = train_val_split(load_corpus(CORPUS).text, VAL_FRACTION)
    return BPETokenizer.train(train_text, VOCAB_SIZE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="where to save it")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tokenizer = train_reference_tokenizer()
    tokenizer.save(args.out)
    print(
        f"trained {tokenizer.vocab_size} tokens in {time.perf_counter() - start:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
