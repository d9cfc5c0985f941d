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
    "encode_plain": "gptlab.tokenizers",
    # data
    "load_corpus": "gptlab.data",
    "get_batch": "gptlab.data",
    "encode_corpus": "gptlab.data",
    "make_loader": "gptlab.data",
    "TokenWindowDataset": "gptlab.data",
    "split_documents": "gptlab.data",
    "split_conversations": "gptlab.chat",
    # attention / model
    "scaled_dot_product_attention": "gptlab.attention",
    "causal_mask": "gptlab.attention",
    "CausalSelfAttention": "gptlab.attention",
    "GPTConfig": "gptlab.model",
    "GPT": "gptlab.model",
    "LlamaConfig": "gptlab.llama",
    "Llama": "gptlab.llama",
    # sampling / training / weights
    "generate": "gptlab.sampling",
    "stream": "gptlab.sampling",
    "beam_search": "gptlab.beam",
    "stream_text": "gptlab.sampling",
    "decode_stream": "gptlab.sampling",
    "TrainConfig": "gptlab.train",
    "History": "gptlab.checkpoint",
    "save_checkpoint": "gptlab.checkpoint",
    "load_checkpoint": "gptlab.checkpoint",
    "load_model": "gptlab.checkpoint",
    "plot_loss_curves": "gptlab.plotting",
    "plot_attention": "gptlab.plotting",
    "plot_next_token_probs": "gptlab.plotting",
    "load_hf_gpt2": "gptlab.pretrained",
    "save_hf_gpt2": "gptlab.pretrained",
    "load_hf_llama": "gptlab.pretrained",
    "save_hf_llama": "gptlab.pretrained",
    "load_pretrained": "gptlab.pretrained",
    "render_chatml": "gptlab.pretrained",
    "load_gguf": "gptlab.gguf",
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
    # constraints (logits processors) and classical poetry
    "apply_processors": "gptlab.constraints",
    "LineLengthProcessor": "gptlab.constraints",
    "AcrosticProcessor": "gptlab.constraints",
    "check_poem": "gptlab.poetry",
    "form_pass_rates": "gptlab.poetry",
    # alignment
    "PreferencePair": "gptlab.align",
    "sequence_logprobs": "gptlab.align",
    "train_dpo": "gptlab.align",
    "train_grpo": "gptlab.align",
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
