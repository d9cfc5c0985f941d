"""recipes/genre_analysis.py: the stored results are what their own predictions say, the
passages are the chapter's, and the first steps of a run match the stored run (chapter 7 loads
the stored results)."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
STORED = ROOT / "gptlab" / "assets" / "classification" / "genre_analysis.json"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recipe(load_recipe):
    return load_recipe("genre_analysis")


@pytest.fixture(scope="module")
def stored():
    return json.loads(STORED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def reference():
    from gptlab import load_reference_model

    model, tok = load_reference_model()
    return model.eval(), tok


def test_stored_summary_is_recomputed_from_the_stored_predictions(recipe, stored) -> None:
    assert set(stored["tasks"]) == set(recipe.TASKS)
    assert stored["seeds"] == [0, 1, 2]
    for result in stored["tasks"].values():
        labels = result["test_labels"]
        runs = result["runs"]
        assert {(r["condition"], r["seed"]) for r in runs} == {
            (c, s) for c in recipe.CONDITIONS for s in stored["seeds"]
        }
        for r in runs:
            acc = sum(p == y for p, y in zip(r["predictions_final"], labels, strict=True))
            assert acc / len(labels) == pytest.approx(r["test_accuracy"][-1], abs=1e-6)
            acc3 = sum(p == y for p, y in zip(r["predictions_epoch3"], labels, strict=True))
            assert acc3 / len(labels) == pytest.approx(r["test_accuracy"][2], abs=1e-6)
            if r["condition"] == "random":  # trained until it fits, or to the cap
                assert (
                    r["train_accuracy"][-1] >= stored["fit"] or r["epochs"] == stored["max_epochs"]
                )
                assert all(a < stored["fit"] for a in r["train_accuracy"][2:-1])  # stopped at once
            else:
                assert r["epochs"] == stored["compare_epoch"]
        _check_summary(recipe, runs, result)


def _check_summary(recipe, runs, result) -> None:
    """The stored summary equals the one recomputed from the stored predictions."""
    labels, titles = result["test_labels"], result["test_titles"]
    summary = recipe.summarise(runs, labels, titles, result["majority_predictions"])
    stored = result["summary"]
    assert set(summary["arms"]) == set(stored["arms"]) == {*recipe.ARMS, "majority"}
    for name, arm in stored["arms"].items():
        mine = summary["arms"][name]
        assert mine["per_seed"] == pytest.approx(arm["per_seed"], abs=1e-6)
        assert mine["interval"]["ci95"] == pytest.approx(arm["interval"]["ci95"], abs=1e-6)
        lo, hi = arm["interval"]["ci95"]
        assert lo <= arm["interval"]["estimate"] <= hi
        assert arm["interval"]["estimate"] == pytest.approx(arm["mean"], abs=1e-6)
        assert arm["interval"]["plays"] == len(set(titles))
    for name, diff in stored["differences"].items():
        assert summary["differences"][name]["ci95"] == pytest.approx(diff["ci95"], abs=1e-6)
        a, b = name.split(" - ")
        gap = stored["arms"][a]["mean"] - stored["arms"][b]["mean"]
        assert diff["estimate"] == pytest.approx(gap, abs=1e-5)


def test_cross_validation_tests_every_play_once(recipe, stored) -> None:
    from gptlab import load_corpus

    plays = sorted(p.title for p in load_corpus("shakespeare").documents)
    assert stored["n_folds"] == 5
    for cv in stored["cross_validation"].values():
        tested = [t for fold in cv["folds"] for t in fold["test_plays"]]
        assert sorted(tested) == plays  # every play in exactly one test fold
        assert sorted(set(cv["test_titles"])) == plays
        for fold in cv["folds"]:
            assert [r["condition"] for r in fold["runs"]] == list(recipe.CONDITIONS)
        runs = [{"condition": c, "seed": 0, **preds} for c, preds in cv["predictions"].items()]
        for r in runs:
            assert len(r["predictions_final"]) == len(cv["test_labels"])
        _check_summary(recipe, runs, cv)
    assert stored["cross_validation"]["verse_prose"]["summary"]["arms"]["majority"]["mean"] == 0.5


def test_stored_passages_are_the_chapters(recipe, stored, reference) -> None:
    _, tok = reference
    for task, result in stored["tasks"].items():
        train, test = recipe.datasets(task, tok)
        assert test.labels.tolist() == result["test_labels"]
        assert list(test.titles) == result["test_titles"]
        assert len(train) == result["train_passages"]
        assert not set(train.titles) & set(test.titles)  # split by play
        from gptlab.finetune import majority_baseline

        baseline = majority_baseline(train.labels, test.labels)
        assert baseline == pytest.approx(result["summary"]["arms"]["majority"]["mean"], abs=1e-6)
        assert set(result["majority_predictions"]) == {int(train.labels.mode().values)}
    assert stored["tasks"]["verse_prose"]["summary"]["arms"]["majority"]["mean"] == 0.5


@pytest.mark.parametrize(("task", "condition"), [("genre", "top"), ("verse_prose", "random")])
def test_first_steps_match_the_stored_run(recipe, stored, reference, task, condition) -> None:
    model, tok = reference
    train, test = recipe.datasets(task, tok)
    run = recipe.run(condition, 0, train, test, model, stop_at_epoch=1)
    (early,) = [
        r["early_step_losses"]
        for r in stored["tasks"][task]["runs"]
        if r["condition"] == condition and r["seed"] == 0
    ]
    torch.testing.assert_close(
        torch.tensor(run["early_step_losses"]), torch.tensor(early), rtol=1e-3, atol=0
    )
    assert run["epochs"] == 1 and run["predictions_epoch3"] is None


def test_random_condition_starts_from_a_random_trunk(recipe, reference) -> None:
    model, _ = reference
    a = recipe.classifier("random", model, 3, seed=0)
    b = recipe.classifier("random", model, 3, seed=0)
    c = recipe.classifier("top", model, 3, seed=0)
    wte = model.transformer.wte.weight
    assert torch.equal(a.gpt.transformer.wte.weight, b.gpt.transformer.wte.weight)  # seeded
    assert not torch.allclose(a.gpt.transformer.wte.weight, wte)
    assert torch.equal(c.gpt.transformer.wte.weight, wte) and c.gpt is not model  # a copy
    assert sum(p.requires_grad for p in c.parameters()) < sum(
        p.requires_grad for p in a.parameters()
    )
    with pytest.raises(ValueError, match="unknown task"):
        recipe.datasets("sentiment", None)
