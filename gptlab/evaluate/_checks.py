"""Small input checks shared by the evaluation modules, one line at each call site."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def check_int(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, or a TypeError/ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be at least {minimum}, got {value}")
    return value


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    """A non-empty list of strings; a lone string is refused (it would be read char by char)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(
            f"{what} must be a list of strings, got {type(texts).__name__}; wrap one text as [text]"
        )
    if not texts:
        raise ValueError(f"{what} is empty; pass at least one string")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def check_model(model: Any) -> None:
    """Models are called as ``model(idx) -> (logits, loss)`` and have ``config.block_size``."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"model must be a gptlab model (GPT or Llama) with a .config, got {type(model).__name__}"
        )
    check_int(getattr(model.config, "block_size", None), "model.config.block_size", 2)


def check_tokenizer(tokenizer: Any) -> None:
    """Tokenizers need ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``."""
    if not callable(getattr(tokenizer, "encode", None)) or not callable(
        getattr(tokenizer, "decode", None)
    ):
        raise TypeError(
            f"tokenizer must have encode() and decode() (a gptlab tokenizer), got "
            f"{type(tokenizer).__name__}"
        )


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def token_bytes(tokenizer: Any, ids: Sequence[int]) -> int:
    """How many UTF-8 bytes ``ids`` stand for (exact for byte-level BPE via ``decode_bytes``)."""
    if not ids:
        return 0
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if callable(decode_bytes):
        return len(decode_bytes(list(ids)))
    return len(tokenizer.decode(list(ids)).encode("utf-8"))
