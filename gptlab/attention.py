"""Attention, the one operation that lets a token look at the tokens before it.

Read top to bottom: the formula written out (:func:`scaled_dot_product_attention`), the mask
that hides the future (:func:`causal_mask`), the cache that lets generation reuse past keys and
values (:class:`KVCache`), grouped-query attention's key/value sharing (:func:`repeat_kv`), the
causal attention step both model families share (:func:`causal_attention`), and multi-head
causal self-attention (:class:`CausalSelfAttention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CausalSelfAttention",
    "KVCache",
    "causal_attention",
    "causal_mask",
    "repeat_kv",
    "scaled_dot_product_attention",
]


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(
                f"{name} must have shape (..., T, d) with at least 2 dims, got {tuple(t.shape)}; "
                "add a batch/head dimension or pass (T, d)"
            )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the last (feature) dimension to be compared, got q {tuple(q.shape)} "
            f"and k {tuple(k.shape)}; project both to the same head size"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions (dim -2), got k {tuple(k.shape)} and "
            f"v {tuple(v.shape)}; every key needs exactly one value"
        )
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"q, k, v must share their leading (batch, head) dims, got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Attention written out: :math:`\mathrm{softmax}(QK^\top/\sqrt{d_k})\,V`.

    ``q`` is ``(..., T, d_k)``, ``k`` is ``(..., S, d_k)``, ``v`` is ``(..., S, d_v)``. ``mask`` is a
    boolean tensor broadcastable to ``(..., T, S)`` where True means "may attend". Returns
    ``(out, weights)``: ``out`` is ``(..., T, d_v)`` and ``weights`` ``(..., T, S)`` are the attention
    probabilities (before dropout) so chapters can plot them. A query row that may attend to
    nothing gets all-zero weights rather than NaN.
    """
    _check_qkv(q, k, v)
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, S)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(
                "mask must be a boolean tensor (True = may attend); convert with mask.bool() or "
                "build one with causal_mask(T)"
            )
        if not _broadcastable(mask.shape, scores.shape):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                f"{tuple(scores.shape)} (..., T={T}, S={S}); use causal_mask(T) or a (T, S) mask"
            )
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        # A fully masked row is softmax(-inf, ..., -inf) = NaN; it attends to nothing, so use 0.
        weights = weights.masked_fill(~mask, 0.0)
    dropped = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    return dropped @ v, weights  # (..., T, d_v), (..., T, S)


def _broadcastable(a: torch.Size, b: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(a, b) == b
    except RuntimeError:
        return False


def causal_mask(
    T: int, device: torch.device | str | None = None, *, offset: int = 0
) -> torch.Tensor:
    """Boolean ``(T, T + offset)`` mask: query ``i`` may attend to key ``j`` iff ``j <= i + offset``.

    ``offset`` is the number of positions already in a KV cache: the ``T`` new queries sit at
    absolute positions ``offset .. offset + T - 1`` and see every cached key plus the new keys
    up to themselves.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive int (number of query positions), got {T!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be an int >= 0 (number of cached positions), got {offset!r}")
    ones = torch.ones(T, T + offset, dtype=torch.bool, device=device)
    return torch.tril(ones, diagonal=offset)


class KVCache:
    """Keys and values of past positions, one slot per layer, so generation feeds one token per step.

    Without a cache, producing token ``t`` re-runs the model over all ``t`` previous tokens; with
    it, each layer appends the new token's key and value and attends over the stored ones.
    Storage ``(B, n_kv_head, max_length, head_dim)`` per layer is allocated once, by
    :meth:`allocate` or at the first write, so decoding steps only copy into it; ``length``
    counts the positions stored in every layer. With grouped-query attention only the key/value
    heads are stored (``n_kv_head`` of them, fewer than the query heads): that is GQA's saving.
    Prefill with a prompt (any number of tokens), then append one token at a time.
    """

    def __init__(self, n_layer: int, max_length: int) -> None:
        for name, value in (("n_layer", n_layer), ("max_length", max_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.n_layer = n_layer
        self.max_length = max_length
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self._lengths = [0] * n_layer

    def allocate(
        self,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """Allocate every layer's storage now instead of at its first write."""
        for name, value in (
            ("batch_size", batch_size),
            ("n_kv_head", n_kv_head),
            ("head_dim", head_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        shape = (batch_size, n_kv_head, self.max_length, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(self.n_layer)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(self.n_layer)]
        self._lengths = [0] * self.n_layer

    @property
    def length(self) -> int:
        """Number of positions stored in every layer (the absolute position of the next token)."""
        return min(self._lengths)

    def reset(self) -> None:
        """Forget every stored position but keep the storage for reuse."""
        self._lengths = [0] * self.n_layer

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v`` of shape ``(B, n_kv_head, T_new, hs)`` to layer ``layer_idx``; return all stored."""
        if not 0 <= layer_idx < self.n_layer:
            raise ValueError(
                f"layer_idx {layer_idx} out of range for a cache of {self.n_layer} layers; "
                "create the cache with model.new_kv_cache(batch_size)"
            )
        if k.dim() != 4 or k.shape != v.shape:
            raise ValueError(
                f"k and v must both be (B, n_kv_head, T, head_dim), got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        B, nh, T, hs = k.shape
        start = self._lengths[layer_idx]
        if start + T > self.max_length:
            raise ValueError(
                f"KV cache holds {self.max_length} positions; {start} are used and {T} more do not "
                "fit. Crop the input to the context window or call cache.reset()"
            )
        store_k, store_v = self.k[layer_idx], self.v[layer_idx]
        if store_k is None or store_v is None:
            shape = (B, nh, self.max_length, hs)
            store_k = self.k[layer_idx] = k.new_empty(shape)
            store_v = self.v[layer_idx] = v.new_empty(shape)
        elif store_k.shape[:2] != (B, nh) or store_k.shape[3] != hs or store_k.dtype != k.dtype:
            raise ValueError(
                f"this cache stores (B={store_k.shape[0]}, n_kv_head={store_k.shape[1]}, "
                f"head_dim={store_k.shape[3]}, {store_k.dtype}) but got k {tuple(k.shape)} {k.dtype}; "
                "use one cache per batch (model.new_kv_cache(batch_size))"
            )
        store_k[:, :, start : start + T] = k
        store_v[:, :, start : start + T] = v
        self._lengths[layer_idx] = start + T
        return store_k[:, :, : start + T], store_v[:, :, : start + T]  # (B, nh, start+T, hs)

    def __repr__(self) -> str:
        return (
            f"KVCache(n_layer={self.n_layer}, length={self.length}, max_length={self.max_length})"
        )


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention's sharing: ``(B, n_kv_head, S, hs)`` -> ``(B, n_kv_head * n_rep, S, hs)``.

    Query head ``h`` reads key/value head ``h // n_rep``, so each KV head is repeated for the
    ``n_rep`` consecutive query heads of its group (Ainslie et al., 2023; Hugging Face's order).
    """
    if isinstance(n_rep, bool) or not isinstance(n_rep, int) or n_rep < 1:
        raise ValueError(f"n_rep must be a positive int (query heads per KV head), got {n_rep!r}")
    if n_rep == 1:
        return x
    B, n_kv, S, hs = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, S, hs).reshape(B, n_kv * n_rep, S, hs)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_cache: KVCache | None = None,
    layer_idx: int = 0,
    *,
    dropout_p: float = 0.0,
    use_sdpa: bool = True,
    return_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal attention of new queries over the cached past plus the new keys: the step that
    GPT's and Llama's attention layers share.

    ``q`` is ``(B, n_head, T, hs)``; ``k`` and ``v`` are ``(B, n_kv_head, T, hs)`` where
    ``n_kv_head`` divides ``n_head`` (equal for multi-head attention, fewer for grouped-query
    attention). With ``kv_cache`` the new keys/values are appended to layer ``layer_idx`` first.
    Returns ``(y, weights)``: ``y`` ``(B, n_head, T, hs)``; ``weights`` ``(B, n_head, T, S)`` when
    ``return_weights`` (which runs the written-out math), else None.
    """
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape or q.shape[0::3] != k.shape[0::3]:
        raise ValueError(
            f"q must be (B, n_head, T, hs) and k, v (B, n_kv_head, T, hs) with the same B and hs, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    n_head, n_kv_head, T = q.shape[1], k.shape[1], q.shape[2]
    if n_head % n_kv_head != 0:
        raise ValueError(
            f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head}): each group of "
            "query heads shares one key/value head"
        )
    if kv_cache is not None:
        k, v = kv_cache.update(layer_idx, k, v)  # (B, n_kv_head, past + T, hs)
    past = k.shape[2] - T  # positions that were already in the cache
    k, v = repeat_kv(k, n_head // n_kv_head), repeat_kv(v, n_head // n_kv_head)  # (B, nh, S, hs)
    if use_sdpa and not return_weights:
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:
            # One new query sits after every cached key: it may see all of them, no mask.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:
            # is_causal aligns the mask top-left, which is wrong with a cache; pass it explicitly.
            mask = causal_mask(T, q.device, offset=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        return y, None
    mask = causal_mask(T, q.device, offset=past)  # (T, past + T)
    return scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout_p)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention as in GPT-2 (and grouped-query with ``n_kv_head``).

    One fused linear layer ``c_attn`` makes queries, keys and values for all heads at once;
    ``c_proj`` mixes the heads' outputs back into the residual stream. The fast path calls
    ``F.scaled_dot_product_attention``; ``use_sdpa=False`` or ``return_weights=True`` runs the
    written-out math above (same result, and it can hand back the attention weights).
    ``n_kv_head`` (default ``n_head``: plain multi-head attention) makes fewer key/value heads,
    each shared by ``n_head // n_kv_head`` query heads.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        *,
        dropout: float = 0.0,
        bias: bool = True,
        n_kv_head: int | None = None,
    ) -> None:
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd ({n_embd}) must be divisible by n_head ({n_head}) so every head gets "
                "n_embd // n_head features; change one of them"
            )
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if isinstance(n_kv_head, bool) or not isinstance(n_kv_head, int) or n_kv_head < 1:
            raise ValueError(f"n_kv_head must be a positive int or None, got {n_kv_head!r}")
        if n_head % n_kv_head != 0:
            raise ValueError(
                f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head}) so the query "
                "heads split into equal groups; e.g. n_kv_head=1 or n_kv_head=n_head"
            )
        self.n_embd = n_embd
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.dropout = dropout
        kv_dim = n_kv_head * (n_embd // n_head)
        self.c_attn = nn.Linear(n_embd, n_embd + 2 * kv_dim, bias=bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        kv_cache: KVCache | None = None,
        layer_idx: int = 0,
        use_sdpa: bool = True,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over ``x`` ``(B, T, C)`` (plus the cached past, if a cache is given).

        Returns ``y`` ``(B, T, C)``, or ``(y, weights)`` with ``weights`` ``(B, nh, T, S)`` when
        ``return_weights`` is True, where ``S`` counts cached plus new positions.
        """
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(
                f"x must be (batch, time, n_embd={self.n_embd}), got {tuple(x.shape)}; "
                "add a batch dimension with x[None] or check n_embd"
            )
        B, T, C = x.shape
        hs = C // self.n_head
        kv_dim = self.n_kv_head * hs
        q, k, v = self.c_attn(x).split([C, kv_dim, kv_dim], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, T, hs)
        y, weights = causal_attention(
            q,
            k,
            v,
            kv_cache,
            layer_idx,
            dropout_p=self.dropout if self.training else 0.0,
            use_sdpa=use_sdpa,
            return_weights=return_weights,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        y = self.resid_dropout(self.c_proj(y))
        if return_weights:
            return y, weights
        return y
