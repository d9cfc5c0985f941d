"""LoRA: fine-tune a frozen model by learning a low-rank change to some of its weight matrices.

Full fine-tuning updates every weight matrix $W \\in \\mathbb{R}^{d_{out} \\times d_{in}}$. Hu et
al. (2021) observed that the *change* a fine-tune makes, $\\Delta W$, can be written with far
fewer numbers: keep $W$ frozen and learn $\\Delta W = B A$ with $A \\in \\mathbb{R}^{r \\times d_{in}}$,
$B \\in \\mathbb{R}^{d_{out} \\times r}$ and a small rank $r$, so a layer computes

    y = x W^T + b + (alpha / r) * (x A^T) B^T

``B`` starts at zero, so at step 0 the model is exactly the pretrained one, and ``A`` starts
random (Kaiming-uniform, as ``nn.Linear`` initialises its weights) so that the gradient of ``B``
is not zero. ``alpha / r`` keeps the size of the update roughly independent of the rank you
pick. A wrapped layer trains ``r * (d_in + d_out)`` numbers instead of ``d_in * d_out``.

After training, :func:`merge_lora` adds ``(alpha / r) * B @ A`` into ``W`` and puts plain
``nn.Linear`` layers back: the merged model is as fast as the original and gives the same
outputs (up to float rounding) as the unmerged LoRA model.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "DEFAULT_TARGETS",
    "LoRALinear",
    "apply_lora",
    "count_trainable_parameters",
    "ADAPTER_FILE",
    "AdapterFileError",
    "LORA_DIR",
    "load_lora_adapter",
    "load_lora_state_dict",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "save_lora_adapter",
    "training_memory",
]

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # every Linear inside GPT-2's blocks
#: Chapter 8's stored LoRA run on SmolLM2 (``recipes/smollm2_lora.py``): results and adapter.
LORA_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "lora"


def _check_rank(r: Any) -> None:
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"r (the LoRA rank) must be an int, got {type(r).__name__}")
    if r <= 0:
        raise ValueError(f"r (the LoRA rank) must be >= 1, got {r}; typical values are 4 to 64")


class LoRALinear(nn.Module):
    """An ``nn.Linear`` (frozen) plus a trainable low-rank update ``(alpha / r) * B @ A``.

    ``base`` is kept as the submodule ``base`` and its parameters are set to
    ``requires_grad=False``. ``lora_A`` ``(r, in_features)`` and ``lora_B`` ``(out_features, r)``
    are the only trainable parameters; ``dropout`` is applied to the input of the LoRA branch.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        _check_rank(r)
        if r > min(base.in_features, base.out_features):
            raise ValueError(
                f"r={r} is larger than the layer's smaller side "
                f"({base.out_features} x {base.in_features}); a low-rank update needs "
                f"r <= {min(base.in_features, base.out_features)}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise ValueError(f"alpha must be a number > 0, got {alpha!r}; a common choice is 2*r")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, r, dtype=w.dtype, device=w.device)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear inits its weight
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """The update this layer adds to the frozen weight: ``(alpha / r) * B @ A``, ``(out, in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two thin matmuls, (.., in) -> (.., r) -> (.., out); never forms the (out, in) matrix.
        update = (self.dropout(x) @ self.lora_A.T) @ self.lora_B.T  # (..., out)
        return self.base(x) + update * self.scaling

    def merged_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight is ``W + (alpha / r) * B @ A`` (a new module)."""
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            merged.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                merged.bias.copy_(base.bias)
        merged.requires_grad_(False)
        return merged

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """``(name, layer)`` for every :class:`LoRALinear` in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    target_modules: Iterable[str] = DEFAULT_TARGETS,
    *,
    dropout: float = 0.0,
) -> nn.Module:
    """Freeze every parameter of ``model`` and wrap the target Linear layers in :class:`LoRALinear`.

    ``target_modules`` are the last parts of module names: ``"c_attn"`` wraps every
    ``...attn.c_attn``, ``"c_proj"`` both the attention and the MLP output projections. The model
    is changed in place and returned. Afterwards only the ``lora_A``/``lora_B`` matrices train.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module (e.g. a gptlab GPT), got {type(model).__name__}"
        )
    _check_rank(r)
    if isinstance(target_modules, str):
        raise TypeError(
            f"target_modules must be a list of names, got the string {target_modules!r}; "
            f"wrap it: target_modules=({target_modules!r},)"
        )
    targets = tuple(target_modules)
    if not targets:
        raise ValueError(
            f"target_modules is empty; name at least one layer, e.g. {DEFAULT_TARGETS}"
        )
    if any(True for _ in lora_layers(model)):
        raise ValueError(
            "the model already has LoRA layers; merge them first (merge_lora(model)) or start "
            "again from the base model"
        )
    linear_names = {
        name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)
    }
    available = sorted({name.rpartition(".")[2] for name in linear_names})
    tied = _tied_to_embedding(model)
    for target in targets:
        if not isinstance(target, str):
            raise TypeError(f"target module names must be strings, got {target!r}")
        if target not in available:
            raise ValueError(
                f"no Linear layer named {target!r} in the model; the Linear layers are named "
                f"{', '.join(available)}"
            )
        if target in tied:
            raise ValueError(
                f"{target!r} shares its weight with an embedding (weight tying): merging an "
                "update into it would change the embedding too; leave it out of target_modules"
            )
    model.requires_grad_(False)
    for name, module in linear_names.items():
        if name.rpartition(".")[2] in targets:
            _set_submodule(model, name, LoRALinear(module, r, alpha, dropout))
    return model


def _tied_to_embedding(model: nn.Module) -> set[str]:
    """Last names of Linear layers whose weight is also an embedding table (e.g. ``lm_head``)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        name.rpartition(".")[2]
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) in embeddings
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put plain ``nn.Linear`` layers back.

    ``W <- W + (alpha / r) * B @ A``. The model is changed in place and returned; it has no
    LoRA parameters left and computes the same function as before (up to float rounding).
    Its parameters stay frozen: call ``model.requires_grad_(True)`` to train it fully again.
    """
    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers to merge; call apply_lora(model, ...) first")
    for name, layer in layers:
        _set_submodule(model, name, layer.merged_linear())
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA matrices (``...lora_A``, ``...lora_B``): all you need to save an adapter."""
    state = {k: v for k, v in model.state_dict().items() if k.endswith(("lora_A", "lora_B"))}
    if not state:
        raise ValueError("the model has no LoRA layers; call apply_lora(model, ...) first")
    return state


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load LoRA matrices saved with :func:`lora_state_dict` into a model with the same LoRA layers."""
    expected = set(lora_state_dict(model))
    got = set(state)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise ValueError(
            f"LoRA state does not match the model's LoRA layers: missing {missing[:3]}, "
            f"unexpected {extra[:3]}; apply_lora with the same r and target_modules first"
        )
    model.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------
# Adapters on disk: the LoRA matrices, their settings and a sha256, checked on load
# --------------------------------------------------------------------------------------------

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_MANIFEST = "adapter.json"


class AdapterFileError(ValueError):
    """An adapter folder is incomplete, or its file's sha256 differs from the manifest's."""


def save_lora_adapter(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``model``'s LoRA matrices as an adapter: ``adapter.safetensors`` + ``adapter.json``.

    The manifest records ``r``, ``alpha`` and the wrapped layers' last names (so that
    :func:`load_lora_adapter` can rebuild the same LoRA layers on a fresh base model), the
    number of numbers, the file's sha256 and ``metadata`` (any JSON: the base model's name, the
    training run). Each file is written under a temporary name and renamed; an adapter already
    in ``directory`` is replaced only with ``overwrite=True``. Returns the manifest.
    """
    import hashlib

    from safetensors.torch import save

    from gptlab.utils import atomic_write

    layers = list(lora_layers(model))
    if not layers:
        raise ValueError("the model has no LoRA layers; call apply_lora(model, ...) first")
    settings = {(layer.r, layer.alpha) for _, layer in layers}
    if len(settings) != 1:
        raise ValueError(f"the LoRA layers use different (r, alpha): {sorted(settings)}")
    ((r, alpha),) = settings
    state = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(model).items()}
    folder = pathlib.Path(directory)
    if not overwrite and ((folder / ADAPTER_FILE).exists() or (folder / ADAPTER_MANIFEST).exists()):
        raise FileExistsError(
            f"{folder} already holds an adapter; pass overwrite=True to replace it, or choose "
            "another folder"
        )
    data = save(state)
    with atomic_write(folder / ADAPTER_FILE, "wb") as f:  # never a half-written file
        f.write(data)
    manifest = {
        "format": "gptlab-lora-adapter-1",
        "r": r,
        "alpha": alpha,
        "target_modules": sorted({name.rpartition(".")[2] for name, _ in layers}),
        "parameters": sum(t.numel() for t in state.values()),
        "files": {ADAPTER_FILE: hashlib.sha256(data).hexdigest()},
        "metadata": dict(metadata or {}),
    }
    with atomic_write(folder / ADAPTER_MANIFEST, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_lora_adapter(
    model: nn.Module, directory: str | os.PathLike[str], *, sha256: str | None = None
) -> dict[str, Any]:
    """Wrap ``model`` (a base model without LoRA) as the adapter's manifest says and load it.

    The file's sha256 must equal the manifest's (and ``sha256``, when given: pin it in code so a
    manifest edited together with the file is refused too); otherwise
    :class:`AdapterFileError` is raised before anything is loaded. ``model`` is changed in
    place (see :func:`apply_lora`). Returns the manifest.
    """
    from safetensors.torch import load_file

    from gptlab.utils import sha256_file

    folder = pathlib.Path(directory)
    manifest_path, weights = folder / ADAPTER_MANIFEST, folder / ADAPTER_FILE
    for path in (manifest_path, weights):
        if not path.is_file():
            raise AdapterFileError(f"{path} is missing; save_lora_adapter writes both files")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    recorded = manifest.get("files", {}).get(ADAPTER_FILE)
    actual = sha256_file(weights)
    for name, expected in (("the manifest", recorded), ("the caller", sha256)):
        if name == "the caller" and sha256 is None:
            continue
        if actual != expected:
            raise AdapterFileError(
                f"{weights} has sha256 {actual}, but {name} expects {expected}: the file is "
                "damaged or not the one saved; refusing to load it"
            )
    apply_lora(
        model, r=manifest["r"], alpha=manifest["alpha"], target_modules=manifest["target_modules"]
    )
    device = next(model.parameters()).device
    load_lora_state_dict(model, {k: v.to(device) for k, v in load_file(str(weights)).items()})
    return manifest


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (a tensor shared by two modules counts once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_memory(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, int]:
    """Bytes held for training, counted from the tensors themselves.

    ``parameters``: every parameter (frozen ones too: the forward pass needs them);
    ``gradients``: one gradient per trainable parameter, the size ``backward`` allocates;
    ``optimizer``: every tensor in ``optimizer.state`` (AdamW: two moments and a step counter
    per trainable parameter; create them with one step first, or pass ``None`` to skip).
    Activations are left out: they depend on the batch, not on the method.
    """
    params = list(model.parameters())  # shared tensors appear once
    out = {
        "parameters": sum(p.numel() * p.element_size() for p in params),
        "gradients": sum(p.numel() * p.element_size() for p in params if p.requires_grad),
        "optimizer": 0,
    }
    if optimizer is not None:
        out["optimizer"] = sum(
            t.numel() * t.element_size()
            for state in optimizer.state.values()
            for t in state.values()
            if isinstance(t, torch.Tensor)
        )
    out["total"] = out["parameters"] + out["gradients"] + out["optimizer"]
    return out
