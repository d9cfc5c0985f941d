"""Pretraining a GPT: the training loop, its learning-rate schedule, and runs you can resume.

The loop does, once per optimizer step::

    lr    = lr_at(step)                        # linear warm-up, then cosine decay to min_lr
    loss  = accumulate_gradients(model, k micro-batches)   # each loss scaled by 1/k
    norm  = clip_gradients(model, grad_clip)   # rescale so the global gradient norm <= grad_clip
    optimizer.step(); optimizer.zero_grad()    # AdamW, weight decay on matrices only

plus, every so often, an evaluation on held-out tokens, a text sample and a checkpoint
(:mod:`gptlab.checkpoint`: atomic, verified directories). Resuming restores weights, optimizer,
step, history and every RNG state, so N steps + save + resume + N steps gives bit-identical
weights to 2N uninterrupted steps on CPU. Ctrl-C or SIGTERM finish the current step, save a
checkpoint and then stop (see :func:`train`). Under ``torchrun`` (``WORLD_SIZE`` > 1) the same
loop runs data-parallel with DistributedDataParallel (:mod:`gptlab.distributed`).

The checkpoint names (``save_checkpoint``, ``load_checkpoint``, ``load_model``, ``History`` ...)
live in :mod:`gptlab.checkpoint` and are importable from here as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from gptlab.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    META_FILE,
    STATE_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    CheckpointError,
    History,
    find_checkpoint,
    load_checkpoint,
    load_model,
    load_tokenizer,
    prepare_checkpoint_dir,
    save_checkpoint,
)
from gptlab.data import get_batch
from gptlab.distributed import (
    _Dist,
    _max_over_ranks,
    _mean_over_ranks,
    _setup_distributed,
    _unwrap,
)
from gptlab.utils import seed_everything

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "META_FILE",
    "STATE_FILE",
    "TOKENIZER_FILE",
    "WEIGHTS_FILE",
    "Checkpoint",
    "CheckpointError",
    "History",
    "TrainConfig",
    "accumulate_gradients",
    "clip_gradients",
    "configure_optimizer",
    "evaluate",
    "find_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_tokenizer",
    "lr_at",
    "prepare_checkpoint_dir",
    "save_checkpoint",
    "split_decay_params",
    "train",
]


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


# TrainConfig fields that change what is shown or stored, not the run itself: resuming with
# other values continues the same run.
_BOOKKEEPING_FIELDS = frozenset(
    {
        "progress",
        "device",
        "checkpoint_dir",
        "checkpoint_interval",
        "eval_interval",
        "eval_iters",
        "sample_interval",
    }
)


def _changes(old: Mapping[str, Any], new: Mapping[str, Any], ignore: frozenset[str]) -> list[str]:
    """``"name: old -> new"`` for every field recorded in both that differs."""
    return [
        f"{k}: {old[k]!r} -> {new[k]!r}"
        for k in new
        if k in old and k not in ignore and old[k] != new[k]
    ]


def _check_resume_config(
    ckpt: Checkpoint, model: nn.Module, cfg: TrainConfig, allow_config_change: bool
) -> None:
    """Refuse a model that differs from the checkpoint's; a changed TrainConfig only if allowed."""
    config = getattr(_unwrap(model), "config", None)
    if ckpt.model_config is not None and hasattr(config, "to_dict"):
        changes = _changes(ckpt.model_config, config.to_dict(), frozenset())
        if changes:
            raise CheckpointError(
                f"the model's config differs from the one {ckpt.path} was trained with "
                f"({'; '.join(changes)}); its weights belong to that model: build it with "
                "GPT(GPTConfig.from_dict(load_checkpoint(dir).model_config)), or in a run file "
                "restore the [model] values"
            )
    if ckpt.train_config is None:
        return
    changes = _changes(ckpt.train_config, cfg.to_dict(), _BOOKKEEPING_FIELDS)
    if not changes:
        return
    listing = "; ".join(changes)
    if not allow_config_change:
        raise CheckpointError(
            f"the TrainConfig differs from the one {ckpt.path} was trained with ({listing}); "
            "resuming with other settings is a different run, not a continuation: restore those "
            "values, or pass allow_config_change=True (command line: --allow-config-change) to "
            "continue with the new ones"
        )
    warnings.warn(f"resuming {ckpt.path} with a changed TrainConfig: {listing}", stacklevel=3)


@dataclass
class _StopRequest:
    """Set by a signal handler; the loop then finishes its step, saves a checkpoint and stops."""

    signum: int = 0  # 0: no signal yet


@contextlib.contextmanager
def _stop_on_signals(enabled: bool, announce: bool) -> Iterator[_StopRequest]:
    """While training, turn SIGINT and SIGTERM into a request to save and stop after this step.

    The first signal restores the previous handlers, so a second one acts at once (Ctrl-C
    twice stops without saving). Handlers can only be set in the main thread; elsewhere, or
    when ``enabled`` is false, signals keep their usual effect.
    """
    request = _StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signums}

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    def handler(signum: int, frame: FrameType | None) -> None:
        request.signum = signum
        restore()
        if announce:
            print(
                f"\ngptlab.train: got {signal.Signals(signum).name}: finishing this step and saving "
                "a checkpoint (send it again to stop at once, without saving)",
                file=sys.stderr,
                flush=True,
            )

    for s in signums:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        restore()


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
    allow_config_change: bool = False,
) -> History:
    """Train ``model`` (a GPT: ``model(x, y) -> (logits, loss)``) on token ids; return its History.

    - ``val_ids``: held-out tokens; evaluated at the start, every ``eval_interval`` steps and at
      the end (rank 0 only). ``None`` skips evaluation.
    - ``resume_from``: a checkpoint directory; weights, optimizer, step, history and every RNG
      are restored, so the run continues exactly where it stopped. The model must have the
      checkpoint's GPTConfig. A TrainConfig that differs from the recorded one (other than in
      display and bookkeeping fields such as ``progress``, ``device`` or ``eval_interval``) is
      refused unless ``allow_config_change=True``, which continues with the new values.
    - ``stop_at``: stop after this many steps although the schedule runs to ``cfg.max_steps``
      (e.g. to split a long run into sessions; a checkpoint is saved when stopping).
    - ``sample_fn(model, step)``: called every ``sample_interval`` steps in eval mode, without
      gradients and with the RNG state forked, so sampling never changes the training run; a
      returned string is printed.
    - ``tokenizer``: recorded in checkpoints so ``python -m gptlab generate`` can decode.

    ``cfg.checkpoint_dir`` is checked before any work: it must be new, empty or a gptlab
    checkpoint (see :func:`gptlab.checkpoint.prepare_checkpoint_dir`); gptlab never replaces a
    folder holding other files.

    Interrupting: with a ``checkpoint_dir``, Ctrl-C (SIGINT) or SIGTERM lets the current step
    finish, saves a checkpoint of it, and then raises ``KeyboardInterrupt`` (SIGINT) or
    ``SystemExit(128 + SIGTERM)`` (SIGTERM, exit status 143), so the run can be resumed from
    that step. A second signal stops at once. Without a ``checkpoint_dir`` signals act as usual.

    Data: one generator seeded with ``cfg.seed`` draws every batch. Under torchrun all ranks
    draw the same global batch of ``batch_size * WORLD_SIZE`` windows and rank r trains on rows
    ``[r * batch_size, (r + 1) * batch_size)``: disjoint shards, and the whole run equals one
    process training with ``batch_size * WORLD_SIZE`` (gradients are averaged over ranks).
    """
    cfg = TrainConfig() if cfg is None else cfg
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(allow_config_change, bool):
        raise TypeError(f"allow_config_change must be True or False, got {allow_config_change!r}")
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
    if resume_from is not None:  # meta.json only: refuse a mismatch before any work
        ckpt = load_checkpoint(resume_from, read_training_state=False)
        _check_resume_config(ckpt, model, cfg, allow_config_change)

    d, device = _setup_distributed(cfg.device)
    try:
        if d.is_main and cfg.checkpoint_dir is not None:
            prepare_checkpoint_dir(cfg.checkpoint_dir)  # refuses a folder that is not ours
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
    can_stop = cfg.checkpoint_dir is not None  # the same on every rank: the check is collective
    with _stop_on_signals(can_stop, announce=d.is_main) as request:
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
            saved = done == end or (
                cfg.checkpoint_interval > 0 and done % cfg.checkpoint_interval == 0
            )
            if saved:
                save(done)
            signum = _max_over_ranks(request.signum, d, device) if can_stop else 0
            if signum:
                if not saved:
                    save(done)
                bar.close()
                _stopped(signum, done, cfg, d.is_main)

            postfix = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}"}
            if history.val_loss:
                postfix["val"] = f"{history.val_loss[-1]:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    bar.close()
    return history


def _stopped(signum: int, step: int, cfg: TrainConfig, announce: bool) -> None:
    """Report the checkpoint a signal made us save, then stop as the signal asked."""
    if announce:
        print(
            f"gptlab.train: stopped at step {step} of {cfg.max_steps}; checkpoint saved to "
            f"{cfg.checkpoint_dir!r}. Continue with train(..., resume_from={cfg.checkpoint_dir!r}) "
            "or 'python -m gptlab train --config RUN.toml --resume'",
            file=sys.stderr,
            flush=True,
        )
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


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
