"""gptlab.interpret: hooks see what the model computes, ablations change only what they claim."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptlab.attention import causal_mask
from gptlab.interpret import (
    ablate_heads,
    attention_maps,
    common_prefix_length,
    head_ablation_losses,
    logit_lens,
    next_word_probs,
    residual_stream,
    token_rank,
    verbatim_recall,
)
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=23, block_size=16, n_layer=3, n_head=4, n_embd=32)
    return GPT(cfg).eval()


@pytest.fixture(scope="module")
def idx() -> torch.Tensor:
    return torch.randint(0, 23, (2, 11), generator=torch.Generator().manual_seed(1))


def _manual_forward(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream written out block by block (no hooks)."""
    T = idx.shape[1]
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
    states = [x]
    for block in model.transformer.h:
        x = block(x)
        states.append(x)
    return states


# --- residual stream and logit lens ----------------------------------------------------------


def test_residual_stream_matches_a_manual_forward(model, idx):
    states = residual_stream(model, idx)
    assert states.shape == (model.config.n_layer + 1, 2, 11, model.config.n_embd)
    torch.testing.assert_close(states, torch.stack(_manual_forward(model, idx)))


def test_logit_lens_at_the_last_layer_is_the_model_output(model, idx):
    lens = logit_lens(model, residual_stream(model, idx))  # (L + 1, B, T, V)
    logits, _ = model(idx)
    torch.testing.assert_close(lens[-1], logits, rtol=0, atol=1e-6)
    # earlier layers decode through the same ln_f and lm_head, not through the blocks above
    x0 = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(idx.shape[1]))
    expected0 = model.transformer.ln_f(x0) @ model.transformer.wte.weight.T
    torch.testing.assert_close(lens[0], expected0)


def test_hooks_are_removed(model, idx):
    residual_stream(model, idx)
    attention_maps(model, idx)
    with ablate_heads(model, [(0, 0), (2, 3)]):
        pass
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_token_rank_counts_strictly_larger_logits():
    logits = torch.tensor([[0.1, 2.0, 2.0, -1.0], [3.0, 1.0, 0.0, 5.0]])
    ranks = token_rank(logits, torch.tensor([1, 2]))
    assert ranks.tolist() == [0, 3]  # a tie for first place is rank 0
    assert token_rank(logits, torch.tensor([3, 3])).tolist() == [3, 0]
    # agrees with a full descending sort when there are no ties
    z = torch.randn(5, 7, 50, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 50, (5, 7), generator=torch.Generator().manual_seed(1))
    order = z.argsort(dim=-1, descending=True)
    expected = (order == t.unsqueeze(-1)).float().argmax(-1)
    assert torch.equal(token_rank(z, t), expected)


# --- attention maps ---------------------------------------------------------------------------


def test_attention_maps_are_causal_rows_that_sum_to_one(model, idx):
    maps = attention_maps(model, idx)
    L, nh, T = model.config.n_layer, model.config.n_head, idx.shape[1]
    assert maps.shape == (L, 2, nh, T, T)
    torch.testing.assert_close(maps.sum(-1), torch.ones(L, 2, nh, T))
    assert torch.all(maps[..., ~causal_mask(T)] == 0)
    # the first layer's weights recomputed by hand from its input
    block = model.transformer.h[0]
    x = block.ln_1(model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T)))
    q, k, _ = block.attn.c_attn(x).split(model.config.n_embd, dim=2)
    hs = model.config.head_dim
    q = q.view(2, T, nh, hs).transpose(1, 2)
    k = k.view(2, T, nh, hs).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1) / hs**0.5).masked_fill(~causal_mask(T), float("-inf"))
    torch.testing.assert_close(maps[0], torch.softmax(scores, dim=-1))


# --- head ablation ----------------------------------------------------------------------------


def test_ablating_nothing_is_exactly_the_baseline(model, idx):
    logits, _ = model(idx)
    with ablate_heads(model, []):
        ablated, _ = model(idx)
    assert torch.equal(logits, ablated)


def test_ablating_a_head_removes_exactly_its_contribution(model, idx):
    layer, head = 1, 2
    hs, C = model.config.head_dim, model.config.n_embd
    proj = model.transformer.h[layer].attn.c_proj
    seen: list[torch.Tensor] = []
    handle = proj.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        model(idx)
        with ablate_heads(model, [(layer, head)]):
            model(idx)
    finally:
        handle.remove()
    before, after = seen  # c_proj's input: heads side by side, (B, T, C)
    cols = torch.zeros(C, dtype=torch.bool)
    cols[head * hs : (head + 1) * hs] = True
    assert torch.equal(after[..., ~cols], before[..., ~cols])  # other heads untouched
    assert torch.all(after[..., cols] == 0) and before[..., cols].abs().sum() > 0
    # the residual stream below the ablated layer is identical; above it, it changes
    states = residual_stream(model, idx)
    with ablate_heads(model, [(layer, head)]):
        ablated_states = residual_stream(model, idx)
    assert torch.equal(states[: layer + 1], ablated_states[: layer + 1])
    # block `layer` loses exactly the head's share of c_proj: y_h @ W[:, slice].T
    contribution = before[..., cols] @ proj.weight[:, cols].T
    x_mid = states[layer] + model.transformer.h[layer].attn(
        model.transformer.h[layer].ln_1(states[layer])
    )
    with ablate_heads(model, [(layer, head)]):
        x_mid_ablated = states[layer] + model.transformer.h[layer].attn(
            model.transformer.h[layer].ln_1(states[layer])
        )
    torch.testing.assert_close(x_mid - x_mid_ablated, contribution)


def test_ablating_every_head_leaves_only_the_projection_bias(model, idx):
    block = model.transformer.h[0]
    x = block.ln_1(residual_stream(model, idx)[0])
    heads = [(0, h) for h in range(model.config.n_head)]
    with ablate_heads(model, heads):
        out = block.attn(x)
    torch.testing.assert_close(out, block.attn.c_proj.bias.expand_as(out))


def test_head_ablation_losses_match_one_by_one_ablation(model, idx):
    x, y = idx[:, :-1], idx[:, 1:]
    losses = head_ablation_losses(model, x, y)
    assert losses.shape == (model.config.n_layer, model.config.n_head)
    with ablate_heads(model, [(2, 1)]):
        expected = model(x, y)[1].item()
    assert losses[2, 1].item() == pytest.approx(expected, abs=1e-6)
    baseline = model(x, y)[1].item()
    assert not torch.allclose(losses, torch.full_like(losses, baseline))


@pytest.mark.parametrize(
    ("heads", "error", "match"),
    [
        ([(3, 0)], ValueError, "layers 0..2"),
        ([(0, 4)], ValueError, "heads 0..3"),
        ([(0,)], TypeError, "pair of ints"),
        ("0,1", TypeError, "iterable of"),
        ([(0, True)], TypeError, "pair of ints"),
    ],
)
def test_ablate_heads_rejects_bad_heads(model, heads, error, match):
    with pytest.raises(error, match=match), ablate_heads(model, heads):
        pass


def test_functions_reject_bad_input(model, idx):
    with pytest.raises(TypeError, match="gptlab GPT"):
        residual_stream(torch.nn.Linear(2, 2), idx)
    with pytest.raises(ValueError, match="2-D"):
        attention_maps(model, idx[0])
    with pytest.raises(ValueError, match="block_size"):
        residual_stream(model, torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="n_embd=32"):
        logit_lens(model, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="without"):
        token_rank(torch.zeros(2, 5), torch.zeros(3, dtype=torch.long))


# --- bias probes ------------------------------------------------------------------------------


def test_next_word_probs_is_the_softmax_at_the_last_position():
    tok = CharTokenizer.from_text("abc de")
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    m.eval()
    probs = next_word_probs(m, tok, ["abc", "de"], ["a", " "])
    assert probs.shape == (2, 2)
    for row, prompt in enumerate(["abc", "de"]):
        logits, _ = m(torch.tensor([tok.encode(prompt)]))
        full = F.softmax(logits[0, -1], dim=-1)
        expected = full[[tok.encode("a")[0], tok.encode(" ")[0]]]
        torch.testing.assert_close(probs[row], expected)
    with pytest.raises(ValueError, match="2 tokens"):
        next_word_probs(m, tok, ["abc"], ["ab"])
    with pytest.raises(TypeError, match="lists of strings"):
        next_word_probs(m, tok, "abc", ["a"])


# --- memorisation -----------------------------------------------------------------------------


def test_common_prefix_length_counts_only_the_leading_run():
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [9, 2, 3, 4], [1, 2, 0, 4]])
    b = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 4], [1, 2, 3, 4]])
    assert common_prefix_length(a, b).tolist() == [4, 3, 0, 2]
    with pytest.raises(ValueError, match="same shape"):
        common_prefix_length(a, b[:, :3])


def _greedy(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding written out: append the argmax, run the whole sequence again."""
    seq = list(prompt)
    for _ in range(steps):
        logits, _ = model(torch.tensor([seq]))
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


def test_verbatim_recall_scores_the_greedy_continuation(model):
    # A text that *is* the model's greedy continuation of its prompt is recalled exactly;
    # change one token of it and the common prefix stops there.
    prompt = [5, 17, 2, 9, 11]
    cont = _greedy(model, prompt, 6)
    ids = torch.tensor([0, 1] + prompt + cont)  # the passage starts at offset 2
    result = verbatim_recall(model, ids, [2], prompt_len=5, continuation_len=6)
    assert result.generated.tolist() == [cont]
    assert result.target.tolist() == [cont]
    assert result.exact.tolist() == [True] and result.prefix_len.tolist() == [6]

    altered = ids.clone()
    altered[2 + 5 + 3] = (altered[2 + 5 + 3] + 1) % model.config.vocab_size
    other = [7, 7, 0, 3, 1]
    ids2 = torch.cat([altered, torch.tensor(other + _greedy(model, other, 6))])
    result = verbatim_recall(
        model, ids2, [2, len(altered)], prompt_len=5, continuation_len=6, batch_size=1
    )
    assert result.prefix_len.tolist() == [3, 6]
    assert result.exact.tolist() == [False, True]
    assert result.generated[0].tolist() == cont  # the model still says what it said before


def test_verbatim_recall_rejects_bad_spans(model):
    ids = torch.arange(20) % 23
    with pytest.raises(ValueError, match="exceeds block_size"):
        verbatim_recall(model, ids, [0], prompt_len=10, continuation_len=10)
    with pytest.raises(ValueError, match="len\\(ids\\) - 8"):
        verbatim_recall(model, ids, [13], prompt_len=4, continuation_len=4)
    with pytest.raises(ValueError, match="positive int"):
        verbatim_recall(model, ids, [0], prompt_len=0, continuation_len=4)
