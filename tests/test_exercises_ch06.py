"""Each chapter-6 checker accepts a right answer and rejects the usual wrong ones with a useful hint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gptlab.exercises import NotSolved, ch06, check, registered
from gptlab.model import GPT, GPTConfig
from gptlab.pretrained import _TRANSPOSED

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_6_exercises_are_registered():
    ids = [k for k in registered() if k.startswith("6.")]
    assert ids == ["6.1", "6.2", "6.3", "6.4"]


def test_stub_is_not_solved(capsys):
    def stub(_):
        raise NotImplementedError

    assert check("6.1", stub) is False
    assert "not solved yet" in capsys.readouterr().out


# 6.1 Conv1D -> Linear -----------------------------------------------------------------------


def conv1d_to_linear(conv):
    nx, nf = conv.weight.shape  # Conv1D stores (in, out)
    linear = nn.Linear(nx, nf)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    return linear


def test_conv1d_accepts_transposed_copy(capsys):
    assert check("6.1", conv1d_to_linear) is True
    assert "correct" in capsys.readouterr().out


def test_conv1d_rejects_missing_transpose_on_square_matrix():
    def transpose_when_shapes_disagree(conv):  # the square case slips through
        nx, nf = conv.weight.shape
        linear = nn.Linear(nx, nf)
        with torch.no_grad():
            linear.weight.copy_(conv.weight if nx == nf else conv.weight.T)
            linear.bias.copy_(conv.bias)
        return linear

    hint = _hint(ch06.check_conv1d_to_linear, transpose_when_shapes_disagree)
    assert "square Conv1D(nf=5, nx=5)" in hint and "x @ W.T" in hint


def test_conv1d_rejects_reshape_instead_of_transpose():
    def reshaped(conv):
        nx, nf = conv.weight.shape
        linear = nn.Linear(nx, nf)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.reshape(nf, nx))
            linear.bias.copy_(conv.bias)
        return linear

    assert "a reshape keeps the numbers" in _hint(ch06.check_conv1d_to_linear, reshaped)


def test_conv1d_rejects_swapped_features_missing_bias_and_mutation():
    def swapped(conv):
        nx, nf = conv.weight.shape
        return nn.Linear(nf, nx)

    assert "nx in, nf out" in _hint(ch06.check_conv1d_to_linear, swapped)

    def no_bias(conv):
        nx, nf = conv.weight.shape
        linear = nn.Linear(nx, nf, bias=False)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
        return linear

    assert "no bias" in _hint(ch06.check_conv1d_to_linear, no_bias)

    def zero_bias(conv):
        linear = conv1d_to_linear(conv)
        with torch.no_grad():
            linear.bias.zero_()
        return linear

    assert "copy conv.bias" in _hint(ch06.check_conv1d_to_linear, zero_bias)

    def in_place(conv):
        with torch.no_grad():
            conv.bias.zero_()
        return conv1d_to_linear(conv)

    assert "changed the" in _hint(ch06.check_conv1d_to_linear, in_place)
    assert "pass your function" in _hint(ch06.check_conv1d_to_linear, nn.Linear(2, 2).weight)


# 6.2 gptlab -> HF state dict -----------------------------------------------------------------


def to_hf_state_dict(model):
    out = {}
    for key, tensor in model.state_dict().items():
        out[key] = tensor.t() if key.endswith(_TRANSPOSED) else tensor
    return out


def test_state_dict_accepts_right_answer_with_or_without_lm_head():
    assert _hint(ch06.check_to_hf_state_dict, to_hf_state_dict) is None

    def without_head(model):
        sd = to_hf_state_dict(model)
        del sd["lm_head.weight"]
        return sd

    assert _hint(ch06.check_to_hf_state_dict, without_head) is None


def test_state_dict_rejects_untransposed_weights():
    hint = _hint(ch06.check_to_hf_state_dict, lambda m: dict(m.state_dict()))
    assert "transpose this weight" in hint and "(in, out)" in hint


def test_state_dict_rejects_forgotten_square_c_proj():
    def skip_square(model):
        out = to_hf_state_dict(model)
        for key in out:
            if key.endswith("attn.c_proj.weight"):
                out[key] = model.state_dict()[key]
        return out

    hint = _hint(ch06.check_to_hf_state_dict, skip_square)
    assert "attn.c_proj.weight is square" in hint


def test_state_dict_rejects_transposed_embeddings_wrong_names_and_in_place_edits():
    def all_2d_transposed(model):
        return {k: (v.t() if v.dim() == 2 else v) for k, v in model.state_dict().items()}

    assert "do not transpose them" in _hint(ch06.check_to_hf_state_dict, all_2d_transposed)

    def no_prefix(model):
        return {k.removeprefix("transformer."): v for k, v in to_hf_state_dict(model).items()}

    assert "has no key(s)" in _hint(ch06.check_to_hf_state_dict, no_prefix)

    def missing_ln_f(model):
        return {k: v for k, v in to_hf_state_dict(model).items() if "ln_f" not in k}

    assert "lacks 2 key(s)" in _hint(ch06.check_to_hf_state_dict, missing_ln_f)

    def in_place(model):
        with torch.no_grad():
            model.transformer.h[0].attn.c_proj.weight.t_()  # square: transposes in place
        return to_hf_state_dict(model)

    assert "changed the gptlab model" in _hint(ch06.check_to_hf_state_dict, in_place)


# 6.3 tied weights ---------------------------------------------------------------------------


def is_tied(model):
    return model.lm_head.weight is model.transformer.wte.weight


def test_tied_accepts_identity_and_data_ptr():
    assert _hint(ch06.check_is_tied, is_tied) is None

    def by_pointer(m):
        return m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()

    assert _hint(ch06.check_is_tied, by_pointer) is None


def test_tied_rejects_equal_values_and_constants():
    def equal_values(m):
        return torch.equal(m.lm_head.weight, m.transformer.wte.weight)

    assert "values are equal" in _hint(ch06.check_is_tied, equal_values)
    assert "says it is not" in _hint(ch06.check_is_tied, lambda m: False)
    assert _hint(ch06.check_is_tied, lambda m: True) is not None
    assert "True or False" in _hint(ch06.check_is_tied, lambda m: "yes")


def test_untied_copy_really_is_untied():
    model = ch06._untied_copy(
        GPT(GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4))
    )
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)


# 6.4 generate() arguments ---------------------------------------------------------------------


def test_options_accepts_reference_and_explicit_defaults():
    assert _hint(ch06.check_gptlab_options, ch06.gptlab_options) is None

    def verbose(hf, n):  # spells out every gptlab default: still right
        out = ch06.gptlab_options(hf, n)
        return {"top_k": None, "top_p": 1.0, **out}

    assert _hint(ch06.check_gptlab_options, verbose) is None


@pytest.mark.parametrize(
    ("mistake", "hint"),
    [
        (lambda hf, n: {"max_new_tokens": hf.get("max_length", 20), "temperature": 0}, "counts"),
        (lambda hf, n: {**ch06.gptlab_options(hf, n), "temperature": 1.0}, "greedily"),
        (lambda hf, n: {**ch06.gptlab_options(hf, n), "do_sample": False}, "no argument"),
        (lambda hf, n: {**ch06.gptlab_options(hf, n), "eos_token_id": None}, "eos_token_id"),
    ],
)
def test_options_rejects_common_mistakes(mistake, hint):
    assert hint in _hint(ch06.check_gptlab_options, mistake)


def test_options_rejects_missing_default_top_k_and_top_k_zero():
    def no_top_k(hf, n):
        out = ch06.gptlab_options(hf, n)
        out.pop("top_k", None)
        return out

    assert "default top_k is 50" in _hint(ch06.check_gptlab_options, no_top_k)

    def keeps_zero(hf, n):
        out = ch06.gptlab_options(hf, n)
        if hf.get("top_k") == 0:
            out["top_k"] = 0
        return out

    assert "spells it None" in _hint(ch06.check_gptlab_options, keeps_zero)


def test_reference_mapping_reproduces_transformers_sampling(tmp_path):
    """The reference answer is right: same seed, same tokens as transformers' generate."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from gptlab.pretrained import load_hf_gpt2
    from gptlab.sampling import generate

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    config.eos_token_id = config.bos_token_id = 299
    hf = GPT2LMHeadModel(config).eval()
    hf.generation_config.pad_token_id = 299
    hf.save_pretrained(tmp_path)
    ours = load_hf_gpt2(tmp_path)
    idx = torch.tensor([[5, 17, 42]])
    for hf_kwargs in (
        {"max_length": 20, "do_sample": True, "num_return_sequences": 3},
        {"max_new_tokens": 12, "do_sample": True, "top_p": 0.9, "temperature": 0.8},
        {"max_new_tokens": 12, "repetition_penalty": 1.3},
    ):
        options = ch06.gptlab_options({**hf_kwargs, "eos_token_id": 299}, idx.shape[1])
        torch.manual_seed(1)
        theirs = hf.generate(idx, attention_mask=torch.ones_like(idx), **hf_kwargs)
        torch.manual_seed(1)
        mine = generate(ours, idx, **options)
        assert torch.equal(mine, theirs), hf_kwargs


def test_reference_mapping_validates_input():
    with pytest.raises(ValueError, match="no gptlab equivalent for \\['num_beams'\\]"):
        ch06.gptlab_options({"num_beams": 4}, 3)
    with pytest.raises(ValueError, match="prompt_length"):
        ch06.gptlab_options({}, 0)
    with pytest.raises(TypeError, match="dict"):
        ch06.gptlab_options([("max_length", 5)], 3)
