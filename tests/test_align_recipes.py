"""recipes/dpo.py and recipes/grpo.py run end to end (a couple of steps) and write their JSON."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_grpo_recipe_smoke_run(tmp_path) -> None:
    out = tmp_path / "grpo.json"
    argv = ["--steps", "2", "--sft-steps", "2", "--numbers", "300", "--n-test", "20",
            "--prompts-per-step", "2", "--out", str(out)]  # fmt: skip
    assert recipe("grpo").main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert len(results["history"]["mean_reward"]) == 2
    before = results["exact_match_before"]
    assert before["n"] == 20 and before["low"] <= before["rate"] <= before["high"]
    assert results["final_kl"] >= 0 and results["grpo_seconds"] > 0


@pytest.mark.slow
def test_dpo_recipe_smoke_run(tmp_path) -> None:
    out = tmp_path / "dpo.json"
    argv = ["--steps", "2", "--sft-steps", "2", "--questions", "12", "--n-test", "4",
            "--samples", "4", "--out", str(out)]  # fmt: skip
    assert recipe("dpo").main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["pairs"] >= 1 and len(results["history"]["loss"]) == 2
    assert set(results["follow_rate_after"]) == {
        "Answer in one word.", "Reply in lowercase.", "End your reply with a question.", "all",
    }  # fmt: skip
    assert results["follow_rate_before"]["all"]["n"] == 12  # 4 questions x 3 instructions
