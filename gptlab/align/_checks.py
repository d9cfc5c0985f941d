"""Input checks shared by the alignment modules, one line at each call site."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn


def check_int(name: str, value: Any, minimum: int, hint: str = "") -> int:
    """``value`` as an int >= ``minimum``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}{hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}{hint}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    hint: str = "",
) -> float:
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{lo}, {hi}], got {value!r}{hint}")
    return float(value)


def check_language_model(model: Any, what: str = "model") -> None:
    """A gptlab model: an nn.Module called as ``model(idx) -> (logits, loss)`` with a config."""
    config = getattr(model, "config", None)
    sizes_ok = all(
        isinstance(getattr(config, f, None), int) and getattr(config, f) >= 1
        for f in ("block_size", "vocab_size")
    )
    if not isinstance(model, nn.Module) or not sizes_ok:
        raise TypeError(
            f"{what} must be a gptlab language model (GPT or Llama) with config.block_size and "
            f"config.vocab_size, got {type(model).__name__}"
        )


def as_ids(value: Any, what: str, vocab_size: int) -> list[int]:
    """Token ids as a list of ints: from a list/tuple of ints or a 1-D integer tensor."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.dtype not in (torch.long, torch.int32):
            raise TypeError(
                f"{what} must be a 1-D integer tensor or a list of ints, got a "
                f"{value.dtype} tensor of shape {tuple(value.shape)}"
            )
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{what} must be a list of token ids, got {type(value).__name__}; "
            "encode text with the tokenizer first"
        )
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"{what} must hold ints (token ids), found {token!r}")
        if not 0 <= token < vocab_size:
            raise ValueError(
                f"{what} holds token id {token}, outside the vocabulary [0, {vocab_size}); "
                "encode with the model's own tokenizer"
            )
    return list(value)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")
