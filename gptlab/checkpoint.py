"""Checkpoints: a training run saved atomically, verified on load, and never at the user's expense.

A checkpoint is a directory::

    model.safetensors   weights (tied weights stored once, re-tied on load)
    meta.json           GPTConfig, TrainConfig, step, history, tokenizer, gptlab version and the
                        sha256 of every other file (checked on load: a truncated copy fails loudly)
    optimizer.pt        optimizer state, schedule position and every RNG state
                        (a plain torch file that loads with ``weights_only=True``; only resuming
                        reads it, so inference works even when it is damaged)
    tokenizer.json      the tokenizer, when it is not the stock GPT-2 one

Saving writes a fresh directory ``.NAME.tmp-*`` and swaps it in with two renames
(``NAME -> .NAME.old``, ``.NAME.tmp-* -> NAME``), so a crash never leaves a half-written
checkpoint; a crash between the renames leaves the previous one at ``.NAME.old``, which loading
reads and the next save (or :func:`prepare_checkpoint_dir`) puts back.

Because a save replaces the whole directory, gptlab only saves into a directory that is new,
empty, or a checkpoint holding nothing but gptlab's files; anything else (a file, a folder with
notes or the training text, the current directory) is refused before any work is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gptlab.distributed import _unwrap
from gptlab.model import GPT, GPTConfig
from gptlab.utils import get_device, sha256_file

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "History",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_tokenizer",
    "prepare_checkpoint_dir",
    "save_checkpoint",
]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "optimizer.pt"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FORMAT = "gptlab-checkpoint"
CHECKPOINT_VERSION = 2  # 2: meta.json records the sha256 of every file (1: no hashes)

_GPTLAB_FILES = frozenset({WEIGHTS_FILE, META_FILE, STATE_FILE, TOKENIZER_FILE})
# Written into a folder by file browsers and Jupyter, not by people: replacing them loses nothing.
_SYSTEM_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints"})
# Put in every temporary save directory the moment it is created, so that a killed process's
# leftovers can be told apart from a user's folder of a similar name.
_PARTIAL_MARKER = ".gptlab-partial-save"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted, does not fit its model, or cannot be saved safely."""


# --------------------------------------------------------------------------------------------
# What a checkpoint records besides tensors
# --------------------------------------------------------------------------------------------


@dataclass
class History:
    """What happened during training, one entry per optimizer step (and per evaluation).

    ``steps[i]`` counts completed optimizer steps (1, 2, ...); ``train_loss[i]`` is the mean
    loss of that step's batch, ``lr[i]`` the learning rate it used, ``tokens_seen[i]`` the
    tokens processed so far (all processes), ``grad_norm[i]`` the gradient norm before
    clipping. Evaluations are recorded at ``eval_steps`` (0 = before training) with
    ``val_loss``; perplexity is ``exp(val_loss)``.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    tokens_seen: list[int] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    @property
    def val_perplexity(self) -> list[float]:
        return [math.exp(v) for v in self.val_loss]

    def to_dict(self) -> dict[str, list[Any]]:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown History key {unknown[0]!r}; expected some of {sorted(known)}"
            )
        return cls(**{k: list(v) for k, v in d.items()})


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read. ``training_state`` is the content of optimizer.pt."""

    path: pathlib.Path
    step: int
    meta: dict[str, Any]
    history: History
    training_state: dict[str, Any] | None

    @property
    def model_config(self) -> dict[str, Any] | None:
        """The recorded GPTConfig as a dict (``GPTConfig.from_dict`` rebuilds it)."""
        return self.meta.get("model_config")

    @property
    def train_config(self) -> dict[str, Any] | None:
        """The recorded TrainConfig as a dict (``TrainConfig.from_dict`` rebuilds it)."""
        return self.meta.get("train_config")


# --------------------------------------------------------------------------------------------
# Which directories gptlab may replace
# --------------------------------------------------------------------------------------------


def _as_path(directory: Any, what: str = "checkpoint directory") -> pathlib.Path:
    if not isinstance(directory, (str, os.PathLike)) or not os.fspath(directory):
        raise TypeError(f"the {what} must be a non-empty path, got {directory!r}")
    return pathlib.Path(directory)


def _backup_path(target: pathlib.Path) -> pathlib.Path:
    return target.parent / f".{target.name}.old"


def _tmp_prefix(target: pathlib.Path) -> str:
    return f".{target.name}.tmp-"


def _read_meta(path: pathlib.Path) -> dict[str, Any] | None:
    """``path/meta.json`` if it is a gptlab checkpoint's (it carries the format marker), else None."""
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT else None


def _foreign_entries(path: pathlib.Path) -> list[str]:
    """Names in ``path`` that no gptlab save writes (other than file-browser clutter)."""
    return sorted(p.name for p in path.iterdir() if p.name not in _GPTLAB_FILES | _SYSTEM_FILES)


def _is_checkpoint_dir(path: pathlib.Path) -> bool:
    """A real directory with gptlab's meta.json and nothing but gptlab's files."""
    return (
        path.is_dir()
        and not path.is_symlink()
        and _read_meta(path) is not None
        and not _foreign_entries(path)
    )


def _is_partial_save(path: pathlib.Path) -> bool:
    """A temporary save directory a killed gptlab process left behind (it carries the marker)."""
    if not path.is_dir() or path.is_symlink():
        return False
    marker = path / _PARTIAL_MARKER
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if marker.is_file() and marker.read_text(encoding="utf-8") == CHECKPOINT_FORMAT:
            return True
    return _is_checkpoint_dir(path)  # complete, but killed before it was renamed into place


def _refuse_unsafe_target(target: pathlib.Path) -> None:
    """Raise unless replacing ``target`` as a whole can only ever remove gptlab's own files."""
    fix = "set out_dir (TrainConfig.checkpoint_dir) to a new or empty folder, e.g. 'runs/my_run'"
    resolved, cwd = target.resolve(), pathlib.Path.cwd().resolve()
    if target.name in ("", ".", "..") or resolved == cwd or resolved in cwd.parents:
        raise CheckpointError(
            f"cannot save a checkpoint to {str(target)!r}: it is the current directory or one "
            f"above it, and a save replaces the whole folder; {fix}"
        )
    if target.is_symlink():
        raise CheckpointError(
            f"{str(target)!r} is a symbolic link; a save replaces the folder itself, so pass the "
            f"folder it points to ({os.path.realpath(target)!r}) or {fix}"
        )
    if target.exists() and not target.is_dir():
        raise CheckpointError(
            f"{str(target)!r} is an existing file, not a checkpoint folder; gptlab will not "
            f"replace it; {fix}"
        )
    if not target.is_dir() or not any(target.iterdir()):
        return
    if _read_meta(target) is None:
        names = _foreign_entries(target)
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise CheckpointError(
            f"{str(target)!r} already holds files that are not a gptlab checkpoint ({listed}); "
            f"a save replaces the whole folder, so gptlab refuses to use it; {fix}"
        )
    foreign = _foreign_entries(target)
    if foreign:
        raise CheckpointError(
            f"the checkpoint folder {str(target)!r} also holds files gptlab did not write "
            f"({', '.join(foreign[:5])}); a save replaces the whole folder: move them elsewhere, "
            f"or {fix}"
        )


def prepare_checkpoint_dir(directory: str | os.PathLike[str]) -> pathlib.Path:
    """Check that saving to ``directory`` is safe, and recover a checkpoint a crashed save left.

    Raises :class:`CheckpointError`, saying what to do, when ``directory`` is a file, a
    symbolic link, the current directory (or one above it), a non-empty folder that is not a
    gptlab checkpoint, or a checkpoint that also holds other files, or when ``.NAME.old`` exists
    and was not written by gptlab. A checkpoint left at ``.NAME.old`` by a save that died
    between its two renames is moved back to ``directory``. Returns ``directory`` as a Path.
    """
    target = _as_path(directory)
    _refuse_unsafe_target(target)
    backup = _backup_path(target)
    if backup.exists() or backup.is_symlink():
        if not _is_checkpoint_dir(backup):
            raise CheckpointError(
                f"{str(backup)!r} exists but is not a checkpoint gptlab wrote; gptlab keeps the "
                "previous checkpoint under that name while it saves: rename or move that entry"
            )
        if not target.exists():
            os.rename(backup, target)  # an earlier save died between its two renames
        elif not any(target.iterdir()):
            target.rmdir()
            os.rename(backup, target)
    return target


def find_checkpoint(directory: str | os.PathLike[str]) -> pathlib.Path | None:
    """The checkpoint at ``directory`` (or the intact one a crashed save left at ``.NAME.old``).

    Returns None when there is neither; reads only meta.json, never the tensors.
    """
    path = _as_path(directory)
    if _read_meta(path) is not None:
        return path
    backup = _backup_path(path)
    empty = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if empty and _is_checkpoint_dir(backup):
        return backup
    return None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: pathlib.Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_directory(target: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield an empty temporary directory; on success it replaces ``target`` as a whole.

    A directory cannot be renamed over a non-empty one, so the swap is two renames:
    target -> .target.old, tmp -> target. On an exception (KeyboardInterrupt included) the
    temporary directory is removed and ``target`` is untouched. Only entries gptlab wrote are
    ever removed: :func:`prepare_checkpoint_dir` vets ``target`` and ``.target.old``, and stale
    temporary directories are removed only when they carry gptlab's marker.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prepare_checkpoint_dir(target)
    backup = _backup_path(target)
    for stale in target.parent.iterdir():  # left by a killed process
        if stale.name.startswith(_tmp_prefix(target)) and _is_partial_save(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    try:
        (tmp / _PARTIAL_MARKER).write_text(CHECKPOINT_FORMAT, encoding="utf-8")
        yield tmp
        (tmp / _PARTIAL_MARKER).unlink()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; a checkpoint is ordinary data
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if backup.exists():  # vetted above: a complete gptlab checkpoint
            shutil.rmtree(backup)
        if target.exists():  # vetted above: empty, or nothing but gptlab's files
            os.rename(target, backup)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _deduplicated_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights with each tied tensor once, plus ``{alias: stored_name}`` for the others."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        if t.numel() > 0 and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def _tokenizer_record(tokenizer: Any, directory: pathlib.Path) -> dict[str, Any] | None:
    """Describe (and if needed save) the tokenizer so that :func:`load_tokenizer` can rebuild it."""
    if tokenizer is None:
        return None
    if isinstance(tokenizer, str):
        if tokenizer != "gpt2":
            raise ValueError(
                f"tokenizer name must be 'gpt2' or a tokenizer object, got {tokenizer!r}"
            )
        return {"kind": "gpt2"}
    if type(tokenizer).__module__.startswith("tiktoken"):
        if tokenizer.name not in ("gpt2", "r50k_base"):
            raise ValueError(
                f"only the GPT-2 tiktoken encoding can be recorded, got {tokenizer.name!r}"
            )
        return {"kind": "gpt2"}
    kind = type(tokenizer).__name__
    if kind not in ("CharTokenizer", "BPETokenizer") or not hasattr(tokenizer, "save"):
        raise TypeError(
            f"cannot record a {kind} in a checkpoint; pass 'gpt2', a CharTokenizer or a BPETokenizer"
        )
    tokenizer.save(directory / TOKENIZER_FILE)
    return {"kind": kind, "file": TOKENIZER_FILE, "vocab_size": int(tokenizer.vocab_size)}


def _record(value: Any, name: str) -> dict[str, Any] | None:
    """A config or history as a JSON-ready dict: it may be None, a mapping or have ``to_dict()``."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if callable(getattr(value, "to_dict", None)):
        return value.to_dict()
    raise TypeError(
        f"{name} must be a {name} object, a mapping or None, got {type(value).__name__}"
    )


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
    *,
    train_config: Any = None,
    history: History | None = None,
    tokenizer: Any = None,
    rng_state: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a checkpoint directory atomically (see the module docstring for its files).

    ``scheduler_state`` and ``rng_state`` go into optimizer.pt with the optimizer state;
    ``train_config`` (a TrainConfig), ``history`` and ``extra`` (JSON-serialisable) into
    meta.json. Refuses (:class:`CheckpointError`) a directory that holds anything gptlab did
    not write; see :func:`prepare_checkpoint_dir`. Returns the directory.
    """
    from safetensors.torch import save_file

    from gptlab import __version__

    target = _as_path(directory)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    base = _unwrap(model)
    tensors, aliases = _deduplicated_state_dict(base)
    config = getattr(base, "config", None)
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "gptlab_version": __version__,
        "torch_version": torch.__version__,
        "step": step,
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "train_config": _record(train_config, "train_config"),
        "history": _record(history, "history") or History().to_dict(),
        "tied_weights": aliases,
        "extra": dict(extra) if extra is not None else None,
    }
    with _atomic_directory(target) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        meta["tokenizer"] = _tokenizer_record(tokenizer, tmp)
        if optimizer is not None or scheduler_state is not None or rng_state is not None:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": dict(scheduler_state) if scheduler_state is not None else None,
                "rng": dict(rng_state) if rng_state is not None else None,
            }
            torch.save(state, tmp / STATE_FILE)
        meta["files"] = {
            f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.name in _GPTLAB_FILES
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _open_checkpoint(directory: str | os.PathLike[str]) -> tuple[pathlib.Path, dict[str, Any]]:
    """The checkpoint's directory (``.NAME.old`` after a crashed save) and its checked meta.json."""
    path = find_checkpoint(directory) or _as_path(directory)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}: expected a directory with {META_FILE} and "
            f"{WEIGHTS_FILE} written by gptlab.checkpoint.save_checkpoint"
        )
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{meta_file} is not valid JSON ({err}); the checkpoint is damaged: copy it again or "
            "use an earlier one"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_file} is not a gptlab checkpoint (format={found!r})")
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer gptlab (format_version {version!r}; this one reads up "
            f"to {CHECKPOINT_VERSION}): upgrade gptlab (pip install -U gptlab)"
        )
    return path, meta


def _verified(path: pathlib.Path, name: str, meta: Mapping[str, Any]) -> pathlib.Path:
    """``path/name``, after checking it against the sha256 meta.json recorded for it.

    Checkpoints written before hashes were recorded (format_version 1) are read unchecked.
    """
    file = path / name
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the checkpoint is incomplete; copy it again")
    recorded = meta.get("files")
    if recorded is None:
        return file
    expected = recorded.get(name)
    if expected is None:
        raise CheckpointError(
            f"{path / META_FILE} records no sha256 for {name}, so it cannot be checked; the "
            "checkpoint was edited by hand: save it again with save_checkpoint"
        )
    actual = sha256_file(file)
    if actual != expected:
        raise CheckpointError(
            f"{file} is corrupted: its sha256 is {actual}, but {META_FILE} recorded {expected} "
            f"({file.stat().st_size:,} bytes on disk); it changed after it was saved (a truncated "
            "or partial copy?): copy the checkpoint again or use an earlier one"
        )
    return file


def _load_weights(
    model: nn.Module, tensors: dict[str, torch.Tensor], aliases: Mapping[str, str]
) -> None:
    expected = model.state_dict()
    for alias, stored in aliases.items():
        if alias in expected and stored in tensors:
            tensors[alias] = tensors[stored]  # a tied tensor: load the one stored copy into both
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint and model have different tensors: missing from checkpoint {missing[:5]}, "
            f"not in model {unexpected[:5]}; build the model with the checkpoint's config "
            "(gptlab.checkpoint.load_model does this)"
        )
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"shape mismatch for tensor {name!r}: checkpoint has {tuple(tensors[name].shape)}, "
                f"model has {tuple(t.shape)}; build the model with the checkpoint's GPTConfig "
                "(gptlab.checkpoint.load_model(dir) does this)"
            )
    model.load_state_dict(tensors, strict=True)


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device = "cpu",
    read_training_state: bool = True,
) -> Checkpoint:
    """Read a checkpoint; load its weights into ``model`` and its state into ``optimizer`` if given.

    Every file read is first checked against the sha256 in meta.json. ``read_training_state=False``
    leaves optimizer.pt unread (``Checkpoint.training_state`` is then None), which is all that
    inference needs. Raises :class:`CheckpointError` (a ValueError) naming the file that is
    missing or corrupted, or the tensor and both shapes when the model does not match.
    """
    from safetensors.torch import load_file

    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    path, meta = _open_checkpoint(directory)
    if model is not None:
        base = _unwrap(model)
        device = next(base.parameters()).device
        tensors = load_file(str(_verified(path, WEIGHTS_FILE, meta)), device=str(device))
        _load_weights(base, tensors, meta.get("tied_weights", {}))
    state = None
    if (read_training_state or optimizer is not None) and (path / STATE_FILE).is_file():
        state_file = _verified(path, STATE_FILE, meta)
        state = torch.load(state_file, map_location=map_location, weights_only=True)
    if optimizer is not None:
        if state is None or state.get("optimizer") is None:
            raise CheckpointError(f"{path} holds no optimizer state; it cannot resume training")
        optimizer.load_state_dict(state["optimizer"])
    return Checkpoint(
        path=path,
        step=int(meta["step"]),
        meta=meta,
        history=History.from_dict(meta.get("history") or {}),
        training_state=state,
    )


def load_model(directory: str | os.PathLike[str], device: str | torch.device | None = None) -> GPT:
    """Rebuild the GPT stored in a checkpoint (config + weights), in eval mode, on ``device``.

    Reads meta.json and model.safetensors only (never optimizer.pt), checking the weights'
    sha256 first.
    """
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be None, a string such as 'cpu', or a torch.device; got {device!r}"
        )
    path, meta = _open_checkpoint(directory)
    if meta.get("model_config") is None:
        raise CheckpointError(
            f"{path} records no model_config; build the model yourself and use load_checkpoint"
        )
    model = GPT(GPTConfig.from_dict(meta["model_config"]))
    if device is not None:
        model.to(device if isinstance(device, torch.device) else get_device(device))
    load_checkpoint(path, model, read_training_state=False)
    return model.eval()


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The tokenizer recorded in a checkpoint (tiktoken GPT-2, CharTokenizer or BPETokenizer)."""
    path, meta = _open_checkpoint(directory)
    record = meta.get("tokenizer")
    if record is None:
        raise CheckpointError(
            f"{path} records no tokenizer; save_checkpoint(..., tokenizer=...) stores one, "
            "or build the tokenizer yourself"
        )
    from gptlab import tokenizers

    if record["kind"] == "gpt2":
        return tokenizers.get_tokenizer("gpt2")
    if record["kind"] in ("CharTokenizer", "BPETokenizer"):
        return getattr(tokenizers, record["kind"]).load(_verified(path, record["file"], meta))
    raise CheckpointError(f"{path} records an unknown tokenizer kind {record['kind']!r}")
