"""recipes/dpo.py and recipes/grpo.py run end to end (a couple of steps) and write their JSON."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_grpo_recipe_smoke_run(tmp_path, load_recipe) -> None:
    out = tmp_path / "grpo.json"
    argv = ["--steps", "2", "--sft-steps", "2", "--numbers", "300", "--n-test", "20",
            "--experiments", "main,partial_credit", "--out", str(out)]  # fmt: skip
    assert load_recipe("grpo").main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert list(results["runs"]) == ["main", "partial_credit"]
    before = results["before"]["exact_match"]
    assert before["n"] == 20 and before["low"] <= before["rate"] <= before["high"]
    for run in results["runs"].values():
        assert len(run["history"]["mean_reward"]) == 2 and run["grpo_seconds"] > 0
        assert run["sampled_kl"]["n"] == 20 * 4
    assert results["runs"]["partial_credit"]["config"]["reward"] == "partial_credit"
    with pytest.raises(SystemExit):
        load_recipe("grpo").main(["--experiments", "nonsense", "--out", str(out)])


@pytest.mark.slow
def test_dpo_recipe_smoke_run(tmp_path, load_recipe) -> None:
    out = tmp_path / "dpo.json"
    argv = ["--steps", "2", "--questions", "12", "--n-test", "4",
            "--samples", "4", "--out", str(out)]  # fmt: skip
    assert load_recipe("dpo").main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["pairs"] >= 1 and len(results["history"]["loss"]) == 2
    assert set(results["follow_rate_after"]) == {
        "Answer in one word.", "Reply in lowercase.", "End your reply with a question.", "all",
    }  # fmt: skip
    assert results["follow_rate_before"]["all"]["n"] == 12  # 4 questions x 3 instructions
    assert results["follow_rate_sft_on_chosen"]["all"]["n"] == 12
    assert len(results["sft_on_chosen_losses"]) == 2 and results["sampled_kl_after"]["n"] == 48


@pytest.mark.slow
def test_smollm2_dpo_recipe_first_steps(tmp_path, load_recipe) -> None:
    """The SmolLM2 recipe's first steps: pairs from its own samples, one DPO step, the adapter
    saved with its hash and loaded back onto a fresh SmolLM2."""
    from gptlab import load_pretrained
    from gptlab.lora import load_lora_adapter

    out, adapter = tmp_path / "smollm2_dpo.json", tmp_path / "adapter"
    argv = ["--questions", "6", "--samples", "8", "--max-new-tokens", "24", "--n-test", "1",
            "--facts", "2", "--steps", "1", "--out", str(out), "--adapter-dir", str(adapter)]  # fmt: skip
    assert load_recipe("smollm2_dpo").main(argv) == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["pairs"] >= 1 and len(results["history"]["loss"]) == 1
    assert results["history"]["loss"][0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert results["lora"]["parameters"] == 460_800  # rank 8 on q_proj and v_proj, 30 layers
    assert results["follow_rate_before"]["all"]["n"] == 3 and results["facts_before"]["n"] == 2
    model, _ = load_pretrained("smollm2-135m-instruct")
    manifest = load_lora_adapter(model, adapter)
    assert manifest["parameters"] == 460_800 and manifest["metadata"]["steps"] == 1
