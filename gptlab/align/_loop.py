"""What the DPO and GRPO training loops share: settings checks, optimizer, schedule, saving."""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from gptlab.align._checks import check_float, check_int
from gptlab.checkpoint import save_checkpoint
from gptlab.train import clip_gradients, configure_optimizer, lr_at


@dataclass(frozen=True)
class OptimSettings:
    """The optimisation settings both loops take, checked once."""

    steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    checkpoint_dir: pathlib.Path | None
    checkpoint_every: int

    @classmethod
    def check(
        cls,
        *,
        steps: Any,
        lr: Any,
        min_lr: Any,
        warmup_steps: Any,
        weight_decay: Any,
        grad_clip: Any,
        checkpoint_dir: Any,
        checkpoint_every: Any,
    ) -> OptimSettings:
        check_int("steps", steps, 1)
        check_float("lr", lr, low=0, low_open=True, hint="; alignment uses small rates, e.g. 1e-5")
        min_lr = lr if min_lr is None else check_float("min_lr", min_lr, low=0, high=lr)
        check_int("warmup_steps", warmup_steps, 0)
        if warmup_steps > steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be <= steps ({steps})")
        check_float("weight_decay", weight_decay, low=0)
        check_float("grad_clip", grad_clip, low=0, hint="; 0 turns clipping off")
        check_int("checkpoint_every", checkpoint_every, 0, "; 0 saves only after the last step")
        if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(
                f"checkpoint_dir must be a path or None, got {type(checkpoint_dir).__name__}"
            )
        if checkpoint_every and checkpoint_dir is None:
            raise ValueError("checkpoint_every > 0 needs a checkpoint_dir to save into")
        directory = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
        return cls(
            steps, float(lr), float(min_lr), warmup_steps, float(weight_decay),
            float(grad_clip), directory, checkpoint_every,
        )  # fmt: skip


def make_optimizer(model: nn.Module, settings: OptimSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only (LoRA: just the adapters)."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "the policy has no trainable parameters; unfreeze it (model.requires_grad_(True)) "
            "or add LoRA adapters (gptlab.lora.apply_lora)"
        )
    return configure_optimizer(model, lr=settings.lr, weight_decay=settings.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, settings: OptimSettings, step: int) -> float:
    """Warm-up then cosine from ``lr`` to ``min_lr`` (constant when they are equal)."""
    lr = lr_at(
        step,
        max_lr=settings.lr,
        min_lr=settings.min_lr,
        warmup_steps=settings.warmup_steps,
        max_steps=settings.steps,
    )
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float
) -> float:
    """Backward, clip, step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_gradients(model, grad_clip)
    optimizer.step()
    return norm


def maybe_save(
    settings: OptimSettings,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any],
    tokenizer: Any,
) -> None:
    """Save every ``checkpoint_every`` steps and after the last one (when a directory is set).

    The alignment history and settings go into ``meta.json``'s ``extra`` (the pretraining
    ``History`` has other fields).
    """
    if settings.checkpoint_dir is None:
        return
    due = settings.checkpoint_every and step % settings.checkpoint_every == 0
    if due or step == settings.steps:
        save_checkpoint(
            settings.checkpoint_dir, model, optimizer, step=step, extra=extra, tokenizer=tokenizer
        )
