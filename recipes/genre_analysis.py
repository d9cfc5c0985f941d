"""Chapter 7's results, re-run with error bars: three seeds, a bootstrap over the test plays, a
random-init control trained until it fits its training set, and an easy task beside genre.

    OMP_NUM_THREADS=1 python recipes/genre_analysis.py --seeds 3

Two tasks, both split by play exactly as chapter 7 splits them (``split_documents`` with seed
0, 20 % of each genre's plays held out: 31 training plays, 7 test plays):

* ``genre``: chapter 7's task, 16 passages of 64 tokens per play, labels comedy / history /
  tragedy (majority baseline 0.43);
* ``verse_prose``: is a passage verse or prose? 48 passages per play labelled by
  :func:`gptlab.finetune.verse_or_prose`, balanced by subsampling (chance = majority = 0.50).

Three starting points per task and seed, as in chapter 7:

* ``top``: the reference model, top block + final LayerNorm + head trainable, lr 1e-3, 3 epochs;
* ``full``: the reference model, every parameter trainable, lr 3e-4, 3 epochs;
* ``random``: the same architecture from GPT-2's random initialisation, every parameter
  trainable, lr 3e-4, trained until its training accuracy (on the batches as trained) reaches
  ``--fit`` (0.99) or ``--max-epochs`` (40). The test accuracy after epoch 3 is chapter 7's
  control; the one at the end is the control "trained to convergence". No epoch is chosen by
  looking at the test set.

The passages are the chapter's (data seed 0); a seed changes the head's initialisation, the
shuffling and, for ``random``, the trunk's initialisation. Every run stores its test
predictions after epoch 3 and at its end, so the chapter recomputes every accuracy and interval
from them. Intervals are percentile bootstraps over the test **plays** (10,000 resamples of the
7 plays, each play's accuracy averaged over the seeds and weighted by its passages): the
passages of one play share its characters and style, so they are not independent evidence.

It writes gptlab/assets/classification/genre_analysis.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys
import time
from typing import Any

import torch

from gptlab import GPT, finetune, load_corpus, load_reference_model, seed_everything
from gptlab.evaluate.uncertainty import bootstrap_ci
from gptlab.utils import atomic_write, provenance, round_floats

OUT_FILE = (
    pathlib.Path(__file__).resolve().parents[1]
    / "gptlab"
    / "assets"
    / "classification"
    / "genre_analysis.json"
)
DATA_SEED = 0
PASSAGE_TOKENS = 64
COMPARE_EPOCH = 3  # chapter 7's budget
N_EARLY = 5  # first step losses stored per run (the test re-runs them)
CONDITIONS: dict[str, dict[str, Any]] = {
    "top": {"label": "reference, top block", "init": "reference", "blocks": 1, "lr": 1e-3},
    "full": {"label": "reference, full", "init": "reference", "blocks": None, "lr": 3e-4},
    "random": {"label": "random init, full", "init": "random", "blocks": None, "lr": 3e-4},
}
TASKS = {
    "genre": "which kind of play: comedy, history or tragedy",
    "verse_prose": "is the passage verse or prose",
}


def datasets(task: str, tokenizer: Any) -> tuple[finetune.PassageDataset, ...]:
    """The chapter's training and test passages for ``task`` (data seed 0)."""
    plays = load_corpus("shakespeare").documents
    if task == "genre":
        return finetune.build_genre_datasets(
            plays, tokenizer, test_fraction=0.2, passage_tokens=PASSAGE_TOKENS,
            train_passages_per_document=16, test_passages_per_document=16, seed=DATA_SEED,
        )  # fmt: skip
    if task == "verse_prose":
        return finetune.build_verse_prose_datasets(
            plays, tokenizer, test_fraction=0.2, passage_tokens=PASSAGE_TOKENS,
            passages_per_document=48, seed=DATA_SEED,
        )  # fmt: skip
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def classifier(condition: str, reference: GPT, n_classes: int, seed: int) -> finetune.GPTClassifier:
    """A fresh classifier for ``condition``: a copy of the reference trunk or a random one."""
    spec = CONDITIONS[condition]
    if spec["init"] == "reference":
        trunk = copy.deepcopy(reference)
    else:
        seed_everything(seed)
        trunk = GPT(reference.config)  # GPT-2's initialisation, drawn from the seeded RNG
    clf = finetune.GPTClassifier(trunk, n_classes, seed=seed)
    finetune.freeze(clf, trainable_blocks=spec["blocks"])
    return clf


def run(condition: str, seed: int, train_data, test_data, reference: GPT, *,
        fit: float = 0.99, max_epochs: int = 40, stop_at_epoch: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train one classifier; return its history and its test predictions after epoch 3 and at
    the end (the end is epoch 3 for the reference runs)."""
    spec = CONDITIONS[condition]
    clf = classifier(condition, reference, len(train_data.label_names), seed)
    epochs = COMPARE_EPOCH if spec["init"] == "reference" else max_epochs
    if stop_at_epoch is not None:
        epochs = min(epochs, stop_at_epoch)
    predictions: dict[int, list[int]] = {}

    def on_epoch(epoch: int, history: finetune.ClassifierHistory) -> bool:
        if epoch == COMPARE_EPOCH:
            predictions[epoch] = finetune.predict(clf, test_data).tolist()
        if spec["init"] == "random" and epoch >= COMPARE_EPOCH:
            return history.train_accuracy[-1] >= fit
        return False

    wall, cpu = time.perf_counter(), time.process_time()
    hist = finetune.train_classifier(
        clf, train_data, test_data, epochs=epochs, batch_size=16, lr=spec["lr"], seed=seed,
        on_epoch=on_epoch,
    )  # fmt: skip
    final = finetune.predict(clf, test_data).tolist()
    return {
        "condition": condition,
        "seed": seed,
        "epochs": len(hist.train_loss),
        "trainable_parameters": hist.trainable_parameters,
        "early_step_losses": hist.step_loss[:N_EARLY],
        "train_loss": hist.train_loss,
        "train_accuracy": hist.train_accuracy,
        "test_accuracy": hist.test_accuracy,
        "predictions_epoch3": predictions.get(COMPARE_EPOCH),
        "predictions_final": final,
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
    }


def per_play(predictions: list[list[int]], labels: list[int], titles: list[str]) -> dict[str, Any]:
    """Each test play's accuracy, averaged over the seeds' predictions, and its passage count."""
    plays = sorted(set(titles))
    out = {}
    for play in plays:
        rows = [i for i, t in enumerate(titles) if t == play]
        correct = [sum(p[i] == labels[i] for i in rows) / len(rows) for p in predictions]
        out[play] = {"accuracy": sum(correct) / len(correct), "passages": len(rows)}
    return out


def play_interval(accuracy: dict[str, Any], minus: dict[str, Any] | None = None) -> dict[str, Any]:
    """Percentile-bootstrap 95 % interval over plays (weighted by passages) for a mean accuracy
    or, with ``minus``, for the difference of two conditions on the same plays."""
    plays = sorted(accuracy)
    values = [accuracy[p]["accuracy"] - (minus[p]["accuracy"] if minus else 0.0) for p in plays]
    weights = [accuracy[p]["passages"] for p in plays]
    ci = bootstrap_ci(values, weights=weights, n_resamples=10_000, seed=0)
    return {"estimate": ci.estimate, "ci95": [ci.low, ci.high], "plays": len(plays)}


ARMS = {  # what the summary compares: (condition, which predictions)
    "top": ("top", "predictions_final"),
    "full": ("full", "predictions_final"),
    "random": ("random", "predictions_final"),
    "random_epoch3": ("random", "predictions_epoch3"),
}
DIFFERENCES = [("top", "random_epoch3"), ("top", "random"), ("full", "top"), ("full", "random"),
               ("top", "majority"), ("random", "majority")]  # fmt: skip


def summarise(runs: list[dict[str, Any]], labels: list[int], titles: list[str],
              majority: list[int]) -> dict[str, Any]:  # fmt: skip
    """Per arm: accuracy per seed, per play (seed-averaged), play-bootstrap interval; and the
    paired differences the chapter discusses. ``majority`` holds the majority baseline's
    predictions (the training majority label of each test passage's split)."""
    by_play, out = {}, {"arms": {}, "differences": {}}
    arms = {name: [r[key] for r in runs if r["condition"] == c] for name, (c, key) in ARMS.items()}
    arms["majority"] = [majority]
    for name, preds in arms.items():
        accs = [
            sum(int(a == b) for a, b in zip(p, labels, strict=True)) / len(labels) for p in preds
        ]
        by_play[name] = per_play(preds, labels, titles)
        out["arms"][name] = {"per_seed": accs, "mean": sum(accs) / len(accs),
                             "per_play": by_play[name], "interval": play_interval(by_play[name])}  # fmt: skip
    for a, b in DIFFERENCES:
        out["differences"][f"{a} - {b}"] = play_interval(by_play[a], by_play[b])
    return out


def fold_datasets(task: str, tokenizer: Any, train_docs, test_docs) -> tuple[Any, Any]:
    """``task``'s passages for one cross-validation fold (the same cutting as the chapter's)."""
    if task == "genre":
        names = ("comedy", "history", "tragedy")
        common = dict(label_names=names, passage_tokens=PASSAGE_TOKENS, passages_per_document=16)
        return (finetune.make_passages(train_docs, tokenizer, seed=DATA_SEED, **common),
                finetune.make_passages(test_docs, tokenizer, seed=DATA_SEED + 1, **common))  # fmt: skip
    common = dict(passage_tokens=PASSAGE_TOKENS, passages_per_document=48)
    return (finetune.verse_prose_passages(train_docs, tokenizer, seed=DATA_SEED, **common),
            finetune.verse_prose_passages(test_docs, tokenizer, seed=DATA_SEED + 1, **common))  # fmt: skip


def _majority(train_data, test_data) -> list[int]:
    label = int(torch.bincount(train_data.labels).argmax())  # ties: the first label
    return [label] * len(test_data)


def _log(task: str, where: str, r: dict[str, Any]) -> None:
    print(f"{task:11} {where:7} {r['condition']:6}: {r['epochs']:2} epochs, test acc "
          f"{r['test_accuracy'][-1]:.3f} (epoch 3: {r['test_accuracy'][2]:.3f}), "
          f"{r['cpu_seconds']:.0f} CPU-s", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0 .. N-1")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (seed 0; "
                        "0 to skip)")  # fmt: skip
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    parser.add_argument("--fit", type=float, default=0.99, help="random init trains until this "
                        "training accuracy")  # fmt: skip
    parser.add_argument("--max-epochs", type=int, default=40, help="cap for the random init")
    parser.add_argument("--out", type=pathlib.Path, default=OUT_FILE, help="JSON file to write")
    parser.add_argument("--hardware", default="2 shared CPU cores (x86-64), 1 thread")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.folds == 1 or args.folds < 0:
        parser.error("--folds must be 0 (skip) or at least 2")
    if not 0 < args.fit <= 1:
        parser.error("--fit must be a training accuracy in (0, 1], e.g. 0.99")
    if args.max_epochs < COMPARE_EPOCH:
        parser.error(f"--max-epochs must be at least {COMPARE_EPOCH}")

    reference, tokenizer = load_reference_model()
    reference = reference.eval()
    train_args = dict(fit=args.fit, max_epochs=args.max_epochs)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    results: dict[str, Any] = {"tasks": {}, "cross_validation": {}}
    for task in tasks:
        train_data, test_data = datasets(task, tokenizer)
        runs = []
        for seed in range(args.seeds):
            for condition in CONDITIONS:
                runs.append(run(condition, seed, train_data, test_data, reference, **train_args))
                _log(task, f"seed {seed}", runs[-1])
        labels, titles = test_data.labels.tolist(), list(test_data.titles)
        majority = _majority(train_data, test_data)
        results["tasks"][task] = {
            "description": TASKS[task],
            "label_names": list(test_data.label_names),
            "train_passages": len(train_data),
            "test_passages": len(test_data),
            "test_plays": test_data.documents(),
            "test_labels": labels,
            "test_titles": titles,
            "majority_predictions": majority,
            "summary": summarise(runs, labels, titles, majority),
            "runs": runs,
        }
    plays = load_corpus("shakespeare").documents
    for task in tasks if args.folds else []:
        folds, labels, titles, majority = [], [], [], []
        merged = {c: {"condition": c, "seed": 0, "predictions_final": [], "predictions_epoch3": []}
                  for c in CONDITIONS}  # fmt: skip
        for f, (train_docs, test_docs) in enumerate(finetune.document_folds(plays, args.folds)):
            train_data, test_data = fold_datasets(task, tokenizer, train_docs, test_docs)
            fold = {"fold": f, "test_plays": test_data.documents(), "train_passages": len(train_data),
                    "test_passages": len(test_data), "runs": []}  # fmt: skip
            for condition in CONDITIONS:
                r = run(condition, 0, train_data, test_data, reference, **train_args)
                _log(task, f"fold {f}", r)
                for key in ("predictions_final", "predictions_epoch3"):
                    merged[condition][key] += r[key]
                fold["runs"].append({k: v for k, v in r.items() if not k.startswith("predictions")})
            labels += test_data.labels.tolist()
            titles += list(test_data.titles)
            majority += _majority(train_data, test_data)
            folds.append(fold)
        results["cross_validation"][task] = {
            "folds": folds,
            "test_labels": labels,
            "test_titles": titles,
            "majority_predictions": majority,
            "predictions": {
                c: {k: m[k] for k in ("predictions_final", "predictions_epoch3")}
                for c, m in merged.items()
            },  # fmt: skip
            "summary": summarise(list(merged.values()), labels, titles, majority),
        }
    results = {
        "name": "chapter 7: genre and verse/prose classifiers over seeds and folds, with "
        "play-bootstrap intervals",
        **provenance(),
        "command": f"OMP_NUM_THREADS=1 python recipes/genre_analysis.py --seeds {args.seeds} "
        f"--folds {args.folds} --fit {args.fit} --max-epochs {args.max_epochs}",
        "hardware": args.hardware,
        "torch_threads": torch.get_num_threads(),
        "data_seed": DATA_SEED,
        "passage_tokens": PASSAGE_TOKENS,
        "compare_epoch": COMPARE_EPOCH,
        "fit": args.fit,
        "max_epochs": args.max_epochs,
        "conditions": CONDITIONS,
        "seeds": list(range(args.seeds)),
        "n_folds": args.folds,
        **results,
        "total_wall_seconds": time.perf_counter() - start_wall,
        "total_cpu_seconds": time.process_time() - start_cpu,
    }
    with atomic_write(args.out, "w") as f:
        f.write(json.dumps(round_floats(results), indent=1) + "\n")
    print(f"wrote {args.out} ({results['total_cpu_seconds']:.0f} CPU-seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
