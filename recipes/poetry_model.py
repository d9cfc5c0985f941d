"""Train the "GPT in Chinese" poetry model: a small GPT on regulated Tang poems, on a CPU.

    OMP_NUM_THREADS=1 python recipes/poetry_model.py                 # ~23 CPU-minutes, resumable
    OMP_NUM_THREADS=1 python recipes/poetry_model.py --measure-only  # re-measure the shipped model

writes gptlab/assets/poetry_model/ (weights, tokenizer, meta.json, manifest.json with the
measurements below and every file's sha256), which
``gptlab.reference.load_reference_model(directory=...)`` loads with the hashes checked. Steps:

1. the Tang poems of the pinned npm ``chinese-poetry`` archive (``gptlab.poetry``: simplified
   characters, damaged poems and repeated texts dropped), of which only the **regulated** ones
   are kept: 4 or 8 lines of 5 or 7 characters (绝句 and 律诗, 36,282 of 50,834). Then
   ``split_poems`` holds out whole poets (5 % of the poems, seeded) and drops every held-out poem
   that shares an 8-character run with training, so validation poems and their authors were
   never seen;
2. a character tokenizer (``gptlab.CharTokenizer``) built from the training poems only: one
   token per character seen at least ``MIN_COUNT`` times, plus ``"\\n"`` (one couplet a line),
   ``END_OF_POEM`` (between poems, and the prompt that starts one) and ``UNKNOWN`` for the
   rarer characters (0.1 % of the training text) and for held-out characters that training
   lacks (0.25 % of the held-out text);
3. a 4-layer, 128-wide GPT (1.45M parameters, 0.64M of them the character embedding) trained
   with ``gptlab.train`` for 1,400 steps of 32 x 128 characters (AdamW, warm-up + cosine; 0.8 to
   1 CPU-second a step on one thread), checkpointed every 200 steps into
   ``runs/poetry_model`` so an interrupted run resumes where it stopped;
4. measured: held-out loss and bits per character (newlines and end marks count as
   characters), the same on as many training poems (the overfitting gap); ``N`` poems sampled
   from the end mark at temperatures 0.7 and 1.0, unconstrained and with ``LineLengthProcessor``
   (``N / 4`` of each form), scored with ``form_pass_rates``; the same rates for the untrained
   model under the constraints (chance, given the shape) and for the real held-out poems (the
   ceiling of a checker that approximates Middle Chinese with modern Mandarin); and how much of
   each sample repeats training (exact copies, and samples sharing an 8-character run:
   ``gptlab.evaluate.contamination.find_overlap``).

**Why only regulated poems.** The checker scores the form of a 绝句 or 律诗: line count and
line length are two of its five rules, and the tonal rule needs both. The other 29 % of the
poems (古体诗, 乐府, poems of mixed line lengths or of dozens of lines) fail it by definition, so
training on them teaches the model shapes the score counts as errors, and 27 % of them do not
fit in the model's 128-character window. Keeping only the regulated poems also halves the
corpus (1.7M characters), so the same compute reads each of them more than three times rather
than not quite twice. (A reasoned choice, not a measured one: a run on all poems would cost
another 23 CPU-minutes.)

``--measure-only`` repeats step 4 on the shipped model and rewrites only the manifest's
``"results"`` (the weights, and so the hashes, stay the same). ``first_steps`` re-runs the start
of training for ``tests/test_poetry_model.py``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import math
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from gptlab.checkpoint import META_FILE, TOKENIZER_FILE, WEIGHTS_FILE, History, save_checkpoint
from gptlab.constraints import LineLengthProcessor
from gptlab.data.archives import ARCHIVES, fetch_archive, read_archive_members
from gptlab.evaluate.contamination import find_overlap
from gptlab.evaluate.likelihood import sequence_nats
from gptlab.model import GPT, GPTConfig
from gptlab.poetry import Poem, form_pass_rates, poem_form, split_poems, tang_poems_from_members
from gptlab.reference import MANIFEST_FILE, load_reference_model, sha256_file
from gptlab.sampling import generate
from gptlab.tokenizers import CharTokenizer
from gptlab.train import TrainConfig, train
from gptlab.utils import atomic_write, provenance, round_floats, seed_everything

OUT = pathlib.Path(__file__).resolve().parents[1] / "gptlab" / "assets" / "poetry_model"
MEMBERS = ("package/dist/quantangshi/poet.tang.*.json",)
SPLIT = dict(val_fraction=0.05, seed=0)
MIN_COUNT = 3  # rarer characters become UNKNOWN: a character seen once or twice is not learned
END_OF_POEM = "∎"  # not Han, never in a cleaned poem: it separates poems and starts a sample
UNKNOWN = "□"  # the corpus's own mark for a lost character (cleaning drops every poem with one)
LINE_ENDS = ("，", "。\n")  # a poem's text is one couplet per line (gptlab.poetry.Poem.text)
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0)
TRAIN = dict(batch_size=32, lr=3e-3, min_lr=3e-4, warmup_steps=100, weight_decay=0.1, seed=1337)
STEPS = 1400
TEMPERATURES = (0.7, 1.0)
MAX_NEW_TOKENS = 96  # a 七言律诗 is 8 * 8 characters + 4 newlines = 68, then the end mark
FORMS = {"五言绝句": (5, 4), "七言绝句": (7, 4), "五言律诗": (5, 8), "七言律诗": (7, 8)}
OVERLAP_N = 8  # a sample "repeats training" when it shares 8 consecutive characters with it


# --------------------------------------------------------------------------------------------
# Steps 1 and 2: poems, split, tokenizer
# --------------------------------------------------------------------------------------------


def load_poems(patterns: Sequence[str] = MEMBERS) -> list[Poem]:
    """The regulated Tang poems (绝句 and 律诗, see the docstring) of the pinned archive's
    members matching ``patterns`` (a test reads one member; the recipe reads all 58)."""
    members = read_archive_members(fetch_archive(ARCHIVES["chinese-poetry"]), list(patterns))
    return [p for p in tang_poems_from_members(members) if p.form is not None]


def split(poems: Sequence[Poem]) -> tuple[list[Poem], list[Poem]]:
    """(train, validation): whole poets held out, leaked couplets dropped (``split_poems``)."""
    return split_poems(poems, SPLIT["val_fraction"], seed=SPLIT["seed"], by="author")


def build_tokenizer(train_poems: Sequence[Poem]) -> CharTokenizer:
    """One token per character seen ``MIN_COUNT`` times in the training poems, plus ``"\\n"``,
    ``END_OF_POEM`` and ``UNKNOWN``. Held-out poems play no part, so none of their characters
    gets a token that training did not justify."""
    counts = collections.Counter("".join(p.text for p in train_poems))
    kept = {c for c, n in counts.items() if n >= MIN_COUNT} | {"\n", END_OF_POEM, UNKNOWN}
    return CharTokenizer(sorted(kept))


def poems_text(tokenizer: CharTokenizer, poems: Sequence[Poem]) -> str:
    """The poems as the model reads them: each starts after an end mark and ends with a newline
    and an end mark; characters without a token are written as ``UNKNOWN``."""
    known = set(tokenizer.chars)
    text = END_OF_POEM + "".join(p.text + "\n" + END_OF_POEM for p in poems)
    return "".join(c if c in known else UNKNOWN for c in text)


def encode_poems(tokenizer: CharTokenizer, poems: Sequence[Poem]) -> torch.Tensor:
    """:func:`poems_text` as a 1-D LongTensor of token ids."""
    return torch.tensor(tokenizer.encode(poems_text(tokenizer, poems)), dtype=torch.long)


def new_model(vocab_size: int) -> GPT:
    """The recipe's GPT, freshly initialised from seed 0 (the trained and untrained models of
    a run, and of ``--measure-only``, start from the same weights)."""
    seed_everything(0)
    return GPT(GPTConfig(vocab_size=vocab_size, **MODEL))


def train_config(steps: int, checkpoint_dir: pathlib.Path | None) -> TrainConfig:
    """``TRAIN`` for a run of ``steps`` (a run shorter than the warm-up warms up throughout)."""
    return TrainConfig(
        **{**TRAIN, "warmup_steps": min(TRAIN["warmup_steps"], steps)},
        block_size=MODEL["block_size"], max_steps=steps, eval_interval=200,
        eval_iters=10, device="cpu", amp=False, checkpoint_interval=200, progress=True,
        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir),
    )  # fmt: skip


def first_steps(steps: int = 3, poems: Sequence[Poem] | None = None) -> History:
    """The first ``steps`` optimizer steps of the full run, without evaluation or checkpoints.

    With ``poems=None`` (all regulated poems) these are exactly the shipped run's first steps:
    the warm-up's learning rate does not depend on the run's length, and evaluation draws its
    own windows. A test passes a slice of the poems to run them cheaply.
    """
    train_poems, _ = split(load_poems() if poems is None else poems)
    tokenizer = build_tokenizer(train_poems)
    model = new_model(tokenizer.vocab_size)
    cfg = dataclasses.replace(train_config(STEPS, None), eval_interval=0, progress=False)
    return train(model, encode_poems(tokenizer, train_poems), None, cfg, stop_at=steps)


# --------------------------------------------------------------------------------------------
# Step 4: measurements
# --------------------------------------------------------------------------------------------


def sample_poems(
    model: GPT,
    tokenizer: CharTokenizer,
    n: int,
    *,
    temperature: float,
    seed: int,
    form: str | None = None,
) -> list[tuple[str, bool]]:
    """``n`` poems sampled from the end mark: ``(text, finished)`` each, ``finished`` when the
    model wrote the end mark within ``MAX_NEW_TOKENS`` (the text stops there). With ``form``
    (a key of ``FORMS``) a ``LineLengthProcessor`` forces its lines, lengths and punctuation."""
    end = tokenizer.encode(END_OF_POEM)[0]
    processors, max_new = [], MAX_NEW_TOKENS
    if form is not None:
        length, lines = FORMS[form]
        processors = [
            LineLengthProcessor(tokenizer, length, lines, LINE_ENDS, prompt_len=1, eos_token_id=end)
        ]
        max_new = lines * (length + 1) + lines // 2 + 1
    ids = generate(
        model, torch.tensor([[end]]), max_new, temperature=temperature, eos_token_id=end,
        num_return_sequences=n, generator=torch.Generator().manual_seed(seed),
        logits_processors=processors,
    )  # fmt: skip
    samples = []
    for row in ids[:, 1:].tolist():
        finished = end in row
        samples.append((tokenizer.decode(row[: row.index(end)] if finished else row), finished))
    return samples


def sample_forms(
    model: GPT, tokenizer: CharTokenizer, per_form: int, temperature: float, seed: int
) -> dict[str, list[str]]:
    """``per_form`` poems of each form of ``FORMS``, each under its ``LineLengthProcessor``."""
    return {
        form: [
            text
            for text, _ in sample_poems(
                model, tokenizer, per_form, temperature=temperature, seed=seed + j, form=form
            )
        ]
        for j, form in enumerate(FORMS)
    }


def _rates(texts: Sequence[str]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in form_pass_rates(list(texts)).items()}


def _forms(texts: Sequence[str]) -> dict[str, int]:
    """How many texts have each shape (by line count and length only), "其他" for the rest."""
    counts = collections.Counter(poem_form(t.split("\n")) or "其他" for t in texts)
    return dict(sorted(counts.items()))


def _stream_loss(model: GPT, ids: torch.Tensor) -> float:
    """Mean nats per token over all of ``ids`` (windows of the model's block, half overlapping)."""
    nats, tokens = sequence_nats(model, [ids.tolist()], batch_size=32)[0]
    return nats / tokens


def measure(
    model: GPT,
    untrained: GPT,
    tokenizer: CharTokenizer,
    train_poems: Sequence[Poem],
    val_poems: Sequence[Poem],
    n: int,
) -> dict[str, Any]:
    """Step 4 (see the docstring): losses, form pass rates, ceiling, chance and memorisation."""
    start = time.process_time()
    val_ids = encode_poems(tokenizer, val_poems)
    val_loss = _stream_loss(model, val_ids)
    train_loss = _stream_loss(model, encode_poems(tokenizer, train_poems[: len(val_poems)]))
    unknown = tokenizer.encode(UNKNOWN)[0]
    per_form = max(1, n // len(FORMS))
    results: dict[str, Any] = {
        "val_loss": round(val_loss, 4),
        "val_bits_per_char": round(val_loss / math.log(2), 4),
        "train_sample_loss": round(train_loss, 4),
        "val_unknown_share": round(float((val_ids == unknown).float().mean()), 5),
        "sampling": {
            "n": n,
            "per_form": per_form,
            "prompt": END_OF_POEM,
            "max_new_tokens": MAX_NEW_TOKENS,
            "temperatures": list(TEMPERATURES),
        },
        "held_out_poems": {
            "n": len(val_poems),
            "forms": _forms([p.text for p in val_poems]),
            "form_pass_rates": _rates([p.text for p in val_poems]),
            "form_pass_rates_by_form": {
                form: _rates([p.text for p in val_poems if p.form == form]) for form in FORMS
            },
        },
    }
    all_samples: list[str] = []
    for k, temperature in enumerate(TEMPERATURES):
        free = sample_poems(model, tokenizer, n, temperature=temperature, seed=k)
        texts = [text for text, _ in free]
        by_form = sample_forms(model, tokenizer, per_form, temperature, seed=100 * (k + 1))
        constrained = [text for texts_ in by_form.values() for text in texts_]
        results[f"temperature_{temperature}"] = {
            "unconstrained": {
                "finished_rate": round(sum(done for _, done in free) / n, 4),
                "forms": _forms(texts),
                "form_pass_rates": _rates(texts),
                "examples": texts[:5],
            },
            "constrained": {
                "form_pass_rates": _rates(constrained),
                "form_pass_rates_by_form": {form: _rates(t) for form, t in by_form.items()},
                "examples": {form: t[0] for form, t in by_form.items()},
            },
        }
        all_samples += texts + constrained
    chance = sample_forms(untrained, tokenizer, per_form, 1.0, seed=900)
    results["untrained_constrained_form_pass_rates"] = _rates(
        [text for texts_ in chance.values() for text in texts_]
    )
    report = find_overlap([p.text for p in train_poems], all_samples, OVERLAP_N)
    results["memorisation"] = {
        "samples": len(all_samples),
        "n": OVERLAP_N,
        "exact_copies": len(report.exact),
        "share_with_a_training_run": round(len(report.overlap) / len(all_samples), 4),
        "mean_overlap_fraction": round(sum(report.overlap.values()) / len(all_samples), 4),
    }
    results["measure_cpu_seconds"] = round(time.process_time() - start, 1)
    return results


# --------------------------------------------------------------------------------------------
# Writing the folder
# --------------------------------------------------------------------------------------------


def _write_manifest(folder: pathlib.Path, manifest: dict[str, Any]) -> None:
    with atomic_write(folder / MANIFEST_FILE, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def _replace_folder(staged: pathlib.Path, out: pathlib.Path) -> None:
    """Move the finished ``staged`` folder to ``out``; an older ``out`` is removed only after."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staged, out)
    shutil.rmtree(old, ignore_errors=True)


def measure_only(out: pathlib.Path, n: int) -> int:
    """Re-measure the shipped model and rewrite the manifest's results (nothing else)."""
    model, tokenizer = load_reference_model(directory=out)
    train_poems, val_poems = split(load_poems())
    if tokenizer.chars != build_tokenizer(train_poems).chars:
        raise SystemExit(f"{out}'s tokenizer is not the one these poems give; retrain instead")
    results = measure(model, new_model(tokenizer.vocab_size), tokenizer, train_poems, val_poems, n)
    manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest["results"] = results
    manifest["measured"] = datetime.date.today().isoformat()
    _write_manifest(out, manifest)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--run", type=pathlib.Path, default=pathlib.Path("runs/poetry_model"))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--samples", type=int, default=200, help="poems sampled per setting")
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    parser.add_argument("--measure-only", action="store_true", help="re-measure the shipped model")
    args = parser.parse_args(argv)
    if args.samples < len(FORMS):
        parser.error(f"--samples must be at least {len(FORMS)} (one per form)")
    if args.measure_only:
        return measure_only(args.out, args.samples)
    wall = time.perf_counter()

    poems = load_poems()
    train_poems, val_poems = split(poems)
    tokenizer = build_tokenizer(train_poems)
    args.run.mkdir(parents=True, exist_ok=True)
    saved = args.run / TOKENIZER_FILE
    if saved.exists() and CharTokenizer.load(saved).chars != tokenizer.chars:
        raise SystemExit(
            f"{saved} differs from this data's tokenizer; delete {args.run} to restart"
        )
    tokenizer.save(saved)
    train_ids = encode_poems(tokenizer, train_poems)
    val_ids = encode_poems(tokenizer, val_poems)
    print(
        f"{len(poems):,} regulated poems: {len(train_poems):,} for training ({len(train_ids):,} "
        f"characters), {len(val_poems):,} held out; {tokenizer.vocab_size:,} tokens"
    )

    model = new_model(tokenizer.vocab_size)
    untrained = new_model(tokenizer.vocab_size)
    resume = args.run / "checkpoint"
    cfg = train_config(args.steps, resume)
    resuming = (resume / META_FILE).exists()
    first_step = json.loads((resume / META_FILE).read_text())["step"] if resuming else 0
    train_cpu = time.process_time()
    history = train(
        model, train_ids, val_ids, cfg, tokenizer=tokenizer,
        resume_from=resume if resuming else None,
    )  # fmt: skip
    # The CPU time of the steps this process ran, per step, estimates the whole run's.
    cpu_per_step = (time.process_time() - train_cpu) / max(1, args.steps - first_step)
    model.eval()

    results = measure(model, untrained, tokenizer, train_poems, val_poems, args.samples)

    staged = args.out.with_name(f".{args.out.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    save_checkpoint(staged, model, step=history.steps[-1] if history.steps else 0,
                    train_config=cfg, history=round_floats(history.to_dict()),
                    tokenizer=tokenizer)  # fmt: skip
    val_authors = {p.author for p in val_poems}
    manifest = {
        "name": "gptlab-tang-poems",
        "description": "A 4-layer GPT trained from scratch on the regulated Tang poems (绝句 and "
        "律诗) of chinese-poetry 2.0.1 in simplified characters, one token per character, on a CPU.",
        **provenance(),
        "recipe": {"command": "OMP_NUM_THREADS=1 python recipes/poetry_model.py"},
        "hardware": args.hardware,
        "resumed_from_step": first_step,
        "script_wall_seconds": round(time.perf_counter() - wall, 1),
        "cpu_seconds_per_step": round(cpu_per_step, 3),
        "training_cpu_seconds": round(cpu_per_step * args.steps, 1),
        "first_train_losses": [round(x, 6) for x in history.train_loss[:5]],
        "parameters": model.num_parameters(),
        "model_config": model.config.to_dict(),
        "tokenizer": {
            "kind": "CharTokenizer",
            "min_count": MIN_COUNT,
            "end_of_poem": END_OF_POEM,
            "unknown": UNKNOWN,
            "line_ends": LINE_ENDS,
        },
        "data": {
            "archive": ARCHIVES["chinese-poetry"].requirement,
            "members": list(MEMBERS),
            "split": SPLIT,
            "regulated_poems": len(poems),
            "train_poems": len(train_poems),
            "val_poems": len(val_poems),
            "val_poets": len(val_authors),
            "train_poets": len({p.author for p in train_poems}),
            "train_chars": len(train_ids),
            "val_chars": len(val_ids),
            "tokens_seen": history.tokens_seen[-1] if history.tokens_seen else 0,
        },
        "results": results,
        "files": {n: sha256_file(staged / n) for n in (WEIGHTS_FILE, TOKENIZER_FILE, META_FILE)},
    }
    _write_manifest(staged, manifest)
    _replace_folder(staged, args.out)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
