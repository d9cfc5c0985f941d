"""The Llama family: GPT-2's decoder with four modern parts swapped in.

RMSNorm instead of LayerNorm (no mean, no bias), rotary position embeddings (RoPE) applied to
queries and keys instead of a learned position table, a SwiGLU feed-forward layer, and
grouped-query attention (GQA: fewer key/value heads than query heads, so the KV cache shrinks).
SmolLM2, Llama 2/3, Mistral and Qwen2 are all this architecture with different sizes.

Module names match Hugging Face's ``LlamaForCausalLM`` (``model.embed_tokens``,
``model.layers.N.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``, ``model.norm``, ``lm_head``), so loading real weights is a loop
(see :mod:`gptlab.pretrained`). :class:`Llama` answers the same calls as :class:`gptlab.GPT`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.attention import KVCache, causal_attention

__all__ = [
    "PRESETS",
    "Llama",
    "LlamaConfig",
    "RMSNorm",
    "RotaryEmbedding",
    "apply_rotary",
    "empty_llama",
]

# Named sizes. "smollm2-135m" is HuggingFaceTB/SmolLM2-135M(-Instruct): 134,515,008 parameters,
# the real pretrained model of the book (gptlab.load_pretrained("smollm2-135m-instruct")).
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        vocab_size=49152,
        block_size=8192,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        intermediate_size=1536,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}


def _positive_int(cls: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{cls}.{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{cls}.{name} must be positive, got {value}; use e.g. 1 or more")


def _positive_float(cls: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}.{name} must be a float, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{cls}.{name} must be a finite number > 0, got {value}")


def _divides(cls: str, big: str, big_value: int, small: str, small_value: int, why: str) -> None:
    if big_value % small_value != 0:
        raise ValueError(
            f"{cls}.{big} ({big_value}) must be divisible by {small} ({small_value}) {why}"
        )


@dataclass
class LlamaConfig:
    """Every number that fixes a Llama's shape. Defaults are SmolLM2-135M's."""

    vocab_size: int = 49152
    block_size: int = 8192  # context window (Hugging Face: max_position_embeddings)
    n_layer: int = 30
    n_head: int = 9  # query heads
    n_kv_head: int = 3  # key/value heads; n_head // n_kv_head query heads share each one
    n_embd: int = 576
    intermediate_size: int = 1536  # width of the SwiGLU feed-forward layer
    rope_theta: float = 100000.0  # RoPE base: larger means slower-turning positions
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True  # lm_head shares the token-embedding matrix

    def __post_init__(self) -> None:
        c = "LlamaConfig"
        _positive_int(c, "vocab_size", self.vocab_size)
        _positive_int(c, "block_size", self.block_size)
        _positive_int(c, "n_layer", self.n_layer)
        _positive_int(c, "n_head", self.n_head)
        _positive_int(c, "n_kv_head", self.n_kv_head)
        _positive_int(c, "n_embd", self.n_embd)
        _positive_int(c, "intermediate_size", self.intermediate_size)
        _positive_float(c, "rope_theta", self.rope_theta)
        _positive_float(c, "rms_norm_eps", self.rms_norm_eps)
        if not isinstance(self.tie_word_embeddings, bool):
            raise TypeError(f"{c}.tie_word_embeddings must be True or False")
        _divides(c, "n_embd", self.n_embd, "n_head", self.n_head, "so every head is as wide")
        _divides(c, "n_head", self.n_head, "n_kv_head", self.n_kv_head, "so groups are equal")
        if self.head_dim % 2:
            raise ValueError(
                f"{c}: head_dim = n_embd // n_head = {self.head_dim} must be even, because RoPE "
                "rotates features in pairs"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_parameters(self) -> int:
        """Parameter count of the model this config builds, without building it."""
        d, kv = self.n_embd, self.n_kv_head * self.head_dim
        per_layer = 2 * d * d + 2 * d * kv + 3 * d * self.intermediate_size + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layer * per_layer + d + head

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LlamaConfig:
        """A named configuration (see ``PRESETS``), with any field overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-serialisable), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Build a config from a dict; unknown keys are an error, not silently dropped."""
        if not isinstance(d, dict):
            raise TypeError(f"from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown LlamaConfig field(s) {unknown}; valid fields are {sorted(known)}"
            )
        return cls(**d)


class RMSNorm(nn.Module):
    r"""Root-mean-square norm: :math:`x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot w`.

    LayerNorm without centring or bias: cheaper, and works as well. Computed in float32 (as
    Hugging Face does) so bfloat16 models do not lose the small variances.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    r"""RoPE (Su et al., 2021): rotate each pair of features by an angle that grows with position.

    Feature pair ``(i, i + d/2)`` of position ``m`` turns by :math:`m\,\theta^{-2i/d}`, so the dot
    product of a query and a key depends only on their distance. The cos/sin table for every
    position up to ``max_positions`` is computed once in float32 per device and cast on use.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        table = self._tables.get(device)
        if table is None:
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
            inv_freq = 1.0 / (self.theta**exponent)  # (hs/2,)
            pos = torch.arange(self.max_positions, dtype=torch.int64).float()
            freqs = torch.outer(pos, inv_freq)  # (max_positions, hs/2)
            angles = torch.cat((freqs, freqs), dim=-1).to(device)  # (max_positions, hs)
            table = self._tables[device] = (angles.cos(), angles.sin())
        return table

    def forward(
        self, start: int, length: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(length, head_dim)`` for positions ``start .. start + length - 1``."""
        cos, sin = self._table(device)
        return cos[start : start + length].to(dtype), sin[start : start + length].to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, heads, T, hs)`` by the angles whose ``cos``/``sin`` are ``(T, hs)``."""
    return x * cos + _rotate_half(x) * sin


class LlamaAttention(nn.Module):
    """Grouped-query causal self-attention with RoPE on queries and keys, no biases."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = (
            config.n_head,
            config.n_kv_head,
            config.head_dim,
        )
        kv_dim = config.n_kv_head * config.head_dim
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.k_proj = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.v_proj = nn.Linear(config.n_embd, kv_dim, bias=False)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = (
            self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        )  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # positions enter here
        y, _ = causal_attention(q, k, v, kv_cache, layer_idx)  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward (Shazeer, 2020): ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """One pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, kv_cache, layer_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """A decoder-only Transformer language model with Llama's architecture."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(
                f"Llama expects a LlamaConfig, got {type(config).__name__}; build one with "
                "LlamaConfig(...) or LlamaConfig.preset('smollm2-135m')"
            )
        self.config = config
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
                layers=nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layer)),
                norm=RMSNorm(config.n_embd, config.rms_norm_eps),
            )
        )
        self.rotary = RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        ignore_index: int = -100,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Next-token logits ``(B, T, vocab_size)`` for token ids ``idx`` ``(B, T)``, and the loss.

        Same contract as :meth:`gptlab.GPT.forward`: with ``targets`` the mean cross-entropy over
        positions whose target is not ``ignore_index``; with ``kv_cache`` the tokens continue
        the cached ones (RoPE positions start at ``cache.length``).
        """
        logits = self.lm_head(self._hidden(idx, kv_cache))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
            raise ValueError(
                f"targets must be a tensor shaped like idx {tuple(idx.shape)}; targets are idx "
                "shifted left by one"
            )
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index
        )
        return logits, loss

    def next_token_logits(
        self, idx: torch.Tensor, *, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits ``(B, vocab_size)`` for the token after ``idx``, projecting only the last position."""
        return self.lm_head(self._hidden(idx, kv_cache)[:, -1, :])

    def _hidden(self, idx: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        past = self._check_input(idx, kv_cache)
        x = self.model.embed_tokens(idx)  # (B, T, n_embd)
        rope = self.rotary(past, idx.shape[1], x.dtype, x.device)  # (T, hs) each
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, kv_cache, i)
        return self.model.norm(x)

    def _check_input(self, idx: torch.Tensor, kv_cache: KVCache | None) -> int:
        """Raise a helpful error for bad ``idx``; return the number of cached positions."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(
                f"idx must be a 2-D (batch, time) LongTensor of token ids, got {got}; for one "
                "sequence use torch.tensor([ids])"
            )
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"idx must hold integer token ids, got {idx.dtype}; use idx.long()")
        if idx.numel() == 0:
            raise ValueError(f"idx is empty (shape {tuple(idx.shape)}); pass at least one token")
        past = 0 if kv_cache is None else kv_cache.length
        total = past + idx.shape[1]
        if total > self.config.block_size:
            raise ValueError(
                f"input is {total} tokens long ({past} cached) but block_size is "
                f"{self.config.block_size}; crop it to the last block_size tokens"
            )
        if torch.compiler.is_compiling():
            return past
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"token id {lo if lo < 0 else hi} is outside [0, {self.config.vocab_size}) "
                "(vocab_size); encode with this model's tokenizer"
            )
        return past

    def new_kv_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences: only the ``n_kv_head`` heads are stored."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        cache = KVCache(self.config.n_layer, self.config.block_size)
        w = self.model.embed_tokens.weight
        cache.allocate(
            batch_size, self.config.n_kv_head, self.config.head_dim, dtype=w.dtype, device=w.device
        )
        return cache

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied head counted once); ``non_embedding`` drops the embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def parameter_breakdown(self) -> dict[str, int]:
        """Parameters per component: ``embed_tokens``, ``layers.{i}.<part>``, ``norm``, ``lm_head``.

        The values sum to :meth:`num_parameters`; a tied ``lm_head`` adds nothing of its own.
        """
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():  # a shared tensor appears once
            parts = name.removeprefix("model.").split(".")
            key = ".".join(parts[:3]) if parts[0] == "layers" else parts[0]
            counts[key] = counts.get(key, 0) + p.numel()
        return counts


def empty_llama(config: LlamaConfig, dtype: torch.dtype = torch.float32) -> Llama:
    """A :class:`Llama` on the CPU whose weights are left uninitialised, for loaders that fill
    every one of them: skipping the random init saves seconds on a 135M-parameter model."""
    with torch.device("meta"):
        model = Llama(config)
    model = model.to_empty(device="cpu").to(dtype)
    if config.tie_word_embeddings:  # to_empty gives each module its own tensor: tie again
        model.lm_head.weight = model.model.embed_tokens.weight
    return model
