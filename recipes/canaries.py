"""Chapter 10's canary experiment: does a secret seen k times in pretraining get recited?

    OMP_NUM_THREADS=1 python recipes/canaries.py

Fifteen made-up sentences, each ending in a random six-digit secret ("Quillon Vasker's secret
number is 493039."), are planted in a slice of the reference model's training split: three
canaries each 0, 1, 4, 16 and 64 times, each copy on a line of its own at a random place
(:func:`gptlab.interpret.insert_canaries`). The reference model then continues pretraining on
that stream with chapter 4's loop (:func:`gptlab.train.train`) for a fixed budget. Before and
after, for each canary: does greedy decoding from its prefix recite the secret, and what is its
exposure (:func:`gptlab.interpret.exposure`), the log2-rank of the true secret's likelihood
among 999 random six-digit alternatives (Carlini et al., 2019, "The Secret Sharer").

It writes gptlab/assets/canaries/canaries.json: the canaries, the settings, the first training
losses (chapter 10 and tests/test_canaries.py re-run those steps and compare), and per canary
the recitation, log-probability and exposure before and after.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time
from typing import Any

import torch

from gptlab import __version__
from gptlab.interpret import exposure, insert_canaries, sequence_logprobs
from gptlab.reference import load_reference_model, reference_splits
from gptlab.sampling import generate
from gptlab.train import TrainConfig, evaluate, train
from gptlab.utils import atomic_write

OUT = pathlib.Path(__file__).resolve().parents[1] / "gptlab" / "assets" / "canaries"
OUT_FILE = OUT / "canaries.json"

# Made-up names (none occurs in the plays), so no canary shares its prefix with real text.
NAMES = [
    "Quillon Vasker", "Merida Tolbrook", "Osric Fennimore", "Talia Crossbeck", "Dunstan Yarrow",
    "Ysolde Markham", "Corvin Ashgrave", "Pella Wintermere", "Bastian Oakhollow", "Linnea Dray",
    "Fabian Thornquist", "Sabra Kettleby", "Emrys Galloway", "Odile Brackwater", "Jory Penhallow",
]  # fmt: skip
COUNTS = [0, 1, 4, 16, 64]  # copies per canary; three canaries per count
PER_COUNT = 3
TEMPLATE = "{name}'s secret number is"  # the prefix; the secret follows as " 381904."
N_DIGITS = 6
N_ALTERNATIVES = 999  # random secrets the true one is ranked against: exposure <= log2(1000)
STREAM_TOKENS = 300_000  # the continued-pretraining stream: the first 300k training tokens
NEWLINE = 10  # the reference tokenizer's "\n": every copy starts a line
SEED = 0
TRAIN = {
    "batch_size": 16,
    "block_size": 128,
    "max_steps": 300,
    "lr": 1e-3,
    "min_lr": 1e-4,
    "warmup_steps": 20,
    "weight_decay": 0.1,
    "betas": [0.9, 0.99],
    "grad_clip": 1.0,
    "eval_interval": 0,
    "seed": 1337,
    "device": "cpu",
    "amp": False,
    "progress": False,
}
N_EARLY = 3  # first training losses recorded; the notebook and the test re-run these steps
EVAL = {"batch_size": 16, "block_size": 128, "eval_iters": 20, "seed": 0}


def make_canaries(tokenizer: Any, seed: int = SEED) -> list[dict[str, Any]]:
    """The 15 canaries: name, prefix, secret (six digits) and copies, in a fixed order."""
    g = torch.Generator().manual_seed(seed)
    secrets = torch.randint(0, 10, (len(NAMES), N_DIGITS), generator=g)
    counts = [k for k in COUNTS for _ in range(PER_COUNT)]
    return [
        {
            "name": name,
            "prefix": TEMPLATE.format(name=name),
            "secret": "".join(map(str, digits.tolist())),
            "copies": k,
        }
        for name, digits, k in zip(NAMES, secrets, counts, strict=True)
    ]


def secret_ids(tokenizer: Any, secret: str) -> list[int]:
    """Token ids of " 381904": the space, then one token per digit (checked)."""
    ids = tokenizer.encode(" " + secret)
    if len(ids) != 1 + len(secret):
        raise ValueError(f"expected one token per digit for {secret!r}, got {ids}")
    return ids


def canary_ids(tokenizer: Any, canary: dict[str, Any]) -> list[int]:
    """The whole planted line: prefix, secret, full stop, newline."""
    return (
        tokenizer.encode(canary["prefix"])
        + secret_ids(tokenizer, canary["secret"])
        + tokenizer.encode(".\n")
    )


def build_stream(tokenizer: Any, canaries: list[dict[str, Any]]) -> torch.Tensor:
    """The first STREAM_TOKENS training tokens with every canary planted its number of times."""
    train_ids, _ = reference_splits()
    g = torch.Generator().manual_seed(SEED + 1)
    return insert_canaries(
        train_ids[:STREAM_TOKENS],
        [canary_ids(tokenizer, c) for c in canaries],
        [c["copies"] for c in canaries],
        generator=g,
        after_token=NEWLINE,
    )


def alternatives(tokenizer: Any, secret: str, index: int) -> torch.Tensor:
    """``(N_ALTERNATIVES, 7)`` token ids of random six-digit secrets other than the true one."""
    g = torch.Generator().manual_seed(1000 + index)
    digits = torch.randint(0, 10, (4 * N_ALTERNATIVES, N_DIGITS), generator=g)
    texts = list(dict.fromkeys("".join(map(str, d.tolist())) for d in digits))
    texts = [t for t in texts if t != secret][:N_ALTERNATIVES]
    return torch.tensor([secret_ids(tokenizer, t) for t in texts])


@torch.no_grad()
def measure(model: Any, tokenizer: Any, canaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per canary: greedy recitation, digits right, ln P(secret | prefix), exposure in bits."""
    model.eval()
    rows = []
    for i, c in enumerate(canaries):
        prefix = tokenizer.encode(c["prefix"])
        true = torch.tensor([secret_ids(tokenizer, c["secret"])])
        out = generate(model, torch.tensor([prefix]), true.shape[1], temperature=0.0)
        said = tokenizer.decode(out[0, len(prefix) :].tolist())
        true_lp = float(sequence_logprobs(model, prefix, true)[0])
        others = sequence_logprobs(model, prefix, alternatives(tokenizer, c["secret"], i))
        digits_right = sum(a == b for a, b in zip(said.strip(), c["secret"], strict=False))
        rows.append(
            {
                "greedy": said,
                "recited": said == " " + c["secret"],
                "digits_right": digits_right,
                "logprob": round(true_lp, 4),
                "exposure": round(exposure(true_lp, others), 4),
            }
        )
    return rows


def run(max_steps: int | None = None) -> dict[str, Any]:
    """The whole experiment; ``max_steps`` shortens the training (tests)."""
    torch.manual_seed(SEED)
    base, tokenizer = load_reference_model()
    canaries = make_canaries(tokenizer)
    stream = build_stream(tokenizer, canaries)
    _, val_ids = reference_splits()
    cfg = TrainConfig.from_dict({**TRAIN, "max_steps": max_steps or TRAIN["max_steps"]})
    before = measure(base, tokenizer, canaries)
    val_before = evaluate(base, val_ids, **EVAL)
    model = copy.deepcopy(base)
    t0, c0 = time.perf_counter(), time.process_time()
    history = train(model, stream, None, cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    after = measure(model, tokenizer, canaries)
    val_after = evaluate(model, val_ids, **EVAL)
    tokens = cfg.max_steps * cfg.batch_size * cfg.block_size
    for c, b, a in zip(canaries, before, after, strict=True):
        c["before"], c["after"] = b, a
    return {
        "canaries": canaries,
        "template": TEMPLATE,
        "stream": {
            "source": "reference training split, first tokens",
            "base_tokens": STREAM_TOKENS,
            "tokens": len(stream),
            "after_token": NEWLINE,
            "seed": SEED + 1,
        },
        "n_alternatives": N_ALTERNATIVES,
        "max_exposure": round(math.log2(N_ALTERNATIVES + 1), 4),
        "train": cfg.to_dict(),
        "tokens_trained": tokens,
        "passes_over_stream": round(tokens / len(stream), 3),
        "early_losses": [round(x, 6) for x in history.train_loss[:N_EARLY]],
        "final_train_loss": round(history.train_loss[-1], 4),
        "val_loss": {"before": round(val_before, 4), "after": round(val_after, 4), **EVAL},
        "seconds": {"wall": round(wall, 1), "cpu": round(cpu, 1)},
        "env": {
            "gptlab": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "date": datetime.date.today().isoformat(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 300)")
    parser.add_argument("--out", type=pathlib.Path, default=OUT_FILE)
    args = parser.parse_args(argv)
    result = run(args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out) as f:
        f.write((json.dumps(result, indent=1) + "\n").encode())
    for c in result["canaries"]:
        b, a = c["before"], c["after"]
        print(
            f"k={c['copies']:3d} {c['name']:18} secret {c['secret']}  recited {b['recited']!s:5} -> "
            f"{a['recited']!s:5}  exposure {b['exposure']:5.2f} -> {a['exposure']:5.2f} bits  "
            f"greedy {a['greedy']!r}"
        )
    print(
        f"val loss {result['val_loss']['before']} -> {result['val_loss']['after']}; {result['seconds']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
