"""Attention: the written-out math against PyTorch's fused kernel, and the KV cache against
attention over the whole sequence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptlab.attention import (
    CausalSelfAttention,
    KVCache,
    causal_attention,
    causal_mask,
    repeat_kv,
    scaled_dot_product_attention,
)

SHAPES = [  # (B, nh, T, S, d_k, d_v)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 1, 5, 7, 4),
    (2, 2, 6, 6, 8, 8),
    (1, 4, 9, 9, 5, 3),
    (3, 1, 4, 11, 16, 16),
]


def _qkv(B, nh, T, S, dk, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, nh, T, dk, generator=g, dtype=torch.float64)
    k = torch.randn(B, nh, S, dk, generator=g, dtype=torch.float64)
    v = torch.randn(B, nh, S, dv, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES)
def test_unmasked_matches_torch(shape):
    q, k, v = _qkv(*shape)
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=0)
    assert weights.shape == shape[:3] + (shape[3],)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[2] == s[3]])
def test_causal_matches_torch(shape):
    q, k, v = _qkv(*shape)
    T = shape[2]
    out, weights = scaled_dot_product_attention(q, k, v, causal_mask(T))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    assert (weights[..., future] == 0).all()


@pytest.mark.parametrize("shape", SHAPES)
def test_arbitrary_boolean_mask_matches_torch(shape):
    q, k, v = _qkv(*shape, seed=1)
    B, nh, T, S = shape[:4]
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(B, nh, T, S, generator=g) > 0.4
    mask[..., 0] = True  # every query may attend somewhere, so torch's output has no NaNs
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, nh, T, dtype=torch.float64))


def test_fully_masked_row_gives_zero_not_nan():
    q, k, v = _qkv(1, 1, 2, 3, 4, 4)
    mask = torch.tensor([[False, False, False], [True, True, False]])
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert (weights[0, 0, 0] == 0).all() and (out[0, 0, 0] == 0).all()


def test_causal_mask_with_offset():
    m = causal_mask(2, offset=3)
    assert m.dtype == torch.bool and m.shape == (2, 5)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4), torch.tril(torch.ones(4, 4, dtype=torch.bool)))


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 5), torch.zeros(2, 3, 5)), "last .*dimension"),
        (
            (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4, 4)),
            "same number of positions",
        ),
        ((torch.zeros(2, 3, 4), torch.zeros(3, 3, 4), torch.zeros(3, 3, 4)), "leading"),
        ((torch.zeros(4), torch.zeros(4), torch.zeros(4)), "at least 2 dims"),
    ],
)
def test_bad_shapes_are_explained(args, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(*args)


def test_bad_masks_are_explained():
    q, k, v = _qkv(1, 1, 3, 3, 4, 4)
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 3))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive int"):
        causal_mask(0)
    with pytest.raises(ValueError, match="offset"):
        causal_mask(2, offset=-1)


def _attention(seed=0, n_embd=12, n_head=3):
    torch.manual_seed(seed)
    return CausalSelfAttention(n_embd, n_head).double().eval()


def test_sdpa_path_equals_written_out_path():
    attn = _attention()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    fast = attn(x)
    slow = attn(x, use_sdpa=False)
    y, weights = attn(x, return_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-10, rtol=0)
    torch.testing.assert_close(fast, y, atol=1e-10, rtol=0)
    assert weights.shape == (2, 3, 7, 7)


def test_heads_are_independent_of_batch_neighbours_and_the_future():
    attn = _attention()
    x = torch.randn(2, 6, 12, dtype=torch.float64)
    y = attn(x)
    x2 = x.clone()
    x2[:, 4:] += 1.0  # change the future: positions 0..3 must not notice
    x2[1] += 1.0  # change another batch row: row 0 must not notice
    y2 = attn(x2)
    torch.testing.assert_close(y[:, :4][0], y2[:, :4][0])
    assert not torch.allclose(y[1], y2[1])


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_token_by_token_equals_full(use_sdpa):
    attn = _attention(seed=1)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    full = attn(x)
    cache = KVCache(n_layer=1, max_length=16)
    parts = [attn(x[:, :4], kv_cache=cache, use_sdpa=use_sdpa)]  # prefill with a prompt
    assert cache.length == 4
    for t in range(4, 9):  # then one token at a time
        parts.append(attn(x[:, t : t + 1], kv_cache=cache, use_sdpa=use_sdpa))
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_chunked_prefill_equals_full(use_sdpa):
    # T_new > 1 with a non-empty cache is where a top-left causal mask would be wrong.
    attn = _attention(seed=2)
    x = torch.randn(1, 10, 12, dtype=torch.float64)
    full = attn(x)
    cache = KVCache(n_layer=1, max_length=10)
    parts = [
        attn(x[:, a:b], kv_cache=cache, use_sdpa=use_sdpa) for a, b in [(0, 3), (3, 7), (7, 10)]
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=0)


def test_cached_weights_cover_past_and_new_positions():
    attn = _attention(seed=3)
    x = torch.randn(1, 5, 12, dtype=torch.float64)
    _, full_w = attn(x, return_weights=True)
    cache = KVCache(n_layer=1, max_length=8)
    attn(x[:, :3], kv_cache=cache)
    _, w = attn(x[:, 3:], kv_cache=cache, return_weights=True)
    assert w.shape == (1, 3, 2, 5)
    torch.testing.assert_close(w, full_w[:, :, 3:], atol=1e-10, rtol=0)


def test_kv_cache_errors_and_reset():
    attn = _attention()
    cache = KVCache(n_layer=1, max_length=4)
    attn(torch.randn(1, 3, 12, dtype=torch.float64), kv_cache=cache)
    with pytest.raises(ValueError, match="do not fit.*reset"):
        attn(torch.randn(1, 2, 12, dtype=torch.float64), kv_cache=cache)
    with pytest.raises(ValueError, match="one cache per batch"):
        attn(torch.randn(2, 1, 12, dtype=torch.float64), kv_cache=cache)
    with pytest.raises(ValueError, match="layer_idx 1 out of range"):
        attn(torch.randn(1, 1, 12, dtype=torch.float64), kv_cache=cache, layer_idx=1)
    cache.reset()
    assert cache.length == 0
    attn(torch.randn(1, 4, 12, dtype=torch.float64), kv_cache=cache)
    assert cache.length == 4
    with pytest.raises(ValueError, match="positive int"):
        KVCache(n_layer=0, max_length=4)


def test_module_input_and_config_errors():
    attn = _attention()
    with pytest.raises(ValueError, match=r"x\[None\]"):
        attn(torch.randn(5, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="n_embd=12"):
        attn(torch.randn(1, 5, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by n_head"):
        CausalSelfAttention(10, 3)


# ------------------------------------------------------------------------------ grouped-query


def test_repeat_kv_gives_each_query_group_its_kv_head():
    kv = torch.randn(2, 3, 5, 4)
    out = repeat_kv(kv, 2)
    assert out.shape == (2, 6, 5, 4)
    for h in range(6):  # query head h reads KV head h // 2 (transformers' order)
        assert torch.equal(out[:, h], kv[:, h // 2])
    assert repeat_kv(kv, 1) is kv
    with pytest.raises(ValueError, match="n_rep"):
        repeat_kv(kv, 0)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_gqa_cache_stores_only_kv_heads_and_equals_full(use_sdpa):
    torch.manual_seed(5)
    attn = CausalSelfAttention(12, 6, n_kv_head=2).double().eval()
    assert attn.c_attn.out_features == 12 + 2 * 2 * 2  # q for 6 heads, k and v for 2
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    full = attn(x, use_sdpa=use_sdpa)
    cache = KVCache(n_layer=1, max_length=8)
    parts = [attn(x[:, :3], kv_cache=cache, use_sdpa=use_sdpa)]
    parts += [attn(x[:, t : t + 1], kv_cache=cache, use_sdpa=use_sdpa) for t in range(3, 7)]
    assert cache.k[0].shape == (2, 2, 8, 2)  # (B, n_kv_head, max_length, head_dim)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-10, rtol=0)


def test_gqa_equals_mha_with_repeated_kv_weights():
    """A GQA layer is an MHA layer whose k/v projections repeat within each group."""
    torch.manual_seed(6)
    gqa = CausalSelfAttention(8, 4, n_kv_head=2).double().eval()
    mha = CausalSelfAttention(8, 4).double().eval()
    wq, wk, wv = gqa.c_attn.weight.split([8, 4, 4])
    bq, bk, bv = gqa.c_attn.bias.split([8, 4, 4])
    rep = lambda w: w.view(2, 1, 2, -1).expand(2, 2, 2, -1).reshape(8, *w.shape[1:])  # noqa: E731
    with torch.no_grad():
        mha.c_attn.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.c_attn.bias.copy_(torch.cat([bq, rep(bk[:, None])[:, 0], rep(bv[:, None])[:, 0]]))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-10, rtol=0)
    _, w_gqa = gqa(x, return_weights=True)
    assert w_gqa.shape == (1, 4, 5, 5)


def test_gqa_errors():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        CausalSelfAttention(12, 6, n_kv_head=4)
    with pytest.raises(ValueError, match="n_kv_head must be a positive int"):
        CausalSelfAttention(12, 6, n_kv_head=0)
    q = torch.zeros(1, 6, 2, 4)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        causal_attention(q, torch.zeros(1, 4, 2, 4), torch.zeros(1, 4, 2, 4))
    with pytest.raises(ValueError, match="same B and hs"):
        causal_attention(q, torch.zeros(1, 3, 2, 5), torch.zeros(1, 3, 2, 5))
