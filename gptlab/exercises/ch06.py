"""Checkers for the exercises of chapter 6, "Loading GPT-2".

The references are ``transformers`` itself: its ``Conv1D`` layer, its ``GPT2LMHeadModel`` (which
must accept the reader's state dict and give the logits of the gptlab model), and the defaults
of its ``generate``. Each checker recognises the usual mistakes and names the one the reader made.
``transformers`` is imported inside the checkers, so ``import gptlab.exercises`` stays light.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gptlab.exercises import exercise
from gptlab.exercises import require_callable as _callable
from gptlab.model import GPT, GPTConfig

__all__ = [
    "HF_GENERATE_DEFAULTS",
    "check_conv1d_to_linear",
    "check_gptlab_options",
    "check_is_tied",
    "check_to_hf_state_dict",
    "gptlab_options",
]

# What ``GPT2LMHeadModel.generate`` does when an argument is not passed: transformers' own
# defaults plus GPT-2's generation_config.json (which sets eos_token_id = 50256).
HF_GENERATE_DEFAULTS: dict[str, Any] = {
    "max_length": 20,  # counts the prompt
    "max_new_tokens": None,  # when set, wins over max_length
    "do_sample": False,  # greedy
    "temperature": 1.0,
    "top_k": 50,  # used only when sampling; 0 or None switches it off
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "num_return_sequences": 1,
    "eos_token_id": 50256,
}

_GPTLAB_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "repetition_penalty": 1.0,
    "eos_token_id": None,
    "num_return_sequences": 1,
}


def gptlab_options(hf_kwargs: dict[str, Any], prompt_length: int) -> dict[str, Any]:
    """Keyword arguments for :func:`gptlab.generate` that decode like ``hf_model.generate(**hf_kwargs)``.

    ``max_new_tokens`` is included. Greedy decoding is ``temperature=0``; with sampling,
    transformers keeps the 50 most likely tokens unless told otherwise (``top_k=50``).
    """
    if not isinstance(hf_kwargs, dict):
        raise TypeError(f"hf_kwargs must be a dict of generate() arguments, got {type(hf_kwargs)}")
    unknown = sorted(set(hf_kwargs) - set(HF_GENERATE_DEFAULTS))
    if unknown:
        raise ValueError(
            f"no gptlab equivalent for {unknown}; supported: {sorted(HF_GENERATE_DEFAULTS)}"
        )
    if isinstance(prompt_length, bool) or not isinstance(prompt_length, int) or prompt_length < 1:
        raise ValueError(f"prompt_length must be an int >= 1, got {prompt_length!r}")
    hf = {**HF_GENERATE_DEFAULTS, **hf_kwargs}
    if hf["max_new_tokens"] is not None:
        new = hf["max_new_tokens"]
    else:
        new = max(0, hf["max_length"] - prompt_length)
    options: dict[str, Any] = {
        "max_new_tokens": new,
        "repetition_penalty": hf["repetition_penalty"],
        "eos_token_id": hf["eos_token_id"],
        "num_return_sequences": hf["num_return_sequences"],
    }
    if not hf["do_sample"]:
        options["temperature"] = 0  # greedy: temperature, top-k and top-p are ignored
        return options
    options["temperature"] = hf["temperature"]
    options["top_k"] = hf["top_k"] or None  # 0 switches top-k off
    options["top_p"] = None if hf["top_p"] is None or hf["top_p"] >= 1.0 else hf["top_p"]
    return options


def _randomise(module: nn.Module, seed: int) -> None:
    """Give biases and LayerNorm parameters random values: zeros and ones would hide mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


# --- 6.1 Conv1D -> nn.Linear ----------------------------------------------------------------


@exercise("6.1", "turn a Conv1D into an nn.Linear")
def check_conv1d_to_linear(answer: Any) -> str | None:
    """``conv1d_to_linear(conv)`` must return an ``nn.Linear`` that computes what ``conv`` does."""
    from transformers.pytorch_utils import Conv1D

    fn = _callable(answer, "conv1d_to_linear", "6.1")
    gen = torch.Generator().manual_seed(0)
    # the non-square case first: its shapes expose a missing transpose at once
    for nx, nf in ((4, 6), (8, 3), (5, 5)):
        conv = Conv1D(nf, nx)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(nx, nf, generator=gen))  # (in, out)
            conv.bias.copy_(torch.randn(nf, generator=gen))
        weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
        x = torch.randn(2, 3, nx, generator=gen)  # (B, T, in)
        with torch.no_grad():
            want = conv(x)
        label = f"Conv1D(nf={nf}, nx={nx})"
        linear = fn(conv)
        if not torch.equal(conv.weight, weight) or not torch.equal(conv.bias, bias):
            return f"your function changed the {label} it was given; copy its tensors instead"
        if not isinstance(linear, nn.Linear):
            return f"return an nn.Linear, got {type(linear).__name__}"
        if (linear.in_features, linear.out_features) != (nx, nf):
            return (
                f"for {label} the Linear should map {nx} -> {nf} features (nx in, nf out), "
                f"yours maps {linear.in_features} -> {linear.out_features}"
            )
        if tuple(linear.weight.shape) != (nf, nx):
            return (
                f"for {label} the Linear's weight must be (out, in) = ({nf}, {nx}), got "
                f"{tuple(linear.weight.shape)}: transpose the Conv1D weight, which is (in, out)"
            )
        if linear.bias is None:
            return (
                f"your Linear for {label} has no bias: build it with bias=True and copy conv.bias"
            )
        with torch.no_grad():
            got = linear(x)
        if torch.allclose(got, want, atol=1e-5):
            continue
        with torch.no_grad():
            if nx == nf and torch.allclose(linear.weight, weight, atol=1e-6):
                return (
                    f"for the square {label} your weight has the right shape but is not "
                    "transposed: Conv1D computes x @ W, nn.Linear computes x @ W.T, so the Linear "
                    "needs conv.weight.T (a square matrix fits either way, so its shape cannot "
                    "warn you)"
                )
            if torch.allclose(linear.weight, weight.reshape(nf, nx), atol=1e-6):
                return (
                    f"for {label} you reshaped the weight to (out, in); a reshape keeps the "
                    "numbers in memory order and scrambles the matrix: transpose it (conv.weight.T)"
                )
            if not torch.allclose(linear.bias, bias, atol=1e-6):
                return f"for {label} the outputs differ: copy conv.bias into the Linear's bias"
        return f"for {label} your Linear's outputs differ from the Conv1D's"
    return None


# --- 6.2 gptlab -> Hugging Face state dict ----------------------------------------------------


_CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)


def _matching_hf_model(config: GPTConfig) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,  # GPT-2's 50256 lies outside these tiny vocabularies
        eos_token_id=0,
    )
    return GPT2LMHeadModel(hf_config).eval()


@exercise("6.2", "save a gptlab model in Hugging Face's layout")
def check_to_hf_state_dict(answer: Any) -> str | None:
    """``to_hf_state_dict(model)`` must give a state dict ``GPT2LMHeadModel`` loads with our logits."""
    fn = _callable(answer, "to_hf_state_dict", "6.2")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=12)
    model = GPT(config).eval()
    _randomise(model, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(idx)[0]

    result = fn(model)
    if any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()):
        return (
            "your function changed the gptlab model (an in-place transpose?); build new tensors "
            "with .t() (or .T) and leave the model alone"
        )
    if not isinstance(result, dict) or not all(isinstance(v, Tensor) for v in result.values()):
        return "return a dict that maps Hugging Face key names to tensors"

    hf = _matching_hf_model(config)
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    unexpected = sorted(set(result) - set(expected))
    if unexpected:
        return (
            f"GPT2LMHeadModel has no key(s) {unexpected[:3]}; its keys look like "
            "'transformer.h.0.attn.c_attn.weight'"
        )
    missing = sorted(set(expected) - set(result) - {"lm_head.weight"})  # lm_head: tied to wte
    if missing:
        return f"your state dict lacks {len(missing)} key(s), e.g. {missing[:3]}"
    for key, tensor in result.items():
        if tuple(tensor.shape) == expected[key]:
            continue
        if key in ("transformer.wte.weight", "transformer.wpe.weight"):
            return f"{key}: embeddings are (rows, n_embd) in both libraries; do not transpose them"
        if tuple(tensor.shape) == expected[key][::-1]:
            return (
                f"{key} has shape {tuple(tensor.shape)} but Hugging Face expects "
                f"{expected[key]}: its Conv1D stores (in, out), so transpose this weight"
            )
        return f"{key} has shape {tuple(tensor.shape)}, expected {expected[key]}"
    hf.load_state_dict(result, strict=False)
    with torch.no_grad():
        got = hf(idx).logits
    if torch.allclose(got, want, atol=1e-5):
        return None
    ours = model.state_dict()
    for key in sorted(result):
        square = ours[key].dim() == 2 and ours[key].shape[0] == ours[key].shape[1]
        if key.endswith(_CONV1D_WEIGHTS) and square and torch.equal(result[key], ours[key]):
            return (
                f"{key} is square, so its shape looked right, but it is not transposed: every "
                "Conv1D weight (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) must be "
                "transposed, square or not"
            )
    return "Hugging Face's logits differ from the gptlab model's: compare your tensors key by key"


# --- 6.3 tied or merely equal ----------------------------------------------------------------


def _untied_copy(model: GPT) -> GPT:
    """A gptlab model whose head holds a copy of wte: equal values, separate memory."""
    model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())
    return model


@exercise("6.3", "tied, or merely equal?")
def check_is_tied(answer: Any) -> str | None:
    """``is_tied(model)`` must say whether ``lm_head.weight`` and ``wte.weight`` are one tensor."""
    from transformers import GPT2Config, GPT2LMHeadModel

    fn = _callable(answer, "is_tied", "6.3")
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8)
    hf_kwargs = dict(
        vocab_size=50, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    cases = [
        ("a gptlab GPT", GPT(config), True),
        ("a GPT2LMHeadModel", GPT2LMHeadModel(GPT2Config(**hf_kwargs)), True),
        ("a gptlab GPT whose head is a copy of wte", _untied_copy(GPT(config)), False),
        (
            "a GPT2LMHeadModel built with tie_word_embeddings=False",
            GPT2LMHeadModel(GPT2Config(**hf_kwargs, tie_word_embeddings=False)),
            False,
        ),
    ]
    for label, model, want in cases:
        got = fn(model)
        if isinstance(got, Tensor) and got.numel() == 1:
            got = bool(got)
        if not isinstance(got, bool):
            return f"return True or False, got {type(got).__name__} for {label}"
        if got == want:
            continue
        if want:
            return f"{label} is tied, but your function says it is not"
        if "copy" in label:
            return (
                f"{label}: the values are equal but the tensors are separate, so training would "
                "make them drift apart. Ask whether they are the same tensor (`is`, or the same "
                "data_ptr()), not whether they hold equal numbers"
            )
        return f"{label}: its head and embedding are different tensors, but you said tied"
    return None


# --- 6.4 Hugging Face generate() -> gptlab.generate ---------------------------------------------

_CASES: tuple[tuple[dict[str, Any], int], ...] = (
    ({"max_length": 50}, 6),
    ({}, 6),
    ({"max_length": 50, "temperature": 0.7}, 6),
    ({"max_length": 50, "do_sample": True, "num_return_sequences": 3}, 6),
    ({"max_new_tokens": 30, "do_sample": True, "top_p": 0.9, "temperature": 0.8}, 4),
    ({"max_new_tokens": 30, "do_sample": True, "top_k": 0, "top_p": 0.95}, 4),
    ({"max_new_tokens": 10, "repetition_penalty": 1.3}, 3),
    ({"max_length": 40, "max_new_tokens": 12}, 5),
    ({"max_length": 30, "do_sample": True, "top_k": 10, "eos_token_id": 198}, 8),
)


def _normalise(options: dict[str, Any]) -> dict[str, Any]:
    """Fill gptlab.generate's defaults and drop what greedy decoding ignores."""
    full = {**_GPTLAB_DEFAULTS, **options}
    if full["top_p"] is not None and full["top_p"] >= 1:
        full["top_p"] = None  # top_p = 1 keeps every token, like None
    if full["temperature"] == 0:  # greedy: the filters never run
        full["top_k"] = full["top_p"] = None
    return full


def _options_hint(call: str, field: str, got: Any, want: Any, hf: dict[str, Any], n: int) -> str:
    where = f"for generate({call}) with a {n}-token prompt"
    if field == "max_new_tokens":
        if "max_new_tokens" not in hf and got == hf.get("max_length", 20):
            return (
                f"{where}: max_length counts the prompt too, so max_new_tokens = max_length - {n}"
            )
        if "max_new_tokens" not in hf:
            return f"{where}: transformers' default max_length is 20 (prompt included): {want}"
        return f"{where}: max_new_tokens, when given, wins over max_length: {want}"
    if field == "temperature" and want == 0:
        return (
            f"{where}: without do_sample=True transformers decodes greedily, whatever the "
            "temperature; gptlab's greedy is temperature=0"
        )
    if field == "top_k" and want == 50:
        return (
            f"{where}: when sampling, transformers keeps only the 50 most likely tokens unless "
            "you pass top_k (its default top_k is 50), so pass top_k=50 to gptlab"
        )
    if field == "top_k" and want is None:
        return f"{where}: top_k=0 switches the filter off in transformers; gptlab spells it None"
    if field == "eos_token_id":
        return (
            f"{where}: GPT-2's generation config sets eos_token_id=50256, so transformers stops "
            "at <|endoftext|> unless told otherwise; gptlab stops only when given eos_token_id"
        )
    return f"{where}: expected {field}={want!r}, got {got!r}"


@exercise("6.4", "translate Hugging Face generate() arguments")
def check_gptlab_options(answer: Any) -> str | None:
    """``options(hf_kwargs, prompt_length)`` must equal :func:`gptlab_options` up to defaults."""
    import inspect

    from gptlab.sampling import generate

    fn = _callable(answer, "gptlab_options", "6.4")
    accepted = set(inspect.signature(generate).parameters) - {"model", "idx", "generator"}
    for hf_kwargs, n in _CASES:
        call = ", ".join(f"{k}={v!r}" for k, v in hf_kwargs.items())
        got = fn(dict(hf_kwargs), n)
        if not isinstance(got, dict):
            return f"return a dict of gptlab.generate keyword arguments, got {type(got).__name__}"
        extra = sorted(set(got) - accepted)
        if extra:
            return f"gptlab.generate has no argument(s) {extra}; it accepts {sorted(accepted)}" + (
                " (greedy is temperature=0)" if "do_sample" in extra else ""
            )
        if "max_new_tokens" not in got:
            return "include max_new_tokens: gptlab.generate needs it"
        want = _normalise(gptlab_options(hf_kwargs, n))
        mine = _normalise(got)
        for field in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
                      "num_return_sequences", "eos_token_id"):  # fmt: skip
            if mine[field] != want[field]:
                return _options_hint(call, field, mine[field], want[field], hf_kwargs, n)
    return None
