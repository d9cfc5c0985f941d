"""Pretraining a GPT: the training loop, its learning-rate schedule, and checkpoints you can resume.

The loop does, once per optimizer step::

    lr    = lr_at(step)                        # linear warm-up, then cosine decay to min_lr
    loss  = accumulate_gradients(model, k micro-batches)   # each loss scaled by 1/k
    norm  = clip_gradients(model, grad_clip)   # rescale so the global gradient norm <= grad_clip
    optimizer.step(); optimizer.zero_grad()    # AdamW, weight decay on matrices only

plus, every so often, an evaluation on held-out tokens, a text sample and a checkpoint.

Checkpoints are directories written atomically (a crash never leaves a half-written one)::

    model.safetensors   weights (tied weights stored once, re-tied on load)
    meta.json           GPTConfig, TrainConfig, step, history, tokenizer, gptlab version
    optimizer.pt        optimizer state, schedule position and every RNG state
                        (a plain torch file that loads with ``weights_only=True``)
    tokenizer.json      the tokenizer, when it is not the stock GPT-2 one

Resuming restores all of it, so N steps + save + resume + N steps gives bit-identical weights to
2N uninterrupted steps on CPU. Under ``torchrun`` (``WORLD_SIZE`` > 1) the same loop runs
data-parallel with DistributedDataParallel; see :func:`train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gptlab.data import get_batch
from gptlab.utils import get_device, seed_everything

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "History",
    "TrainConfig",
    "accumulate_gradients",
    "clip_gradients",
    "configure_optimizer",
    "evaluate",
    "load_checkpoint",
    "load_model",
    "load_tokenizer",
    "lr_at",
    "save_checkpoint",
    "split_decay_params",
    "train",
]

WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "optimizer.pt"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_FORMAT = "gptlab-checkpoint"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"TrainConfig.{name} must be an int, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"TrainConfig.{name} must be >= {minimum}, got {value}{hint}")


def _check_float(name: str, value: Any, minimum: float, *, allow_equal: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"TrainConfig.{name} must be a number, got {value!r} ({type(value).__name__})"
        )
    if not math.isfinite(value):
        raise ValueError(f"TrainConfig.{name} must be finite, got {value}")
    if value < minimum or (value == minimum and not allow_equal):
        relation = ">=" if allow_equal else ">"
        raise ValueError(f"TrainConfig.{name} must be {relation} {minimum}, got {value}")


@dataclass
class TrainConfig:
    """Everything the training loop needs to know besides the model and the data.

    The batch the optimizer sees per step is ``batch_size * grad_accum_steps`` sequences of
    ``block_size`` tokens on each of the ``WORLD_SIZE`` processes.
    """

    batch_size: int = 16  # sequences per micro-batch (per process under torchrun)
    block_size: int = 128  # tokens per sequence; at most the model's block_size
    max_steps: int = 2000  # optimizer steps; the cosine schedule ends here
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float | None = None  # floor of the cosine decay; None means lr / 10
    warmup_steps: int = 100  # linear warm-up length, <= max_steps
    weight_decay: float = 0.1  # AdamW decay on weight matrices (not biases/LayerNorm/embeddings)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW moment decay rates
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    grad_accum_steps: int = 1  # micro-batches summed into one optimizer step
    eval_interval: int = (
        200  # evaluate every this many steps (and at the start and the end); 0: never
    )
    eval_iters: int = 20  # batches averaged per evaluation
    sample_interval: int = 0  # call the sample hook every this many steps; 0: never
    seed: int = 1337  # seeds data order, dropout and initial RNG states
    device: str = "auto"  # "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps"
    amp: bool = True  # bfloat16 autocast on CUDA; CPU and MPS always train in float32
    checkpoint_dir: str | None = None  # where to save checkpoints; None: do not save
    checkpoint_interval: int = 0  # save every this many steps (and at the end); 0: only at the end
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):  # TOML and JSON have no tuples
            self.betas = tuple(self.betas)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("block_size", self.block_size, 1)
        _check_int("max_steps", self.max_steps, 1)
        _check_float("lr", self.lr, 0.0, allow_equal=False)
        if self.min_lr is not None:
            _check_float("min_lr", self.min_lr, 0.0)
            if self.min_lr > self.lr:
                raise ValueError(
                    f"TrainConfig.min_lr ({self.min_lr}) must be <= lr ({self.lr}): the schedule "
                    "decays from lr down to min_lr"
                )
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"TrainConfig.warmup_steps ({self.warmup_steps}) must be <= max_steps "
                f"({self.max_steps}); shorten the warm-up or train for longer"
            )
        _check_float("weight_decay", self.weight_decay, 0.0)
        if (
            not isinstance(self.betas, tuple)
            or len(self.betas) != 2
            or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        _check_float("grad_clip", self.grad_clip, 0.0)
        _check_int(
            "grad_accum_steps",
            self.grad_accum_steps,
            1,
            "; use 1 for no accumulation (one micro-batch per step)",
        )
        _check_int("eval_interval", self.eval_interval, 0, "; use 0 to turn evaluation off")
        _check_int("eval_iters", self.eval_iters, 1)
        _check_int("sample_interval", self.sample_interval, 0, "; use 0 to turn sampling off")
        _check_int("seed", self.seed, 0)
        if self.seed >= 2**32 - 2**16:
            raise ValueError(f"TrainConfig.seed must be < 2**32 - 2**16, got {self.seed}")
        if not isinstance(self.device, str):
            raise TypeError(
                f"TrainConfig.device must be a string such as 'auto' or 'cpu', got {self.device!r}"
            )
        if self.device != "auto":
            kind = self.device.split(":")[0]
            if kind not in ("cpu", "cuda", "mps"):
                raise ValueError(
                    f"TrainConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
                )
        if not isinstance(self.amp, bool):
            raise TypeError(f"TrainConfig.amp must be true or false, got {self.amp!r}")
        if self.checkpoint_dir is not None and not isinstance(
            self.checkpoint_dir, (str, os.PathLike)
        ):
            raise TypeError(
                f"TrainConfig.checkpoint_dir must be a path or None, got {self.checkpoint_dir!r}"
            )
        if isinstance(self.checkpoint_dir, os.PathLike):
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        _check_int(
            "checkpoint_interval", self.checkpoint_interval, 0, "; use 0 to save only at the end"
        )
        if not isinstance(self.progress, bool):
            raise TypeError(f"TrainConfig.progress must be true or false, got {self.progress!r}")

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine decay ends at (``min_lr``, or ``lr / 10`` when unset)."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (TOML section, meta.json); unknown keys are an error, not ignored."""
        if not isinstance(d, Mapping):
            raise TypeError(f"TrainConfig.from_dict needs a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig key {unknown[0]!r}; valid keys are: {', '.join(sorted(known))}"
            )
        return cls(**dict(d))


# --------------------------------------------------------------------------------------------
# Learning-rate schedule and optimizer
# --------------------------------------------------------------------------------------------


def lr_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    r"""Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine decay.

    .. math::

        \text{lr}(s) = \begin{cases}
          \text{max\_lr}\cdot\frac{s+1}{W} & s < W \\
          \text{min\_lr} + \tfrac12\,(1+\cos(\pi\,\frac{s-W}{S-W}))\,(\text{max\_lr}-\text{min\_lr})
            & W \le s < S \\
          \text{min\_lr} & s \ge S
        \end{cases}

    with ``W = warmup_steps`` and ``S = max_steps``. So step 0 uses ``max_lr / W`` (never
    zero: a step with lr 0 would be wasted), step ``W - 1`` and step ``W`` use ``max_lr``,
    the midpoint of the decay ``(max_lr + min_lr) / 2``, and every step from ``S`` on ``min_lr``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if not 0 <= min_lr <= max_lr:
        raise ValueError(f"need 0 <= min_lr <= max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if not 0 <= warmup_steps <= max_steps:
        raise ValueError(
            f"need 0 <= warmup_steps <= max_steps, got warmup_steps={warmup_steps}, max_steps={max_steps}"
        )
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel or torch.compile wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def split_decay_params(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters that get weight decay, and of those that do not.

    As in GPT-2: decay only the weight matrices of Linear layers. Biases, LayerNorm gains and
    embedding tables (including ``lm_head.weight``, which *is* the token embedding when tied)
    are not decayed. A tied tensor appears once, under its first name.
    """
    model = _unwrap(model)
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # yields each shared tensor once
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and id(p) in linear_weights and id(p) not in embedding_weights
        (decay if is_matrix else no_decay).append(name)
    return decay, no_decay


def configure_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    *,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with two parameter groups: weight matrices with ``weight_decay``, the rest with 0.

    Uses the fused CUDA kernel when every parameter is on a GPU (same maths, fewer launches).
    """
    if lr <= 0 or weight_decay < 0:
        raise ValueError(
            f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}"
        )
    decay_names, no_decay_names = split_decay_params(model)
    params = dict(_unwrap(model).named_parameters())
    if not decay_names and not no_decay_names:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    groups = [
        {"params": [params[n] for n in decay_names], "weight_decay": weight_decay, "name": "decay"},
        {"params": [params[n] for n in no_decay_names], "weight_decay": 0.0, "name": "no_decay"},
    ]
    fused = all(p.is_cuda for p in params.values())
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


# --------------------------------------------------------------------------------------------
# History
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


# --------------------------------------------------------------------------------------------
# The pieces of one step
# --------------------------------------------------------------------------------------------


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA (no loss scaling needed, unlike float16); float32 elsewhere."""
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> torch.Tensor:
    """Forward and backward over k micro-batches, adding their gradients into ``.grad``.

    Each loss is divided by k, so the summed gradient is the gradient of the mean loss over all
    k micro-batches: the same as one batch k times larger, with a k-th of the memory. Under
    DDP the gradient all-reduce is skipped (``no_sync``) for all but the last micro-batch.
    Returns the mean (unscaled) loss, detached.
    """
    k = len(micro_batches)
    if k == 0:
        raise ValueError("accumulate_gradients needs at least one (x, y) micro-batch")
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    total = None
    for i, (x, y) in enumerate(micro_batches):
        sync = model.no_sync() if is_ddp and i < k - 1 else contextlib.nullcontext()
        with sync:
            with autocast():
                _, loss = model(x, y)
            (loss / k).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / k


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Rescale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping (worth logging: spikes show instability). With
    ``max_norm == 0`` nothing is clipped and the norm is only measured.
    """
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0 (0 = no clipping), got {max_norm}")
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(params, limit))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    batch_size: int,
    block_size: int,
    eval_iters: int,
    seed: int = 0,
    device: torch.device | str | None = None,
    amp: bool = True,
) -> float:
    """Mean loss over ``eval_iters`` random batches of ``ids`` (perplexity = exp of it).

    The batches come from a fresh generator seeded with ``seed``, so every evaluation sees the
    same windows (curves are comparable across steps) and training randomness is untouched.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        losses = torch.zeros(eval_iters)
        for i in range(eval_iters):
            x, y = get_batch(ids, batch_size, block_size, generator=generator)
            with _autocast(device, amp):
                _, loss = model(x.to(device), y.to(device))
            losses[i] = loss.float().item()
    finally:
        model.train(was_training)
    return float(losses.mean())


# --------------------------------------------------------------------------------------------
# Distributed data parallel (torchrun)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    """Join the torchrun process group if ``WORLD_SIZE`` > 1; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Dist(), get_device(None if device_pref == "auto" else device_pref)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref.startswith("cuda:"):
        raise ValueError("under torchrun set device = 'cuda' (each process takes cuda:LOCAL_RANK)")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return _Dist(rank, local_rank, world_size, owns), device


def _mean_over_ranks(value: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value /= d.world_size
    return value


# --------------------------------------------------------------------------------------------
# Random-number-generator state (what makes resume exact)
# --------------------------------------------------------------------------------------------


def _process_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global RNG states: torch (CPU and CUDA), Python, NumPy."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global state is what we seed)
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_process_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit the model it is loaded into."""


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
        return self.meta.get("model_config")

    @property
    def train_config(self) -> TrainConfig | None:
        d = self.meta.get("train_config")
        return TrainConfig.from_dict(d) if d is not None else None


def _fsync_dir(path: pathlib.Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _backup_path(target: pathlib.Path) -> pathlib.Path:
    return target.parent / f".{target.name}.old"


@contextlib.contextmanager
def _atomic_directory(target: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield an empty temporary directory; on success it replaces ``target`` as a whole.

    A directory cannot be renamed over a non-empty one, so the swap is two renames:
    target -> .target.old, tmp -> target. A crash between them leaves .target.old, which the
    next save (and load) recovers. On an exception the temporary directory is removed and
    ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = _backup_path(target)
    if not target.exists() and backup.exists():  # an earlier save died between the renames
        os.rename(backup, target)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; a checkpoint is ordinary data
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if backup.exists():
            shutil.rmtree(backup)
        if target.exists():
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


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    step: int = 0,
    extra: Mapping[str, Any] | None = None,
    *,
    train_config: TrainConfig | None = None,
    history: History | None = None,
    tokenizer: Any = None,
    rng_state: Mapping[str, Any] | None = None,
) -> pathlib.Path:
    """Write a checkpoint directory atomically (see the module docstring for its files).

    ``scheduler_state`` and ``rng_state`` go into optimizer.pt with the optimizer state;
    ``extra`` (JSON-serialisable) into meta.json. Returns the directory.
    """
    from safetensors.torch import save_file

    from gptlab import __version__

    target = pathlib.Path(directory)
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
        "train_config": train_config.to_dict() if train_config is not None else None,
        "history": (history or History()).to_dict(),
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
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return target


def _resolve_checkpoint(directory: str | os.PathLike[str]) -> pathlib.Path:
    path = pathlib.Path(directory)
    if not path.exists() and _backup_path(path).exists():
        return _backup_path(path)  # a save died between its two renames: the old one is intact
    if not (path / META_FILE).is_file():
        raise CheckpointError(
            f"no checkpoint at {str(path)!r}: expected a directory with {META_FILE} and {WEIGHTS_FILE} "
            "written by gptlab.train.save_checkpoint"
        )
    return path


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
            "(gptlab.train.load_model does this)"
        )
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise CheckpointError(
                f"shape mismatch for tensor {name!r}: checkpoint has {tuple(tensors[name].shape)}, "
                f"model has {tuple(t.shape)}; build the model with the checkpoint's GPTConfig "
                "(gptlab.train.load_model(dir) does this)"
            )
    model.load_state_dict(tensors, strict=True)


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint; load its weights into ``model`` and its state into ``optimizer`` if given.

    Raises :class:`CheckpointError` (a ValueError) naming the tensor and both shapes when the
    model does not match, and when the directory is not a checkpoint.
    """
    from safetensors.torch import load_file

    path = _resolve_checkpoint(directory)
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path / META_FILE} is not a gptlab checkpoint (format={meta.get('format')!r})"
        )
    if model is not None:
        base = _unwrap(model)
        device = next(base.parameters()).device
        tensors = load_file(str(path / WEIGHTS_FILE), device=str(device))
        _load_weights(base, tensors, meta.get("tied_weights", {}))
    state = None
    if (path / STATE_FILE).is_file():
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
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


def load_model(
    directory: str | os.PathLike[str], device: str | torch.device | None = None
) -> nn.Module:
    """Rebuild the GPT stored in a checkpoint (config + weights), in eval mode, on ``device``."""
    from gptlab.model import GPT, GPTConfig

    path = _resolve_checkpoint(directory)
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    if meta.get("model_config") is None:
        raise CheckpointError(
            f"{path} records no model_config; build the model yourself and use load_checkpoint"
        )
    model = GPT(GPTConfig.from_dict(meta["model_config"]))
    if device is not None:
        model.to(device if isinstance(device, torch.device) else get_device(device))
    load_checkpoint(path, model)
    return model.eval()


def load_tokenizer(directory: str | os.PathLike[str]) -> Any:
    """The tokenizer recorded in a checkpoint (tiktoken GPT-2, CharTokenizer or BPETokenizer)."""
    path = _resolve_checkpoint(directory)
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
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
        return getattr(tokenizers, record["kind"]).load(path / record["file"])
    raise CheckpointError(f"{path} records an unknown tokenizer kind {record['kind']!r}")


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def _as_token_tensor(ids: Any, name: str, block_size: int) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if t.dim() != 1 or t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(
            f"{name} must be a 1-D tensor of token ids, got shape {tuple(t.shape)} and {t.dtype}"
        )
    if len(t) <= block_size + 1:
        raise ValueError(
            f"{name} has {len(t)} tokens, too few for block_size={block_size}; "
            "use more text or a smaller block_size"
        )
    return t


def train(
    model: nn.Module,
    train_ids: Any,
    val_ids: Any = None,
    cfg: TrainConfig | None = None,
    *,
    resume_from: str | os.PathLike[str] | None = None,
    stop_at: int | None = None,
    sample_fn: Callable[[nn.Module, int], str | None] | None = None,
    tokenizer: Any = None,
) -> History:
    """Train ``model`` (a GPT: ``model(x, y) -> (logits, loss)``) on token ids; return its History.

    - ``val_ids``: held-out tokens; evaluated at the start, every ``eval_interval`` steps and at
      the end (rank 0 only). ``None`` skips evaluation.
    - ``resume_from``: a checkpoint directory; weights, optimizer, step, history and every RNG
      are restored, so the run continues exactly where it stopped.
    - ``stop_at``: stop after this many steps although the schedule runs to ``cfg.max_steps``
      (e.g. to split a long run into sessions; a checkpoint is saved when stopping).
    - ``sample_fn(model, step)``: called every ``sample_interval`` steps in eval mode, without
      gradients and with the RNG state forked, so sampling never changes the training run; a
      returned string is printed.
    - ``tokenizer``: recorded in checkpoints so ``python -m gptlab generate`` can decode.

    Data: one generator seeded with ``cfg.seed`` draws every batch. Under torchrun all ranks
    draw the same global batch of ``batch_size * WORLD_SIZE`` windows and rank r trains on rows
    ``[r * batch_size, (r + 1) * batch_size)``: disjoint shards, and the whole run equals one
    process training with ``batch_size * WORLD_SIZE`` (gradients are averaged over ranks).
    """
    cfg = TrainConfig() if cfg is None else cfg
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    model_block = getattr(getattr(_unwrap(model), "config", None), "block_size", None)
    if model_block is not None and cfg.block_size > model_block:
        raise ValueError(
            f"TrainConfig.block_size ({cfg.block_size}) exceeds the model's block_size ({model_block}); "
            "the model has no position embedding beyond that: lower TrainConfig.block_size"
        )
    train_ids = _as_token_tensor(train_ids, "train_ids", cfg.block_size)
    if val_ids is not None:
        val_ids = _as_token_tensor(val_ids, "val_ids", cfg.block_size)
    end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
    if isinstance(end, bool) or not isinstance(end, int) or end < 1:
        raise ValueError(f"stop_at must be a positive int or None, got {stop_at!r}")

    d, device = _setup_distributed(cfg.device)
    try:
        return _train_loop(
            model, train_ids, val_ids, cfg, d, device, resume_from, end, sample_fn, tokenizer
        )
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _train_loop(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor | None,
    cfg: TrainConfig,
    d: _Dist,
    device: torch.device,
    resume_from: str | os.PathLike[str] | None,
    end: int,
    sample_fn: Callable[[nn.Module, int], str | None] | None,
    tokenizer: Any,
) -> History:
    model.to(device)
    model.train()
    optimizer = configure_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    data_gen = torch.Generator().manual_seed(cfg.seed)  # identical on every rank
    history, start = History(), 0
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, model, optimizer)  # CPU: RNG states must stay there
        history, start = ckpt.history, ckpt.step
        rng = (ckpt.training_state or {}).get("rng")
        if rng is None:
            raise CheckpointError(
                f"{ckpt.path} has no RNG state, so it cannot resume training exactly"
            )
        data_gen.set_state(rng["data"])
        if len(rng["ranks"]) == d.world_size:
            _restore_process_rng_state(rng["ranks"][d.rank], device)
        else:  # a different number of processes: data order stays exact, dropout masks do not
            warnings.warn(
                f"checkpoint was written by {len(rng['ranks'])} processes, now {d.world_size}: "
                "dropout randomness is reseeded",
                stacklevel=2,
            )
            seed_everything(cfg.seed + d.rank + start)
    else:
        seed_everything(cfg.seed + d.rank)  # dropout masks differ across ranks, as they should
    if start >= end:
        return history

    net = model
    if d.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum_steps * d.world_size
    rows = slice(d.rank * cfg.batch_size, (d.rank + 1) * cfg.batch_size)

    def next_micro_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = get_batch(
            train_ids, cfg.batch_size * d.world_size, cfg.block_size, generator=data_gen
        )
        return x[rows].to(device, non_blocking=True), y[rows].to(device, non_blocking=True)

    def run_eval(step: int) -> None:
        if val_ids is None or not d.is_main:
            return
        loss = evaluate(
            model, val_ids, batch_size=cfg.batch_size, block_size=cfg.block_size,
            eval_iters=cfg.eval_iters, seed=cfg.seed + 1, device=device, amp=cfg.amp,
        )  # fmt: skip
        history.eval_steps.append(step)
        history.val_loss.append(loss)

    def save(step: int) -> None:
        if cfg.checkpoint_dir is None:
            return
        ranks = [_process_rng_state(device)]
        if d.world_size > 1:  # collective: every rank hands rank 0 its RNG state
            gathered: list[Any] = [None] * d.world_size
            dist.all_gather_object(gathered, ranks[0])
            ranks = gathered
        if d.is_main:
            save_checkpoint(
                cfg.checkpoint_dir, model, optimizer,
                scheduler_state={"kind": "warmup_cosine", "next_step": step},
                step=step, train_config=cfg, history=history, tokenizer=tokenizer,
                rng_state={"data": data_gen.get_state(), "ranks": ranks},
            )  # fmt: skip

    autocast = lambda: _autocast(device, cfg.amp)  # noqa: E731
    if start == 0 and cfg.eval_interval > 0:
        run_eval(0)  # the loss before any training: about ln(vocab_size)
    bar = tqdm(
        total=end,
        initial=start,
        desc="train",
        unit="step",
        disable=not (cfg.progress and d.is_main),
    )
    for step in range(start, end):
        lr = lr_at(
            step,
            max_lr=cfg.lr,
            min_lr=cfg.final_lr,
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
        )
        for group in optimizer.param_groups:
            group["lr"] = lr

        batches = [next_micro_batch() for _ in range(cfg.grad_accum_steps)]
        loss = accumulate_gradients(net, batches, autocast=autocast)
        grad_norm = clip_gradients(model, cfg.grad_clip)  # grads are already all-reduced
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        loss_value = float(_mean_over_ranks(loss, d))
        history.steps.append(done)
        history.train_loss.append(loss_value)
        history.lr.append(lr)
        history.tokens_seen.append(done * tokens_per_step)
        history.grad_norm.append(grad_norm)

        if cfg.eval_interval > 0 and (done % cfg.eval_interval == 0 or done == cfg.max_steps):
            run_eval(done)
        if (
            sample_fn is not None
            and cfg.sample_interval > 0
            and done % cfg.sample_interval == 0
            and d.is_main
        ):
            _call_sample_fn(sample_fn, model, done, device, bar)
        if done == end or (cfg.checkpoint_interval > 0 and done % cfg.checkpoint_interval == 0):
            save(done)

        postfix = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}"}
        if history.val_loss:
            postfix["val"] = f"{history.val_loss[-1]:.4f}"
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)
    bar.close()
    return history


def _call_sample_fn(
    sample_fn: Callable[[nn.Module, int], str | None],
    model: nn.Module,
    step: int,
    device: torch.device,
    bar: tqdm,
) -> None:
    """Run the sample hook without letting it touch the training run's randomness or mode."""
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            text = sample_fn(model, step)
    finally:
        model.train(was_training)
    if text:
        bar.write(f"--- sample at step {step} ---\n{text}")
