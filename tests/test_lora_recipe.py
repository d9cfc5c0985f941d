"""recipes/smollm2_lora.py's first steps, and the result it stored for chapter 8."""

from __future__ import annotations

import json
import pathlib

import pytest

from gptlab import applications

ROOT = pathlib.Path(__file__).resolve().parents[1]
STORED = ROOT / "gptlab" / "assets" / "lora" / "smollm2_numerals.json"
ADAPTER = ROOT / "gptlab" / "assets" / "lora" / "smollm2_numerals_adapter"


def test_stored_result_is_consistent() -> None:
    results = json.loads(STORED.read_text(encoding="utf-8"))
    numbers = results["test_numbers"]
    assert len(numbers) == results["exact_after"]["n"] == results["settings"]["n_test"]
    train, test = applications.split_numbers(10_000, len(numbers), seed=0)
    assert numbers == test and results["train_numbers"] == len(train)
    assert (
        " 0 exact duplicates" in results["split_check"] and " 0 overlap" in results["split_check"]
    )
    pairs = applications.number_pairs(numbers)
    for key, replies in (("exact_before", "replies_before"), ("exact_after", "replies_after")):
        rate = sum(r == n for r, (_, n) in zip(results[replies], pairs, strict=True)) / len(pairs)
        assert results[key]["rate"] == pytest.approx(rate)  # the rates are the replies' scores
    assert results["lora"]["parameters"] == 460_800
    from gptlab.lora import ADAPTER_MANIFEST

    manifest = json.loads((ADAPTER / ADAPTER_MANIFEST).read_text(encoding="utf-8"))
    assert manifest["parameters"] == 460_800 and manifest["metadata"]["steps"] == 120


@pytest.mark.slow
def test_recipe_first_steps_reproduce_the_stored_run(tmp_path, load_recipe) -> None:
    """Two steps of the recipe on a few numbers: the base model's replies to held-out numbers
    are the stored ones, the adapter is written with its hash and loads onto a fresh SmolLM2."""
    from gptlab import load_pretrained
    from gptlab.lora import load_lora_adapter

    out, adapter = tmp_path / "smollm2_lora.json", tmp_path / "adapter"
    argv = ["--steps", "2", "--n-test", "4", "--train-numbers", "16", "--facts", "2",
            "--out", str(out), "--adapter-dir", str(adapter)]  # fmt: skip
    recipe = load_recipe("smollm2_lora")
    assert recipe.main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    stored = json.loads(STORED.read_text(encoding="utf-8"))
    stored_reply = dict(zip(stored["test_numbers"], stored["replies_before"], strict=True))
    assert set(results["test_numbers"]) <= set(stored_reply)  # the same shuffle, held out first
    same = sum(stored_reply[n] == r for n, r in zip(results["test_numbers"],
                                                    results["replies_before"], strict=True))  # fmt: skip
    assert same >= 3  # greedy replies of the untuned model (a near-tie may flip on another CPU)
    history = results["history"]
    assert len(history["train_loss"]) == 2 and results["train_numbers"] == 16
    assert history["train_loss"][0] == pytest.approx(stored["history"]["train_loss"][0], rel=0.5)
    manifest = load_lora_adapter(load_pretrained("smollm2-135m-instruct")[0], adapter)
    assert manifest["parameters"] == 460_800 and manifest["metadata"]["steps"] == 2
    with pytest.raises(SystemExit):
        recipe.main(["--steps", "0", "--out", str(out)])
