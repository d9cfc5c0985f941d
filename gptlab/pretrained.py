"""GPT-2 weights in Hugging Face format, into a gptlab GPT and back.

Our module names are Hugging Face's, so loading is a loop over keys with one twist: GPT-2 was
written with ``Conv1D`` layers that store a weight as ``(in, out)``, the transpose of
``nn.Linear``'s ``(out, in)``; the four matrices in ``_TRANSPOSED`` are flipped on the way.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import threading
from typing import Any
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save

from gptlab.model import GPT, GPTConfig
from gptlab.utils import atomic_write

__all__ = ["WeightsUnavailableError", "load_hf_gpt2", "save_hf_gpt2"]

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


def _resolve(path_or_name: str | os.PathLike[str]) -> pathlib.Path:
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
            + _HOW_TO_PROVIDE
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
            f"{name!r} is not a local folder and {why}. " + _HOW_TO_PROVIDE
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
