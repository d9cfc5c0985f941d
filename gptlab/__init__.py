"""GPT Lab: every piece the book builds, from tokens to a fine-tuned GPT.

Public names are loaded on first use, so ``import gptlab`` stays fast and a chapter that only
needs the tokenizer does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # utils
    "seed_everything": "gptlab.utils",
    "get_device": "gptlab.utils",
    # tokenizers
    "CharTokenizer": "gptlab.tokenizers",
    "BPETokenizer": "gptlab.tokenizers",
    "get_tokenizer": "gptlab.tokenizers",
    # data
    "load_corpus": "gptlab.data",
    "get_batch": "gptlab.data",
    "encode_corpus": "gptlab.data",
    "make_loader": "gptlab.data",
    "TokenWindowDataset": "gptlab.data",
    "split_documents": "gptlab.data",
    # attention / model
    "scaled_dot_product_attention": "gptlab.attention",
    "causal_mask": "gptlab.attention",
    "CausalSelfAttention": "gptlab.attention",
    "GPTConfig": "gptlab.model",
    "GPT": "gptlab.model",
    # sampling / training / weights
    "generate": "gptlab.sampling",
    "stream": "gptlab.sampling",
    "TrainConfig": "gptlab.train",
    "History": "gptlab.train",
    "save_checkpoint": "gptlab.train",
    "load_checkpoint": "gptlab.train",
    "load_model": "gptlab.train",
    "plot_loss_curves": "gptlab.plotting",
    "plot_attention": "gptlab.plotting",
    "plot_next_token_probs": "gptlab.plotting",
    "load_hf_gpt2": "gptlab.pretrained",
    "save_hf_gpt2": "gptlab.pretrained",
    "load_reference_model": "gptlab.reference",
    # evaluation
    "bits_per_byte": "gptlab.evaluate",
    "evaluate_multiple_choice": "gptlab.evaluate",
    "run_tests": "gptlab.evaluate",
    "pass_at_k": "gptlab.evaluate",
    "bootstrap_ci": "gptlab.evaluate",
    "load_code_benchmark": "gptlab.evaluate",
    "evaluate_suite": "gptlab.evaluate",
    "write_report": "gptlab.evaluate",
    # exercises
    "check": "gptlab.exercises",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gptlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return __all__
