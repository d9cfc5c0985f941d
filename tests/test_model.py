"""GPTConfig validation, GPT-2's parameter count and initialisation, loss and input checks."""

from __future__ import annotations

import math

import pytest
import torch

import gptlab.model as model_module
from gptlab.model import GPT, PRESETS, GPTConfig, memory_limit_bytes

TINY = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_layer=0), ValueError, "n_layer must be positive"),
        (dict(vocab_size=-3), ValueError, "vocab_size must be positive"),
        (dict(block_size=2.5), TypeError, "block_size must be an int"),
        (dict(n_head=True), TypeError, "n_head must be an int"),
        (
            dict(n_embd=100, n_head=12),
            ValueError,
            r"divisible by n_head \(12\).*n_head=10.*n_embd=108",
        ),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(activation="relu"), ValueError, "activation must be one of.*gelu_tanh"),
        (dict(bias="yes"), TypeError, "bias must be True or False"),
        (dict(layer_norm_eps=0.0), ValueError, "layer_norm_eps must be > 0"),
        # non-finite floats used to be accepted
        (dict(layer_norm_eps=float("inf")), ValueError, "layer_norm_eps must be > 0 and finite"),
        (dict(layer_norm_eps=float("nan")), ValueError, "layer_norm_eps must be > 0 and finite"),
        (dict(layer_norm_eps=-float("inf")), ValueError, "layer_norm_eps must be > 0 and finite"),
        (dict(layer_norm_eps="1e-5"), TypeError, "layer_norm_eps must be a float"),
        (dict(dropout=float("nan")), ValueError, r"dropout must be in \[0, 1\)"),
    ],
)
def test_config_validation_messages(kwargs, error, match):
    with pytest.raises(error, match=match):
        GPTConfig(**kwargs)


def test_presets_and_dict_round_trip():
    assert set(PRESETS) >= {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "nano", "micro", "mini"}
    xl = GPTConfig.preset("gpt2-xl")
    assert (xl.n_layer, xl.n_head, xl.n_embd, xl.block_size) == (48, 25, 1600, 1024)
    nano = GPTConfig.preset("nano", vocab_size=65)
    assert nano.vocab_size == 65 and nano.n_layer == 2
    assert GPTConfig.from_dict(nano.to_dict()) == nano
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_layers'\].*valid"):
        GPTConfig.from_dict({**nano.to_dict(), "n_layers": 3})
    with pytest.raises(ValueError, match="unknown preset 'gpt3'; choose one of"):
        GPTConfig.preset("gpt3")


def test_gpt2_parameter_count_and_breakdown():
    # Built on the meta device: the count needs shapes, not 500 MB of random numbers.
    with torch.device("meta"):
        model = GPT(GPTConfig.preset("gpt2"))
    assert model.num_parameters() == 124_439_808
    assert model.num_parameters(non_embedding=True) == 124_439_808 - 50257 * 768 - 1024 * 768
    parts = model.parameter_breakdown()
    assert sum(parts.values()) == 124_439_808
    assert parts["wte"] == 50257 * 768 and parts["wpe"] == 1024 * 768
    assert parts["h.0.attn"] == 768 * 3 * 768 + 3 * 768 + 768 * 768 + 768
    assert parts["h.11.mlp"] == 2 * 4 * 768 * 768 + 4 * 768 + 768
    assert parts["h.5.ln_1"] == 2 * 768 and parts["ln_f"] == 2 * 768
    assert "lm_head" not in parts  # tied: no parameters of its own


def test_weight_tying_shares_storage():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    _, loss = model(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    loss.backward()  # one gradient flows into the single shared tensor
    assert model.transformer.wte.weight.grad is not None


def test_gpt2_initialisation_statistics():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=512, block_size=32, n_layer=8, n_head=4, n_embd=128)
    model = GPT(config)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
    mlp_proj = torch.cat([b.mlp.c_proj.weight.flatten() for b in model.transformer.h])
    expected = 0.02 / math.sqrt(2 * config.n_layer)
    # std of n normal samples has standard error ~ std / sqrt(2n): both are within 2%.
    assert abs(proj.std().item() / expected - 1) < 0.02
    assert abs(mlp_proj.std().item() / expected - 1) < 0.02
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() / 0.02 - 1) < 0.02
    assert abs(model.transformer.wte.weight.std().item() / 0.02 - 1) < 0.02
    assert all((b.attn.c_attn.bias == 0).all() for b in model.transformer.h)
    assert (model.transformer.ln_f.weight == 1).all()


def test_untrained_loss_is_close_to_uniform():
    # With small random weights every token is about equally likely: loss ~ ln(vocab_size).
    model = tiny_model(vocab_size=500)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 500, (4, 16), generator=g)
    targets = torch.randint(0, 500, (4, 16), generator=g)
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(500)) < 0.05


def test_loss_is_cross_entropy_and_skips_ignore_index():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 97, (2, 10), generator=g)
    targets = torch.randint(0, 97, (2, 10), generator=g)
    ignored = torch.zeros(2, 10, dtype=torch.bool)
    ignored[0, :4] = True  # e.g. a prompt whose tokens we do not train on
    ignored[1, 7:] = True  # e.g. padding
    logits, loss = model(idx, targets.masked_fill(ignored, -100))
    # Manual cross-entropy: mean of -log p(target) over the positions that count.
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    torch.testing.assert_close(loss, nll[~ignored].mean())
    assert not torch.isclose(loss, nll.mean())  # counting ignored positions would differ
    _, loss_other_sentinel = model(idx, targets.masked_fill(ignored, -1), ignore_index=-1)
    torch.testing.assert_close(loss_other_sentinel, loss)
    _, loss_all = model(idx, targets)
    torch.testing.assert_close(loss_all, nll.mean())


def test_sdpa_path_equals_explicit_path():
    model = tiny_model().double()
    idx = torch.randint(0, 97, (3, 12))
    fast, _ = model(idx)
    for block in model.transformer.h:  # route every block through the written-out math
        forward = block.attn.forward
        block.attn.forward = lambda *a, _f=forward, **k: _f(*a, **{**k, "use_sdpa": False})
    slow, _ = model(idx)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)


def test_next_token_logits_and_kv_cache_match_forward():
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 12))
    logits, _ = model(idx)
    torch.testing.assert_close(model.next_token_logits(idx), logits[:, -1])
    cache = model.new_kv_cache(batch_size=2)
    a, _ = model(idx[:, :5], kv_cache=cache)
    b, _ = model(idx[:, 5:9], kv_cache=cache)  # chunk on a non-empty cache
    c = [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(9, 12)]
    torch.testing.assert_close(torch.cat([a, b, *c], dim=1), logits, atol=1e-5, rtol=0)
    assert cache.length == 12


def test_input_errors_are_explained():
    model = tiny_model()
    with pytest.raises(
        ValueError, match=r"input is 17 tokens long but block_size is 16.*idx\[:, -block_size:\]"
    ):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = model.new_kv_cache(1)
    model(torch.zeros(1, 10, dtype=torch.long), kv_cache=cache)
    with pytest.raises(
        ValueError, match=r"input is 17 tokens long \(10 cached \+ 7 new\) but block_size is 16"
    ):
        model(torch.zeros(1, 7, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"token id 97 is outside \[0, 97\)"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match=r"token id -1 is outside"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match=r"2-D.*idx\[None\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must be a tensor shaped like idx"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})


def test_more_input_errors_are_explained_not_raw_torch_errors():
    """Each of these raised a raw RuntimeError or IndexError from inside torch before."""
    model = tiny_model()
    idx = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match=r"torch.long \(or torch.int32\), got torch.uint8"):
        model(idx.to(torch.uint8))
    with pytest.raises(ValueError, match="no sequences"):
        model(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target 97 is outside \[0, 97\).*ignore_index \(-100\)"):
        model(idx, torch.tensor([[1, 97, 2]]))
    with pytest.raises(ValueError, match="target -5 is outside"):
        model(idx, torch.tensor([[1, -5, 2]]))
    with pytest.raises(ValueError, match="target -100 is outside.*ignore_index \\(-1\\)"):
        model(idx, torch.tensor([[1, -100, 2]]), ignore_index=-1)
    with pytest.raises(TypeError, match="targets must hold integer token ids"):
        model(idx, torch.zeros(1, 3))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        model(idx, idx, ignore_index=None)
    _, loss = model(idx, torch.tensor([[1, -100, 2]]))  # ignore_index is still honoured
    _, loss32 = model(idx.int(), torch.tensor([[1, -100, 2]], dtype=torch.int32))
    torch.testing.assert_close(loss32, loss)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("preset", ["nano", "gpt2"])
def test_parameter_count_from_the_config_alone(preset, bias):
    config = GPTConfig.preset(preset, bias=bias)
    with torch.device("meta"):  # no memory: only the count matters
        model = GPT(config)
    assert model_module._parameter_count(config) == model.num_parameters()


def test_a_model_too_big_for_memory_is_refused_before_allocating(monkeypatch):
    """GPT(GPTConfig(n_layer=10**6)) used to allocate gigabytes before failing."""
    message = (
        r"has 7,087,\d{3},\d{3},\d{3} parameters, which in torch.float32 would need 2.84e\+04 GB"
    )
    with pytest.raises(ValueError, match=message + ".*use a smaller n_layer.*GPTLAB_MAX_BYTES"):
        GPT(GPTConfig(n_layer=10**6))
    monkeypatch.setenv("GPTLAB_MAX_BYTES", "1000")
    with pytest.raises(ValueError, match="more than the 1,000 bytes of cpu memory"):
        tiny_model()
    monkeypatch.setenv("GPTLAB_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="GPTLAB_MAX_BYTES='lots' must be a positive whole number"):
        tiny_model()
    monkeypatch.delenv("GPTLAB_MAX_BYTES")
    huge = GPTConfig(n_layer=1, n_head=1, n_embd=2**16)  # 51e9 parameters: 206 GB
    with torch.device("meta"):  # meta tensors take no memory, so there is no limit
        assert memory_limit_bytes() is None
        assert GPT(huge).num_parameters() == model_module._parameter_count(huge)


def test_a_kv_cache_too_big_for_memory_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="KV cache for 10,000,000 sequences of 16 positions"):
        model.new_kv_cache(10**7)


def test_dropout_is_active_only_in_training_mode():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 97, (1, 8))
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
