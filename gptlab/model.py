"""The GPT: token and position embeddings, a stack of pre-LayerNorm Transformer blocks, and a
language-model head that shares its weights with the token embedding.

Module names match Hugging Face's GPT-2 (``transformer.wte/wpe/h/ln_f``, ``attn.c_attn``,
``mlp.c_fc``, ``c_proj``), so loading the real GPT-2 weights is a loop and a transpose list
(see :mod:`gptlab.pretrained`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab.attention import CausalSelfAttention, KVCache

__all__ = [
    "GPT",
    "GPTConfig",
    "PRESETS",
    "check_fits_in_memory",
    "check_token_ids",
    "memory_limit_bytes",
    "sinusoidal_positions",
]

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
        # One line per field; the checks (below the class) say what is wrong and how to fix it.
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            _require_positive_int(name, getattr(self, name))
        _require_heads_divide(self.n_embd, self.n_head)
        _require_float(
            "dropout", self.dropout, low=0, high=1, hint="0.0 turns it off, GPT-2 uses 0.1"
        )
        _require_bool("bias", self.bias)
        _require_choice("activation", self.activation, ACTIVATIONS, hint="GPT-2 uses 'gelu_tanh'")
        _require_float("layer_norm_eps", self.layer_norm_eps, low=0, hint="use 1e-5")

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


# ---------------------------------------------------------------------- config field checks


def _require_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"GPTConfig.{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"GPTConfig.{name} must be positive, got {value}; use e.g. 1 or more")


def _require_heads_divide(n_embd: int, n_head: int) -> None:
    if n_embd % n_head != 0:
        raise ValueError(
            f"GPTConfig.n_embd ({n_embd}) must be divisible by n_head ({n_head}) so each head "
            f"gets n_embd // n_head features; e.g. n_head={_nearest_divisor(n_embd, n_head)} or "
            f"n_embd={math.ceil(n_embd / n_head) * n_head}"
        )


def _nearest_divisor(n: int, near: int) -> int:
    return min((h for h in range(1, n + 1) if n % h == 0), key=lambda h: (abs(h - near), h))


def _require_float(
    name: str, value: Any, *, low: float, high: float | None = None, hint: str
) -> None:
    """A finite real number in ``[low, high)`` (``high=None``: ``> low``); NaN and inf fail."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"GPTConfig.{name} must be a float, got {value!r}")
    if high is None:
        if not (math.isfinite(value) and value > low):
            raise ValueError(f"GPTConfig.{name} must be > {low:g} and finite, got {value}; {hint}")
    elif not low <= value < high:  # also False for NaN
        raise ValueError(f"GPTConfig.{name} must be in [{low:g}, {high:g}), got {value}; {hint}")


def _require_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"GPTConfig.{name} must be True or False, got {value!r}")


def _require_choice(name: str, value: Any, choices: tuple[str, ...], *, hint: str) -> None:
    if value not in choices:
        raise ValueError(f"GPTConfig.{name} must be one of {choices}, got {value!r}; {hint}")


def sinusoidal_positions(
    n_positions: int, dim: int, *, base: float = 10000.0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The fixed position encoding of the original Transformer, ``(n_positions, dim)``.

    Features ``2i`` and ``2i + 1`` of position ``p`` are ``sin(p·ω_i)`` and ``cos(p·ω_i)`` with
    ``ω_i = base^(-2i/dim)``: one sine/cosine pair per frequency, from ``ω_0 = 1`` (a period of
    2π positions) down to almost ``1/base``. GPT-2 learns its table (``wpe``) instead.
    """
    for name, value in (("n_positions", n_positions), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % 2:
        raise ValueError(f"dim must be even (one sine and one cosine per frequency), got {dim}")
    pos = torch.arange(n_positions, dtype=dtype)[:, None]  # (P, 1)
    omega = base ** (-torch.arange(0, dim, 2, dtype=dtype) / dim)  # (dim/2,)
    angles = pos * omega  # (P, dim/2)
    pe = torch.empty(n_positions, dim, dtype=dtype)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


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
        _check_model_fits(config)  # before allocating: a typo like n_layer=10**6 fails at once
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
        _check_targets(targets, idx, self.config.vocab_size, ignore_index)
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1).long(), ignore_index=ignore_index
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
        check_token_ids(idx, self.config.vocab_size)
        if idx.dim() != 2:
            raise ValueError(
                f"idx must be 2-D (batch, time), got shape {tuple(idx.shape)}; "
                "for one sequence use idx[None] (or idx.unsqueeze(0))"
            )
        if idx.shape[0] == 0:
            raise ValueError("idx has no sequences (batch size 0); pass at least one row")
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
        return past

    # --------------------------------------------------------------------------- utilities

    def new_kv_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for ``batch_size`` sequences, holding up to ``block_size`` positions."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        wte = self.transformer.wte.weight
        c = self.config
        n_values = 2 * c.n_layer * batch_size * c.block_size * c.n_embd  # keys and values
        check_fits_in_memory(
            n_values * wte.element_size(),
            f"a KV cache for {batch_size:,} sequences of {c.block_size} positions",
            wte.device,
            "generate fewer sequences at once (a smaller batch or num_return_sequences)",
        )
        cache = KVCache(self.config.n_layer, self.config.block_size)
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


# ------------------------------------------------------------------------- memory and inputs


def _check_model_fits(config: GPTConfig) -> None:
    n = _parameter_count(config)
    dtype = torch.get_default_dtype()
    check_fits_in_memory(
        n * dtype.itemsize,
        f"GPT({config}) has {n:,} parameters, which in {dtype}",
        None,
        "use a smaller n_layer, n_embd or vocab_size",
    )


def _check_targets(targets: Any, idx: torch.Tensor, vocab_size: int, ignore_index: Any) -> None:
    """Targets are ids shaped like ``idx``, each in ``[0, vocab_size)`` or ``ignore_index``."""
    if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
        got = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(
            f"targets must be a tensor shaped like idx {tuple(idx.shape)}, got {got}; "
            "targets are idx shifted left by one"
        )
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int (usually -100), got {ignore_index!r}")
    if targets.dtype not in (torch.long, torch.int32):
        raise TypeError(
            f"targets must hold integer token ids as torch.long, got {targets.dtype}; "
            "use targets.long()"
        )
    if torch.compiler.is_compiling():
        return
    bad = ((targets < 0) | (targets >= vocab_size)) & (targets != ignore_index)
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"target {value} is outside [0, {vocab_size}) (vocab_size) and is not ignore_index "
            f"({ignore_index}); mark positions to skip with ignore_index, or check the labels"
        )


MAX_BYTES_ENV = "GPTLAB_MAX_BYTES"


def memory_limit_bytes(device: torch.device | str | None = None) -> int | None:
    """The most bytes gptlab lets one model or generation buffer take on ``device``.

    The environment variable ``GPTLAB_MAX_BYTES`` wins when set; otherwise it is the device's
    total memory (a GPU's, or the machine's RAM for the CPU and Apple's unified memory), and
    ``None`` (no limit) on the ``meta`` device or where the size cannot be read. The point is to
    refuse a request that cannot fit *before* allocating, instead of swapping or being killed.
    """
    override = os.environ.get(MAX_BYTES_ENV)
    if override is not None:
        try:
            limit = int(override)
        except ValueError:
            limit = -1
        if limit < 1:
            raise ValueError(
                f"{MAX_BYTES_ENV}={override!r} must be a positive whole number of bytes, "
                "e.g. 8000000000 for 8 GB"
            )
        return limit
    device = torch.device(device) if device is not None else torch.get_default_device()
    if device.type == "meta":
        return None
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system (Windows)
        return None


def _size(n_bytes: int) -> str:
    if n_bytes >= 10**8:
        return f"{n_bytes / 1e9:.3g} GB"
    return f"{n_bytes / 1e6:.3g} MB" if n_bytes >= 10**5 else f"{n_bytes:,} bytes"


def check_fits_in_memory(
    n_bytes: int, what: str, device: torch.device | str | None, fix: str
) -> None:
    """Refuse to allocate ``n_bytes`` for ``what`` when they exceed :func:`memory_limit_bytes`.

    ``fix`` tells the reader what to ask for instead (e.g. "use fewer layers").
    """
    device = torch.device(device) if device is not None else torch.get_default_device()
    limit = memory_limit_bytes(device)
    if limit is not None and n_bytes > limit:
        raise ValueError(
            f"{what} would need {_size(n_bytes)}, more than the {_size(limit)} of {device.type} "
            f"memory gptlab allows; {fix}, or set the environment variable {MAX_BYTES_ENV} "
            "to a larger limit in bytes"
        )


def _parameter_count(config: GPTConfig) -> int:
    """Parameters of ``GPT(config)`` from the config alone, so its size is known before building."""
    E, has_bias = config.n_embd, int(config.bias)
    layer_norm = E + has_bias * E
    attention = 3 * E * E + has_bias * 3 * E + E * E + has_bias * E  # c_attn, c_proj
    mlp = 4 * E * E + has_bias * 4 * E + 4 * E * E + has_bias * E  # c_fc, c_proj
    block = 2 * layer_norm + attention + mlp
    embeddings = (config.vocab_size + config.block_size) * E  # wte (shared with lm_head), wpe
    return embeddings + config.n_layer * block + layer_norm  # + ln_f


def check_token_ids(idx: Any, vocab_size: int, name: str = "idx") -> None:
    """Raise a helpful error unless ``idx`` is an int64/int32 tensor of ids in ``[0, vocab_size)``.

    Shapes are the caller's to check. Values are not read while ``torch.compile`` traces.
    """
    if not isinstance(idx, torch.Tensor):
        raise TypeError(
            f"{name} must be a LongTensor of token ids, got {type(idx).__name__}; "
            "use torch.tensor([ids], dtype=torch.long)"
        )
    if idx.dtype not in (torch.long, torch.int32):  # the dtypes nn.Embedding takes
        raise TypeError(
            f"{name} must hold integer token ids as torch.long (or torch.int32), got "
            f"{idx.dtype}; use {name}.long()"
        )
    if idx.numel() == 0 or torch.compiler.is_compiling():
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"token id {bad} is outside [0, {vocab_size}) (vocab_size) in {name}; "
            "encode with the tokenizer this model was built for, or raise vocab_size"
        )
