"""gptlab's Llama against transformers' LlamaForCausalLM: tiny random models with odd shapes,
grouped-query attention, tied and untied heads; same logits, same greedy text, round trips both
ways, the KV cache, and config errors. Offline: nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM
from transformers.utils import logging as hf_logging

from gptlab.llama import Llama, LlamaConfig, empty_llama
from gptlab.pretrained import MAX_MODEL_BYTES_ENV, load_hf_llama, save_hf_llama
from gptlab.sampling import generate

VOCAB = 97  # odd on purpose


@pytest.fixture(scope="module", autouse=True)
def quiet_and_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()
    torch.set_num_threads(before)


def _hf_llama(tied: bool, n_kv: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = HFLlamaConfig(
        vocab_size=VOCAB,
        hidden_size=36,  # 6 heads of 6: head_dim not a power of two
        intermediate_size=50,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=n_kv,
        max_position_embeddings=48,
        rope_theta=5000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises the norms to one; randomise them so each load matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_pair(request, tmp_path_factory):
    hf = _hf_llama(request.param)
    folder = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(folder)
    return hf, load_hf_llama(folder), folder


def _ids(T: int, B: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_load_hf_llama_gives_transformers_logits(hf_pair):
    hf, ours, _ = hf_pair
    idx = _ids(17)
    with torch.no_grad():
        expected = hf(idx).logits
    logits, _ = ours(idx)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert ours.config.tie_word_embeddings == hf.config.tie_word_embeddings
    assert ours.num_parameters() == hf.num_parameters() == ours.config.num_parameters()


def test_greedy_continuation_equals_transformers_generate(hf_pair):
    hf, ours, _ = hf_pair
    prompt = _ids(5, B=1, seed=3)
    with torch.no_grad():
        theirs = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=20,
            min_new_tokens=20,
            pad_token_id=1,
        )
    assert torch.equal(generate(ours, prompt, 20, temperature=0), theirs)


def test_save_hf_llama_round_trip_loads_in_transformers(hf_pair, tmp_path):
    hf, ours, _ = hf_pair
    save_hf_llama(ours, tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    idx = _ids(9)
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-5, rtol=0)
    again = load_hf_llama(tmp_path)
    torch.testing.assert_close(again(idx)[0], ours(idx)[0], atol=0, rtol=0)


def test_kv_cache_stores_kv_heads_and_equals_full_forward(hf_pair):
    _, ours, _ = hf_pair
    idx = _ids(12)
    full, _ = ours(idx)
    cache = ours.new_kv_cache(2)
    assert cache.k[0].shape == (2, ours.config.n_kv_head, ours.config.block_size, 6)  # GQA
    steps = [ours(idx[:, :5], kv_cache=cache)[0]]
    steps += [ours(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(5, 9)]
    steps.append(ours(idx[:, 9:], kv_cache=cache)[0])  # chunk after a cache: explicit mask
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    prompt = idx[:1, :4]
    cached = generate(ours, prompt, 30, temperature=0, use_cache=True)
    assert torch.equal(cached, generate(ours, prompt, 30, temperature=0, use_cache=False))


def test_loss_and_next_token_logits_match_forward(hf_pair):
    hf, ours, _ = hf_pair
    idx = _ids(10)
    targets = torch.roll(idx, -1, dims=1)
    with torch.no_grad():
        expected = hf(idx, labels=idx).loss  # HF shifts internally; compare on the same pairs
    logits, loss = ours(idx[:, :-1], targets=idx[:, 1:])
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.next_token_logits(idx), ours(idx)[0][:, -1])
    assert ours(idx, targets=targets)[1].shape == ()


def test_multi_head_llama_without_gqa_loads_too(tmp_path):
    hf = _hf_llama(tied=True, n_kv=6, seed=4)
    hf.save_pretrained(tmp_path)
    ours = load_hf_llama(tmp_path)
    idx = _ids(8)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-5, rtol=0)


def test_smollm2_preset_size_without_building():
    config = LlamaConfig.preset("smollm2-135m")
    assert config.num_parameters() == 134_515_008
    assert config.head_dim == 64 and config.n_head // config.n_kv_head == 3


def test_parameter_breakdown_sums_to_total():
    model = Llama(
        LlamaConfig(
            vocab_size=50,
            block_size=16,
            n_layer=2,
            n_head=4,
            n_kv_head=2,
            n_embd=16,
            intermediate_size=24,
            tie_word_embeddings=False,
        )
    )
    parts = model.parameter_breakdown()
    assert sum(parts.values()) == model.num_parameters() == model.config.num_parameters()
    assert parts["embed_tokens"] == parts["lm_head"] == 50 * 16
    assert parts["layers.0.self_attn"] == 16 * 16 * 2 + 2 * 16 * 8
    assert model.num_parameters(non_embedding=True) == model.num_parameters() - 50 * 16


def test_empty_llama_keeps_the_head_tied():
    model = empty_llama(
        LlamaConfig(
            vocab_size=20,
            block_size=8,
            n_layer=1,
            n_head=2,
            n_kv_head=1,
            n_embd=8,
            intermediate_size=8,
        )
    )
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize(
    "fields, error, match",
    [
        (dict(n_kv_head=4), ValueError, "n_head .*divisible by n_kv_head"),
        (dict(n_embd=30), ValueError, "n_embd .*divisible by n_head"),
        (dict(n_embd=27), ValueError, "must be even"),
        (dict(n_layer=0), ValueError, "positive"),
        (dict(vocab_size=1.5), TypeError, "vocab_size must be an int"),
        (dict(rope_theta=float("nan")), ValueError, "finite"),
        (dict(rms_norm_eps=0.0), ValueError, "rms_norm_eps"),
        (dict(tie_word_embeddings=1), TypeError, "True or False"),
    ],
)
def test_config_errors_say_what_to_change(fields, error, match):
    with pytest.raises(error, match=match):
        LlamaConfig(**{**LlamaConfig.preset("smollm2-135m").to_dict(), **fields})


def test_config_dict_round_trip_and_unknown_keys():
    config = LlamaConfig.preset("smollm2-135m", n_layer=2)
    assert LlamaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown LlamaConfig field"):
        LlamaConfig.from_dict({"n_layers": 2})
    with pytest.raises(ValueError, match="unknown preset"):
        LlamaConfig.preset("llama-9000")


def test_model_input_errors():
    model = Llama(
        LlamaConfig(
            vocab_size=20,
            block_size=8,
            n_layer=1,
            n_head=2,
            n_kv_head=1,
            n_embd=8,
            intermediate_size=8,
        )
    )
    with pytest.raises(ValueError, match="2-D"):
        model(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="outside"):
        model(torch.tensor([[20]]))
    with pytest.raises(ValueError, match="block_size is 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="LlamaConfig"):
        Llama({"n_layer": 1})


def test_load_hf_llama_refuses_absurd_config_before_building(tmp_path, monkeypatch):
    """A config.json claiming a huge model is refused from its numbers, before any allocation."""
    config = _hf_llama(tied=True).config.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**7}))
    with pytest.raises(ValueError, match="parameters .* more than"):
        load_hf_llama(tmp_path)
    monkeypatch.setenv(MAX_MODEL_BYTES_ENV, "1000")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=MAX_MODEL_BYTES_ENV):
        load_hf_llama(tmp_path)


def test_load_hf_llama_refuses_what_it_cannot_run(tmp_path):
    config = _hf_llama(tied=True).config.to_dict()
    for key, value, match in [
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "RoPE scaling"),
        ("hidden_act", "gelu", "hidden_act"),
        ("model_type", "mistral", "only 'llama'"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=match):
            load_hf_llama(tmp_path)
