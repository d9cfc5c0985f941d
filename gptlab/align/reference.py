"""The reference model: the frozen policy that DPO and GRPO measure every change against.

Both losses compare the policy being trained with a fixed *reference* (usually the model before
alignment): DPO's implicit reward is ``beta * (log pi - log pi_ref)``, and GRPO's KL penalty
keeps the policy near ``pi_ref``. There are two ways to have one:

* a frozen deep copy (:func:`frozen_copy`): simple, but a second copy of every weight;
* when the policy trains LoRA adapters, the reference is the policy *with the adapters
  switched off* (:func:`lora_disabled`): the frozen base weights are already there, so no
  copy is needed. Inside the context each :class:`~gptlab.lora.LoRALinear` calls only its
  frozen ``base`` layer, which is exactly the model before fine-tuning.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from gptlab.align._checks import check_language_model
from gptlab.align.logprobs import SequenceLogprobs, sequence_logprobs
from gptlab.lora import lora_layers

__all__ = ["REFERENCE_CHOICES", "frozen_copy", "lora_disabled", "reference_logprobs"]

REFERENCE_CHOICES = ("auto", "lora", "copy")


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base model: every LoRA layer skips its update inside the block.

    No weight is copied or changed: each :class:`~gptlab.lora.LoRALinear` gets its ``forward``
    pointed at its frozen ``base`` layer until the block ends (also on an exception). Nested
    use is fine. Raises if the model has no LoRA layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers = [layer for _, layer in lora_layers(model)]
    if not layers:
        raise ValueError(
            "the model has no LoRA layers to disable; call gptlab.lora.apply_lora(model) first, "
            "or use a frozen copy as the reference (reference='copy')"
        )
    patched = [layer for layer in layers if "forward" not in layer.__dict__]
    for layer in patched:
        layer.forward = layer.base.forward  # an instance attribute shadows the class method
    try:
        yield model
    finally:
        for layer in patched:
            del layer.forward


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every parameter frozen (the classic reference)."""
    check_language_model(model)
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def resolve_reference(model: nn.Module, reference: Any) -> nn.Module | None:
    """The reference a training loop uses: a frozen module, or None for "the LoRA-disabled policy".

    ``reference`` is a model (used as given, frozen), ``"copy"`` (a frozen copy of ``model`` now),
    ``"lora"`` (``model`` with its LoRA adapters off) or ``"auto"`` (``"lora"`` when ``model``
    has LoRA layers, else ``"copy"``).
    """
    has_lora = any(True for _ in lora_layers(model))
    if isinstance(reference, nn.Module):
        check_language_model(reference, "reference")
        if reference is model:
            raise ValueError(
                "reference is the policy itself, so it would move with every step; pass "
                "reference='copy' for a frozen copy"
            )
        if reference.config.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"reference has vocab_size {reference.config.vocab_size} but the policy has "
                f"{model.config.vocab_size}; both must use the same tokenizer"
            )
        reference.requires_grad_(False)
        return reference.eval()
    if reference not in REFERENCE_CHOICES:
        raise ValueError(
            f"reference must be a model or one of {REFERENCE_CHOICES}, got {reference!r}"
        )
    if reference == "lora" and not has_lora:
        raise ValueError(
            "reference='lora' needs a policy with LoRA layers (gptlab.lora.apply_lora); "
            "use reference='copy' for a fully fine-tuned model"
        )
    if reference == "lora" or (reference == "auto" and has_lora):
        return None
    return frozen_copy(model)


@torch.no_grad()
def reference_logprobs(
    policy: nn.Module,
    reference: nn.Module | None,
    prompt_ids_list: Sequence[Sequence[int]],
    response_ids_list: Sequence[Sequence[int]],
) -> SequenceLogprobs:
    """:func:`~gptlab.align.logprobs.sequence_logprobs` under the reference, without gradients.

    ``reference=None`` means the LoRA-disabled ``policy`` (see :func:`lora_disabled`).
    """
    if reference is not None:
        return sequence_logprobs(reference, prompt_ids_list, response_ids_list)
    with lora_disabled(policy):
        return sequence_logprobs(policy, prompt_ids_list, response_ids_list)
