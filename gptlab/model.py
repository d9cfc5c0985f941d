"""The GPT: token and position embeddings, a stack of pre-LayerNorm Transformer blocks, and a
language-model head that shares its weights with the token embedding.

Module names match Hugging Face's GPT-2 (``transformer.wte/wpe/h/ln_f``, ``attn.c_attn``,
``mlp.c_fc``, ``c_proj``), so loading the real GPT-2 weights is a loop and a transpose list
(see :mod:`gptlab.pretrained`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.attention import CausalSelfAttention, KVCache

__all__ = ["GPT", "GPTConfig", "PRESETS"]

ACTIVATIONS = ("gelu_tanh", "gelu")

# Sizes of the named configurations. The GPT-2 family (Radford et al., 2019) uses the GPT-2
# tokenizer (vocab 50257) and a 1024-token context. The CPU presets are for this book's
# notebooks; they default to the GPT-2 vocabulary, override it for other tokenizers, e.g.
# GPTConfig.preset("nano", vocab_size=65) for characters.
#   name           n_layer n_head n_embd block  parameters (vocab 50257)
#   nano                 2      2     64    64  3.3M (0.1M outside the embeddings)
#   micro                4      4    128   128  7.2M (0.8M outside the embeddings)
#   mini                 6      6    384   256  30.0M (10.6M outside the embeddings)
#   gpt2                12     12    768  1024  124M
#   gpt2-medium         24     16   1024  1024  355M
#   gpt2-large          36     20   1280  1024  774M
#   gpt2-xl             48     25   1600  1024  1558M
PRESETS: dict[str, dict[str, int]] = {
    "nano": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "micro": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}


@dataclass
class GPTConfig:
    """Every number that fixes a GPT's shape. Defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int = 1024  # context window: the most tokens the model sees at once
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has them
    activation: str = (
        "gelu_tanh"  # GPT-2's tanh approximation of GELU; "gelu" is the exact erf form
    )
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"GPTConfig.{name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(
                    f"GPTConfig.{name} must be positive, got {value}; use e.g. 1 or more"
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) so "
                f"each head gets n_embd // n_head features; e.g. n_head="
                f"{_nearest_divisor(self.n_embd, self.n_head)} or n_embd="
                f"{math.ceil(self.n_embd / self.n_head) * self.n_head}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise TypeError(f"GPTConfig.dropout must be a float, got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"GPTConfig.dropout must be in [0, 1), got {self.dropout}; 0.0 turns dropout off, "
                "0.1 is GPT-2's value"
            )
        if not isinstance(self.bias, bool):
            raise TypeError(f"GPTConfig.bias must be True or False, got {self.bias!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"GPTConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}; "
                "GPT-2 uses 'gelu_tanh'"
            )
        if isinstance(self.layer_norm_eps, bool) or not isinstance(
            self.layer_norm_eps, (int, float)
        ):
            raise TypeError(
                f"GPTConfig.layer_norm_eps must be a float, got {self.layer_norm_eps!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(
                f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps}; use 1e-5"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named configuration (see ``PRESETS``), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-serialisable), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Build a config from a dict; unknown keys are an error, not silently dropped."""
        if not isinstance(d, dict):
            raise TypeError(f"from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown GPTConfig field(s) {unknown}; valid fields are {sorted(known)}"
            )
        return cls(**d)


def _nearest_divisor(n: int, near: int) -> int:
    return min((h for h in range(1, n + 1) if n % h == 0), key=lambda h: (abs(h - near), h))


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4x, GELU, project back into the residual stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """One Transformer block, pre-LayerNorm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, dropout=config.dropout, bias=config.bias
        )
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, kv_cache: KVCache | None = None, layer_idx: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache=kv_cache, layer_idx=layer_idx)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """A decoder-only Transformer language model with GPT-2's architecture."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(
                f"GPT expects a GPTConfig, got {type(config).__name__}; build one with "
                "GPTConfig(...) or GPTConfig.preset('nano')"
            )
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embedding
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and scoring it on the way out use one matrix.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: each residual projection adds to the stream, 2 per block; scale them so the
        # stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------- forward

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        ignore_index: int = -100,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits ``(B, T, vocab_size)`` for token ids ``idx`` ``(B, T)``, and the loss.

        With ``targets`` ``(B, T)`` the loss is the mean cross-entropy over every position whose
        target is not ``ignore_index``. With ``kv_cache`` the tokens continue the cached ones:
        they get positions ``cache.length, ...`` and their keys/values are appended.
        """
        x = self._hidden(idx, kv_cache)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
            raise ValueError(
                f"targets must be a tensor shaped like idx {tuple(idx.shape)}, got "
                f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}"
                "; targets are idx shifted left by one"
            )
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index
        )
        return logits, loss

    def next_token_logits(
        self, idx: torch.Tensor, *, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits ``(B, vocab_size)`` for the token after ``idx``: what generation needs.

        Same as ``forward(idx)[0][:, -1]`` but projects only the last position to the vocabulary,
        skipping a ``(T, vocab_size)`` matrix product.
        """
        x = self._hidden(idx, kv_cache)
        return self.lm_head(x[:, -1, :])  # (B, vocab_size)

    def _hidden(self, idx: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        """Final-LayerNorm hidden states ``(B, T, n_embd)``, after validating the input."""
        past = self._check_input(idx, kv_cache)
        T = idx.shape[1]
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (T, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache=kv_cache, layer_idx=i)
        return self.transformer.ln_f(x)

    def _check_input(self, idx: torch.Tensor, kv_cache: KVCache | None) -> int:
        """Raise a helpful error for bad ``idx``; return the number of cached positions."""
        if not isinstance(idx, torch.Tensor):
            raise TypeError(
                f"idx must be a LongTensor of token ids, got {type(idx).__name__}; "
                "use torch.tensor([ids], dtype=torch.long)"
            )
        if idx.dim() != 2:
            raise ValueError(
                f"idx must be 2-D (batch, time), got shape {tuple(idx.shape)}; "
                "for one sequence use idx[None] (or idx.unsqueeze(0))"
            )
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids, got {idx.dtype}; use idx.long()")
        if idx.shape[1] == 0:
            raise ValueError("idx has no tokens (T = 0); pass at least one token id")
        past = 0 if kv_cache is None else kv_cache.length
        total = past + idx.shape[1]
        if total > self.config.block_size:
            cached = f" ({past} cached + {idx.shape[1]} new)" if past else ""
            raise ValueError(
                f"input is {total} tokens long{cached} but block_size is {self.config.block_size}; "
                f"crop it to the last {self.config.block_size} tokens (idx[:, -block_size:]) "
                "or use a config with a larger block_size"
            )
        if torch.compiler.is_compiling():
            return past  # reading values back to Python would break the compiled graph
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"token id {bad} is outside [0, {self.config.vocab_size}) (vocab_size); "
                "encode with the tokenizer this model was built for, or raise vocab_size"
            )
        return past

    # --------------------------------------------------------------------------- utilities

    def new_kv_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences, holding up to ``block_size`` positions."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        cache = KVCache(self.config.n_layer, self.config.block_size)
        wte = self.transformer.wte.weight
        cache.allocate(
            batch_size, self.config.n_head, self.config.head_dim, dtype=wte.dtype, device=wte.device
        )
        return cache

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters; the tied ``lm_head``/``wte`` matrix is counted once.

        ``non_embedding=True`` leaves out the token and position embeddings, the count that
        scaling laws use (Kaplan et al., 2020): 85,056,000 of GPT-2 small's 124,439,808.
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per component: ``wte``, ``wpe``, ``h.{i}.ln_1/attn/ln_2/mlp``, ``ln_f``.

        The values sum to :meth:`num_parameters`; the tied ``lm_head`` adds nothing of its own.
        """
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():  # shared tensors appear once, under wte
            parts = name.split(".")
            if parts[0] == "transformer":
                parts = parts[1:]
            key = ".".join(parts[:3]) if parts[0] == "h" else parts[0]
            counts[key] = counts.get(key, 0) + p.numel()
        return counts
