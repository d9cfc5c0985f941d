"""The book's reference model: a small GPT pretrained on Shakespeare, shipped inside the package.

Chapters that need a model which has *already* learned something (sampling, evaluation,
fine-tuning) load it with :func:`load_reference_model` instead of training one for an hour.

The files live in ``gptlab/assets/reference/``. The folder is a normal gptlab checkpoint
(``model.safetensors``, ``meta.json``, ``tokenizer.json``; no optimizer state), so
``python -m gptlab generate --checkpoint gptlab/assets/reference --prompt "ROMEO:"`` works, plus
``manifest.json``: how it was made (the exact commands, config, training time, losses) and the
sha256 of every file. Loading checks those hashes, so a truncated download or a Git LFS pointer
fails loudly instead of producing a model that quietly writes nonsense.

The model is the output of a recipe (``recipes/reference.toml``); ``tests/test_reference.py``
re-runs its first steps and checks they reproduce the losses the manifest recorded.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any

import torch

from gptlab.tokenizers import encode_plain
from gptlab.utils import sha256_file  # re-exported: recipes and tests use it from here

__all__ = [
    "REFERENCE_DIR",
    "ReferenceModelError",
    "load_reference_model",
    "load_reference_tokenizer",
    "reference_manifest",
    "reference_splits",
    "sha256_file",
    "verify_reference",
]

REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "reference"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
_FIX = (
    "reinstall gptlab (pip install --force-reinstall gptlab), or in a clone run "
    "'git checkout -- gptlab/assets/reference' (and 'git lfs pull' if you use Git LFS); "
    "to rebuild the files yourself follow recipes/README.md"
)


class ReferenceModelError(RuntimeError):
    """The shipped reference files are missing, unreadable or do not match their sha256."""


def _resolve(directory: str | os.PathLike[str] | None) -> pathlib.Path:
    if directory is None:
        return REFERENCE_DIR
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"directory must be a path or None (the shipped model), got {type(directory).__name__}"
        )
    return pathlib.Path(directory)


def reference_manifest(directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The reference model's ``manifest.json``: recipe, configs, training time, losses, hashes."""
    path = _resolve(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ReferenceModelError(f"the reference model's {MANIFEST_FILE} is missing; {_FIX}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReferenceModelError(f"{MANIFEST_FILE} is not valid JSON ({err}); {_FIX}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ReferenceModelError(f"{MANIFEST_FILE} lists no files with their sha256; {_FIX}")
    return manifest


def verify_reference(directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Check every file the manifest lists against its sha256; return the manifest.

    Raises :class:`ReferenceModelError` naming the first file that is missing or differs.
    """
    root = _resolve(directory)
    manifest = reference_manifest(root)
    for name, expected in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise ReferenceModelError(f"the reference model's {name} is missing; {_FIX}")
        actual = sha256_file(path)
        if actual != expected:
            size = path.stat().st_size
            raise ReferenceModelError(
                f"the reference model's {name} is corrupted: its sha256 is {actual}, the manifest "
                f"expects {expected} ({size:,} bytes on disk); {_FIX}"
            )
    return manifest


def load_reference_tokenizer(directory: str | os.PathLike[str] | None = None) -> Any:
    """The tokenizer the reference model was trained with (a gptlab BPETokenizer or CharTokenizer)."""
    from gptlab.checkpoint import load_tokenizer

    root = _resolve(directory)
    verify_reference(root)
    return load_tokenizer(root)


def load_reference_model(
    device: str | torch.device | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """Load the shipped reference GPT (in eval mode) and its tokenizer, after checking the hashes.

    ``device``: ``None`` or ``"cpu"`` keeps it on the CPU (it is small); ``"auto"``, ``"cuda"``
    or ``"mps"`` move it. ``directory`` loads another folder with the same layout (tests).

    >>> model, tokenizer = load_reference_model()  # doctest: +SKIP
    """
    from gptlab.checkpoint import load_model, load_tokenizer
    from gptlab.utils import get_device

    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be None, a string such as 'cpu' or 'cuda', or a torch.device; got {device!r}"
        )
    root = _resolve(directory)
    verify_reference(root)
    if device is None:
        target = torch.device("cpu")
    elif isinstance(device, torch.device):
        target = device
    else:
        target = get_device(None if device == "auto" else device)
    model = load_model(root, device=target)
    return model.eval(), load_tokenizer(root)


@functools.lru_cache(maxsize=2)
def _split_ids(root: str, tokenizer_sha: str) -> tuple[torch.Tensor, torch.Tensor]:
    from gptlab.data import load_corpus, train_val_split

    manifest = reference_manifest(root)
    data = manifest["data"]
    tokenizer = load_reference_tokenizer(root)
    text = load_corpus(data["corpus"]).text
    encode = functools.partial(encode_plain, tokenizer)  # specials stay text
    ids = torch.tensor(encode(text), dtype=torch.long)
    return train_val_split(ids, data["val_fraction"])


def reference_splits(
    directory: str | os.PathLike[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (train_ids, val_ids) token tensors the reference model was trained and validated on.

    Exactly what the recipe built: the corpus encoded with the reference tokenizer, then split
    with :func:`gptlab.data.train_val_split` (the last ``val_fraction`` validates). Cached, so
    a second call is free; the tensors returned are copies you may modify.
    """
    root = _resolve(directory)
    manifest = verify_reference(root)
    train_ids, val_ids = _split_ids(str(root), manifest["files"]["tokenizer.json"])
    return train_ids.clone(), val_ids.clone()
