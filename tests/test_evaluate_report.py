"""gptlab.evaluate.report: the smoke suite end to end, and safe report writing."""

from __future__ import annotations

import json

import pytest
import torch

import gptlab
from gptlab.evaluate import bootstrap_ci
from gptlab.evaluate.report import (
    SUITES,
    evaluate_suite,
    report_markdown,
    score_dict,
    write_report,
)


@pytest.fixture(scope="module")
def smoke_report():
    _, tokenizer = gptlab.load_reference_model()
    torch.manual_seed(0)
    config = gptlab.GPTConfig(
        n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.vocab_size
    )
    return evaluate_suite(gptlab.GPT(config), tokenizer, "smoke", progress=False)


def test_smoke_suite_reports_every_score_with_an_interval_and_n(smoke_report):
    spec = SUITES["smoke"]
    scores = smoke_report["scores"]
    assert set(scores) == {"code_pass@1", "mc_accuracy", "cloze_accuracy", "bits_per_byte"}
    assert scores["code_pass@1"]["n"] == spec.code_problems
    assert scores["mc_accuracy"]["n"] == spec.mc_items
    assert scores["cloze_accuracy"]["n"] == spec.cloze_items
    for s in scores.values():
        assert s["low"] <= s["value"] <= s["high"] and s["confidence"] == 0.95
    assert scores["code_pass@1"]["value"] == 0.0  # a random model writes no working code
    assert sum(scores["code_pass@1"]["outcomes"].values()) == spec.code_problems
    # an untrained model is near uniform over 4096 tokens: about 12 bits per token
    assert 2.0 < scores["bits_per_byte"]["value"] < 12.5
    assert smoke_report["held_out_plays"] == [
        "Timon of Athens",
        "Titus Andronicus",
        "Troilus and Cressida",
    ]
    json.dumps(smoke_report)  # JSON-ready


def test_write_report_is_atomic_and_refuses_to_overwrite(smoke_report, tmp_path):
    json_path, md_path = write_report(smoke_report, tmp_path / "cards" / "tiny.json")
    assert json.loads(json_path.read_text()) == smoke_report
    assert md_path.read_text() == report_markdown(smoke_report)
    assert "| mc_accuracy |" in md_path.read_text()
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["tiny.json", "tiny.md"]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_report(smoke_report, tmp_path / "cards" / "tiny")
    changed = {**smoke_report, "suite": "changed"}
    write_report(changed, tmp_path / "cards" / "tiny", overwrite=True)
    assert json.loads(json_path.read_text())["suite"] == "changed"
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["tiny.json", "tiny.md"]


def test_bad_suite_and_report_are_refused():
    model = gptlab.GPT(
        gptlab.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=64)
    )
    with pytest.raises(ValueError, match="unknown suite"):
        evaluate_suite(model, gptlab.CharTokenizer.from_text("ab"), "huge")
    with pytest.raises(TypeError):
        report_markdown({"no": "scores"})


def test_score_dict_carries_the_bootstrap_interval_then_the_extras():
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    interval = bootstrap_ci(scores, n_resamples=500, seed=3)
    score = score_dict(interval, description="toy", outcomes={"passed": 5, "failed": 3})
    assert list(score) == ["value", "low", "high", "n", "confidence", "description", "outcomes"]
    assert score["value"] == pytest.approx(5 / 8) == interval.estimate
    assert (score["low"], score["high"]) == (interval.low, interval.high)
    assert score["low"] < score["value"] < score["high"]
    assert score["n"] == 8 and score["confidence"] == 0.95
    assert score["outcomes"] == {"passed": 5, "failed": 3}
    json.dumps(score)
    with pytest.raises(ValueError, match="overwrite"):
        score_dict(interval, n=3)
    with pytest.raises(TypeError, match="Interval"):
        score_dict({"value": 0.5})
