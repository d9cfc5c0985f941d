"""recipes/gpt_ablation.py: each variant changes what it says, and its first steps match the
stored run (chapter 4 loads the stored results)."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
STORED = ROOT / "gptlab" / "assets" / "ablation" / "gpt_ablation.json"


@pytest.fixture(scope="module")
def recipe(load_recipe):
    return load_recipe("gpt_ablation")


def test_variants_change_one_thing(recipe) -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 16))
    base = recipe.build("gpt", 50, 0)
    logits = {v: recipe.build(v, 50, 0)(x)[0] for v in ("gpt", "lr_8e-3", "no_sqrt_dk",
                                                            "no_residual", "no_wpe", "bigram")}  # fmt: skip
    assert torch.equal(logits["gpt"], logits["lr_8e-3"])  # same model, another learning rate
    for v in ("no_sqrt_dk", "no_residual", "no_wpe", "bigram"):
        assert not torch.allclose(logits[v], logits["gpt"]), v
    bigram = recipe.build("bigram", 50, 0)
    assert len(bigram.transformer.h) == 0 and not bigram.transformer.wpe.weight.requires_grad
    # a bigram model's logits at a position depend on that token only
    y = x.clone()
    y[:, :-1] = torch.randint(0, 50, (2, 15))
    torch.testing.assert_close(bigram(x)[0][:, -1], bigram(y)[0][:, -1])
    # without 1/sqrt(d_k) the attention scores are sqrt(d_k) times larger: same as scaling q
    block, plain = recipe.build("no_sqrt_dk", 50, 0).transformer.h[0], base.transformer.h[0]
    h = torch.randn(1, 5, 128)
    C, hs = 128, 128 // 4
    q = plain.attn.c_attn(h)[..., :C]
    torch.testing.assert_close(block.attn.c_attn(h)[..., :C], q * math.sqrt(hs))
    with pytest.raises(ValueError, match="unknown variant"):
        recipe.build("no_mlp", 50, 0)


def test_first_steps_match_the_stored_run(recipe) -> None:
    from gptlab.reference import reference_splits

    stored = json.loads(STORED.read_text(encoding="utf-8"))
    assert set(stored["variants"]) == set(recipe.VARIANTS)
    early = {r["variant"]: r["early_train_losses"] for r in stored["runs"] if r["seed"] == 0}
    train_ids, _ = reference_splits()
    for name in ("gpt", "no_residual", "lr_3e-2"):
        run = recipe.run(name, 0, stored["train"]["steps"], train_ids, None, 4096, stop_at=3)
        torch.testing.assert_close(
            torch.tensor(run["train_loss"]), torch.tensor(early[name]), rtol=1e-3, atol=0
        )
    for v in stored["variants"].values():
        lo, hi = v["val_loss"]["ci95"]
        assert lo <= v["val_loss"]["mean"] <= hi and len(v["val_loss"]["per_seed"]) == 3
    with pytest.raises(SystemExit):
        recipe.main(["--variants", "gpt,nonsense"])
