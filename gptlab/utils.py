"""Small helpers every chapter uses: seeding, device choice, atomic file writes, the cache folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import random
import secrets
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "atomic_write",
    "cache_dir",
    "get_device",
    "provenance",
    "round_floats",
    "seed_everything",
]

_DEVICES = ("cpu", "cuda", "mps")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (CPU and every GPU) with one number."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"seed must be an int, got {type(seed).__name__}; pass e.g. seed_everything(0)"
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}; NumPy accepts no other range")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds the legacy global RNG that readers use)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(prefer: str | None = None) -> torch.device:
    """Pick where tensors live: ``prefer`` or ``$GPTLAB_DEVICE`` if given, else CUDA, then MPS, then CPU.

    An explicit choice that this machine cannot honour raises instead of silently falling back,
    so a reader who asked for a GPU learns that they are not on one.
    """
    choice = prefer if prefer is not None else os.environ.get("GPTLAB_DEVICE") or None
    if choice is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(choice, str):
        raise TypeError(
            f"prefer must be a string such as 'cpu' or 'cuda', got {type(choice).__name__}"
        )
    kind = choice.split(":")[0].strip().lower()
    if kind not in _DEVICES:
        raise ValueError(
            f"unknown device {choice!r}; use one of {', '.join(_DEVICES)} (e.g. 'cuda:0')"
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {choice!r} requested but CUDA is not available here; use 'cpu' or unset GPTLAB_DEVICE"
        )
    if kind == "mps" and not _mps_available():
        raise ValueError(f"device {choice!r} requested but MPS is not available here; use 'cpu'")
    return torch.device(choice.strip().lower())


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    Readers never see a half-written file: either the old file or the complete new one exists.
    On any exception the temporary file is removed and ``path`` is left untouched. The new file
    gets the permissions a plain ``open`` would give it (those of the file it replaces, or
    0o666 less the umask), not the private 0o600 of a temporary file.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports modes 'w', 'wt' and 'wb', got {mode!r}")
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp, whose file is always 0o600: open with 0o666 and let the umask apply, as a
    # plain open() would; O_EXCL with a random name never touches anyone else's file.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():  # a replaced file keeps its permissions
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_dir() -> pathlib.Path:
    """Folder for downloaded archives and derived files: ``$GPTLAB_CACHE`` or ``~/.cache/gptlab``."""
    root = os.environ.get("GPTLAB_CACHE")
    path = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "gptlab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints, caches and shipped assets are
    verified against it before they are used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def round_floats(value: Any, digits: int = 6) -> Any:
    """``value`` with every float inside (nested dicts and lists) rounded to ``digits``
    significant digits, e.g. a training history before it is stored as JSON."""
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits must be a positive int, got {digits!r}")
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def provenance() -> dict[str, str]:
    """Where a stored result came from: today's date and the gptlab, PyTorch and Python versions
    (the keys every recipe's JSON and manifest start with)."""
    import datetime
    import platform

    from gptlab import __version__

    return {
        "created": datetime.date.today().isoformat(),
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
