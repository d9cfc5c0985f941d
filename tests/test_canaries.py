"""Canaries (chapter 10): planting copies in a stream, scoring secrets, exposure; the recipe."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import pathlib

import pytest
import torch

from gptlab.interpret import exposure, insert_canaries, sequence_logprobs
from gptlab.model import GPT, GPTConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "gptlab" / "assets" / "canaries" / "canaries.json"


def _count(stream: list[int], sub: list[int]) -> int:
    n = len(sub)
    return sum(stream[i : i + n] == sub for i in range(len(stream) - n + 1))


def _remove(stream: list[int], subs: list[list[int]]) -> list[int]:
    out, i = [], 0
    while i < len(stream):
        hit = next((s for s in subs if stream[i : i + len(s)] == s), None)
        if hit is None:
            out.append(stream[i])
            i += 1
        else:
            i += len(hit)
    return out


# ---- insert_canaries ---------------------------------------------------------------------------


def test_insert_canaries_plants_each_copy_whole_and_keeps_the_stream() -> None:
    ids = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(0))
    canaries = [[90, 91, 92], [93, 94], [95, 96, 97, 98]]
    counts = [0, 3, 7]
    out = insert_canaries(ids, canaries, counts, generator=torch.Generator().manual_seed(1))
    assert len(out) == 500 + 3 * 0 + 2 * 3 + 4 * 7
    assert [_count(out.tolist(), c) for c in canaries] == counts
    assert _remove(out.tolist(), canaries) == ids.tolist()  # nothing else changed or moved
    assert out.dtype == ids.dtype


def test_insert_canaries_after_token_starts_every_copy_after_it() -> None:
    ids = torch.tensor([1, 2, 10, 3, 4, 10, 5, 10, 6, 7, 10])
    out = insert_canaries(ids, [[90, 91]], [3], after_token=10).tolist()
    starts = [i for i in range(len(out)) if out[i : i + 2] == [90, 91]]
    assert len(starts) == 3 and all(out[s - 1] == 10 for s in starts)


def test_insert_canaries_is_seeded_and_spreads_copies() -> None:
    ids = torch.zeros(10_000, dtype=torch.long)
    a = insert_canaries(ids, [[7]], [50], generator=torch.Generator().manual_seed(3))
    b = insert_canaries(ids, [[7]], [50], generator=torch.Generator().manual_seed(3))
    c = insert_canaries(ids, [[7]], [50], generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    where = (a == 7).nonzero().flatten().float()
    assert where.min() < 2_000 and where.max() > 8_000  # uniform, not bunched at one end


@pytest.mark.parametrize(
    ("canaries", "counts", "match"),
    [
        ([[1]], [1, 2], "one count per canary"),
        ([[]], [1], "canary 0 is empty"),
        ([[1]], [-1], "counts"),
        ([[1]], [True], "counts"),
        ([[1]], [10], "distinct places"),
    ],
)
def test_insert_canaries_rejects_bad_input(canaries, counts, match) -> None:
    ids = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match=match):
        insert_canaries(ids, canaries, counts)


def test_insert_canaries_needs_a_1d_stream() -> None:
    with pytest.raises(ValueError, match="1-D"):
        insert_canaries(torch.zeros(2, 3, dtype=torch.long), [[1]], [1])


# ---- sequence_logprobs and exposure -----------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def test_sequence_logprobs_is_the_chain_rule(model) -> None:
    prefix = [3, 1, 4]
    cands = torch.tensor([[1, 5, 9], [2, 6, 5], [3, 5, 8]])
    got = sequence_logprobs(model, prefix, cands, batch_size=2)  # two chunks
    assert got.dtype == torch.float64 and got.shape == (3,)
    for row, value in zip(cands.tolist(), got.tolist(), strict=True):
        seq, total = list(prefix), 0.0
        for tok in row:  # one token at a time, the whole sequence re-run each step
            with torch.no_grad():
                logits, _ = model(torch.tensor([seq]))
            total += torch.log_softmax(logits[0, -1].double(), -1)[tok].item()
            seq.append(tok)
        assert value == pytest.approx(total, abs=1e-5)


def test_sequence_logprobs_sums_to_one_over_all_candidates(model) -> None:
    grid = torch.cartesian_prod(torch.arange(17), torch.arange(17))  # every 2-token candidate
    total = sequence_logprobs(model, [0], grid).exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-6)


def test_sequence_logprobs_rejects_bad_input(model) -> None:
    with pytest.raises(ValueError, match="prefix is empty"):
        sequence_logprobs(model, [], torch.tensor([[1]]))
    with pytest.raises(ValueError, match=r"\(S, m\)"):
        sequence_logprobs(model, [1], torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="block_size"):
        sequence_logprobs(model, [1] * 10, torch.ones(1, 8, dtype=torch.long))


def test_exposure_from_rank() -> None:
    others = torch.tensor([-5.0, -4.0, -3.0, -2.0, -1.0, -6.0, -7.0])  # R = 8
    assert exposure(0.0, others) == pytest.approx(3.0)  # likeliest of 8: log2 8
    assert exposure(-3.5, others) == pytest.approx(3.0 - 2.0)  # rank 4
    assert exposure(-10.0, others) == pytest.approx(0.0)  # least likely: rank R
    assert exposure(-3.0, others) == pytest.approx(3.0 - math.log2(4))  # a tie ranks above it
    assert exposure(torch.tensor(-1.0), torch.full((7,), -1.0)) == pytest.approx(0.0)


def test_exposure_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one alternative"):
        exposure(0.0, torch.tensor([]))
    with pytest.raises(ValueError, match="1-D"):
        exposure(0.0, torch.zeros(2, 2))


# ---- the recipe ---------------------------------------------------------------------------------


def _recipe():
    path = ROOT / "recipes" / "canaries.py"
    spec = importlib.util.spec_from_file_location("recipe_canaries", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stored_results_match_the_recipe_settings() -> None:
    recipe, results = _recipe(), json.loads(RESULTS.read_text(encoding="utf-8"))
    from gptlab.reference import load_reference_tokenizer

    canaries = recipe.make_canaries(load_reference_tokenizer())
    keys = ("name", "prefix", "secret", "copies")
    assert [{k: c[k] for k in keys} for c in results["canaries"]] == canaries
    assert results["train"]["max_steps"] == recipe.TRAIN["max_steps"]
    for c in results["canaries"]:
        for when in ("before", "after"):
            row = c[when]
            assert 0.0 <= row["exposure"] <= results["max_exposure"]
            assert row["recited"] == (row["greedy"] == " " + c["secret"])


@pytest.mark.slow
def test_recipe_first_steps_reproduce_the_stored_losses() -> None:
    """Rebuild the stream and re-run the recipe's first training steps with gptlab.train."""
    from gptlab.reference import load_reference_model
    from gptlab.train import TrainConfig, train

    recipe, results = _recipe(), json.loads(RESULTS.read_text(encoding="utf-8"))
    base, tokenizer = load_reference_model()
    stream = recipe.build_stream(tokenizer, recipe.make_canaries(tokenizer))
    assert len(stream) == results["stream"]["tokens"]
    n = len(results["early_losses"])
    cfg = TrainConfig.from_dict(results["train"])
    history = train(copy.deepcopy(base), stream, None, cfg, stop_at=n)
    assert history.train_loss == pytest.approx(results["early_losses"], rel=1e-4)
