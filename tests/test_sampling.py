"""Sampling: cached == uncached, seeds reproduce, filters keep only what they promise, and the
filters match Hugging Face's logits processors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from gptlab.model import GPT, GPTConfig
from gptlab.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    decode_stream,
    generate,
    stream,
    stream_text,
    top_k_filter,
    top_p_filter,
)
from gptlab.tokenizers import BPETokenizer, CharTokenizer, get_tokenizer

VOCAB = 61


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).double().eval()  # float64: cached and uncached agree to the last bit


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))


def naive_greedy(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The definition: argmax of the full forward pass over the last block_size tokens."""
    for _ in range(n):
        logits, _ = model(idx[:, -model.config.block_size :])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


# ------------------------------------------------------------------------ greedy and the cache


def test_greedy_cached_equals_uncached_across_the_window_slide(model, prompt):
    n = 30  # 5 + 30 tokens > block_size 16: the window slides for the last 19 steps
    with torch.no_grad():
        expected = naive_greedy(model, prompt, n)
    cached = generate(model, prompt, n, temperature=0)
    uncached = generate(model, prompt, n, temperature=0, use_cache=False)
    assert cached.shape == (2, 5 + n) and cached.dtype == torch.long
    assert torch.equal(cached, expected)
    assert torch.equal(uncached, expected)


def test_cache_feeds_one_token_per_step_until_the_window_slides(model, prompt):
    lengths: list[int] = []
    hook = model.transformer.wte.register_forward_hook(
        lambda m, i, o: lengths.append(i[0].shape[1])
    )
    try:
        generate(model, prompt[:1], 14, temperature=0)
        assert lengths == [5] + [1] * 11 + [16] * 2  # prefill, steps, then recompute at t > 16
        lengths.clear()
        generate(model, prompt[:1], 3, temperature=0, use_cache=False)
        assert lengths == [5, 6, 7]
    finally:
        hook.remove()


def test_generate_restores_training_mode_and_needs_no_grad(model, prompt):
    model.train()
    try:
        out = generate(model, prompt, 3, temperature=0)
        assert model.training
        assert not out.requires_grad
        model.eval()
        assert torch.equal(out, generate(model, prompt, 3, temperature=0))  # dropout was off
    finally:
        model.eval()


def test_zero_new_tokens_returns_the_prompt(model, prompt):
    assert torch.equal(generate(model, prompt, 0), prompt)


# ------------------------------------------------------------------------ sampling


def test_seeded_sampling_reproduces(model, prompt):
    kw = dict(temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.1)
    a = generate(model, prompt, 20, generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, prompt, 20, generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, prompt, 20, generator=torch.Generator().manual_seed(8), **kw)
    d = generate(
        model, prompt, 20, generator=torch.Generator().manual_seed(7), use_cache=False, **kw
    )
    assert torch.equal(a, b)
    assert torch.equal(a, d)  # the cache changes speed, not the draws
    assert not torch.equal(a, c)


def test_stream_yields_what_generate_returns(model, prompt):
    one = prompt[:1]
    kw = dict(temperature=1.3, top_k=30)
    gen = generate(model, one, 25, generator=torch.Generator().manual_seed(3), **kw)
    streamed = list(stream(model, one, 25, generator=torch.Generator().manual_seed(3), **kw))
    assert streamed == gen[0, 5:].tolist()
    assert (
        list(stream(model, one[0], 4, temperature=0))
        == generate(model, one, 4, temperature=0)[0, 5:].tolist()
    )


def test_num_return_sequences(model, prompt):
    out = generate(
        model, prompt, 6, num_return_sequences=3, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (6, 11)
    assert torch.equal(out[:, :5], prompt.repeat_interleave(3, dim=0))  # prompts stay together
    assert len({tuple(row) for row in out[:3, 5:].tolist()}) > 1  # independent samples


def test_eos_stops_each_row_and_pads_it(model, prompt):
    full = generate(model, prompt, 12, temperature=0)
    new = full[:, 5:]
    eos = int(new[0, 3])
    first = [next((j for j, t in enumerate(row) if t == eos), None) for row in new.tolist()]
    out = generate(model, prompt, 12, temperature=0, eos_token_id=eos)
    stops = [12 if j is None else j + 1 for j in first]
    assert out.shape[1] == 5 + max(stops)  # early stop once all rows are done (or at the limit)
    for row, stop in enumerate(stops):
        assert torch.equal(out[row, : 5 + stop], full[row, : 5 + stop])
        assert (out[row, 5 + stop :] == eos).all()  # finished rows are padded with eos
    streamed = list(stream(model, prompt[:1], 12, temperature=0, eos_token_id=eos))
    assert streamed == new[0, : first[0] + 1].tolist() and streamed[-1] == eos


# ------------------------------------------------------------------------ the filters


def test_filters_match_hugging_face_processors():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g) * 3
    previous = torch.randint(0, 50, (4, 7), generator=g)
    torch.testing.assert_close(
        apply_repetition_penalty(logits, previous, 1.3),
        RepetitionPenaltyLogitsProcessor(1.3)(previous, logits.clone()),
    )
    torch.testing.assert_close(
        apply_temperature(logits, 0.7), TemperatureLogitsWarper(0.7)(previous, logits.clone())
    )
    for k in (1, 5, 50):
        torch.testing.assert_close(
            top_k_filter(logits, k), TopKLogitsWarper(k)(previous, logits.clone())
        )
    for p in (0.1, 0.5, 0.9):
        ours = torch.isinf(top_p_filter(logits, p))
        theirs = torch.isinf(TopPLogitsWarper(p)(previous, logits.clone()))
        assert torch.equal(ours, theirs)


def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # seen: 2/2, -2*2; unseen unchanged
    assert logits.tolist() == [[2.0, -2.0, 1.0, 0.5]]  # pure: the input is untouched


logit_rows = st.lists(
    st.floats(min_value=-20, max_value=20, allow_nan=False, width=32), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(row=logit_rows, k=st.integers(min_value=1, max_value=50), seed=st.integers(0, 2**16))
def test_top_k_never_samples_outside_the_k_best(row, k, seed):
    logits = torch.tensor([row])
    filtered = top_k_filter(logits, k)
    kth = torch.sort(logits[0], descending=True).values[min(k, len(row)) - 1]
    allowed = logits[0] >= kth  # the k largest, plus any tied with the k-th
    assert torch.equal(torch.isfinite(filtered[0]), allowed)
    probs = torch.softmax(filtered, -1)
    draws = torch.multinomial(
        probs, 200, replacement=True, generator=torch.Generator().manual_seed(seed)
    )
    assert allowed[draws[0]].all()


@settings(max_examples=60, deadline=None)
@given(
    row=logit_rows,
    p=st.floats(min_value=1e-3, max_value=1.0, exclude_min=False),
    seed=st.integers(0, 2**16),
)
def test_top_p_keeps_the_smallest_nucleus(row, p, seed):
    logits = torch.tensor([row], dtype=torch.float64)
    probs = torch.softmax(logits[0], -1)
    kept = torch.isfinite(top_p_filter(logits, p)[0])
    assert kept[probs.argmax()]  # the most likely token (the first, among ties) always survives
    assert probs[kept].sum() >= p - 1e-9  # the nucleus holds at least p
    assert probs[kept].sum() - probs[kept].min() < p + 1e-9  # and is no larger than needed
    if (~kept).any():
        assert probs[kept].min() >= probs[~kept].max()  # it is made of the most likely tokens
    filtered = torch.softmax(top_p_filter(logits, p), -1)
    draws = torch.multinomial(
        filtered, 200, replacement=True, generator=torch.Generator().manual_seed(seed)
    )
    assert kept[draws[0]].all()


def test_top_p_breaks_ties_by_vocabulary_order():
    # 17 equally likely tokens and p = 0.5: the nucleus is the first 9 of them, every time.
    logits = torch.zeros(1, 17, dtype=torch.float64)
    kept = torch.isfinite(top_p_filter(logits, 0.5)[0])
    assert kept.tolist() == [True] * 9 + [False] * 8


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.5), r"temperature must be >= 0 \(0 means greedy\)"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=0), "top_k must be an int >= 1"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0.*1.0 disables it"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0"),
        (dict(num_return_sequences=0), "num_return_sequences must be an int >= 1"),
        (dict(eos_token_id=VOCAB), r"eos_token_id 61 is not a token id.*\[0, 61\)"),
        (dict(eos_token_id=1.5), "eos_token_id 1.5 is not a token id"),  # was accepted
        (dict(eos_token_id=True), "eos_token_id True is not a token id"),  # was accepted
        (dict(temperature=float("nan")), "temperature must be >= 0"),  # was accepted
        (dict(temperature="hot"), "temperature must be >= 0"),  # was a raw TypeError
        (dict(top_p=True), r"top_p must be in \(0, 1\]"),  # was accepted
    ],
)
def test_bad_arguments_are_explained(model, prompt, kwargs, match):
    n = kwargs.pop("max_new_tokens", 3)
    with pytest.raises(ValueError, match=match):
        generate(model, prompt, n, **kwargs)
    if "num_return_sequences" not in kwargs:
        with pytest.raises(ValueError, match=match):
            stream(model, prompt[:1], n, **kwargs)  # raises at the call, not at first next()


def test_bad_prompts_are_explained(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="2-D"):
        generate(model, torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="batch size 1.*generate"):
        stream(model, torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="gptlab language model.*lacks next_token_logits"):
        generate(torch.nn.Linear(2, 2), torch.zeros(1, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(torch.zeros(1, 3), 0.0)


@pytest.mark.parametrize(
    "idx, error, match",
    [
        (torch.tensor([[1.7, 2.9]]), TypeError, "integer token ids.*torch.float32"),
        (torch.tensor([[True, False]]), TypeError, "integer token ids.*torch.bool"),
        (torch.tensor([[1, 2]], dtype=torch.uint8), TypeError, r"torch.uint8; use idx.long\(\)"),
        (torch.tensor([[1, VOCAB]]), ValueError, r"token id 61 is outside \[0, 61\)"),
        (torch.tensor([[-1, 2]]), ValueError, "token id -1 is outside"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "no prompts"),
        ([[1, 2]], TypeError, "LongTensor of token ids"),
    ],
)
@pytest.mark.parametrize("max_new_tokens", [0, 3])
def test_prompts_are_checked_like_forward_before_any_early_return(
    model, idx, error, match, max_new_tokens
):
    """Float and bool prompts used to be truncated silently ([[1.7, 2.9]] -> [[1, 2]]), and
    max_new_tokens=0 returned any prompt unchecked."""
    with pytest.raises(error, match=match):
        generate(model, idx, max_new_tokens)
    if isinstance(idx, torch.Tensor) and idx.shape[0] == 1:
        with pytest.raises(error, match=match):
            stream(model, idx, max_new_tokens)
        with pytest.raises(error, match=match):
            stream(model, idx[0], max_new_tokens)  # the documented 1-D form


def test_int32_prompts_work_and_come_back_as_long(model, prompt):
    out = generate(model, prompt.int(), 3, temperature=0)
    assert out.dtype == torch.long
    assert torch.equal(out, generate(model, prompt, 3, temperature=0))


def test_a_prompt_longer_than_the_window_slides_with_one_warning(model):
    """generate used to refuse it; it now keeps the documented sliding window (the model sees the
    last block_size tokens) and warns once, at the caller's line."""
    long_prompt = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    with pytest.warns(
        UserWarning, match="prompt is 20 tokens but the model's block_size is 16"
    ) as w:
        out = generate(model, long_prompt, 5, temperature=0)
    assert len(w) == 1 and w[0].filename == __file__
    assert out.shape == (2, 25) and torch.equal(out[:, :20], long_prompt)
    cropped = generate(model, long_prompt[:, -16:], 5, temperature=0)
    assert torch.equal(out[:, 20:], cropped[:, 16:])  # the same as the last 16 tokens alone
    with pytest.warns(UserWarning, match="sees only the last 16") as w:
        tokens = list(stream(model, long_prompt[:1], 5, temperature=0))
    assert len(w) == 1 and w[0].filename == __file__
    assert tokens == out[0, 20:].tolist()


def test_huge_requests_are_refused_before_allocating(model, prompt, monkeypatch):
    """max_new_tokens=10**11 used to preallocate a (B, T + 10**11) output and die."""
    message = r"output of 2 sequences of 5 \+ 100,000,000,000 tokens would need 1\.6e\+03 GB"
    with pytest.raises(ValueError, match=message + ".*fewer new tokens.*GPTLAB_MAX_BYTES"):
        generate(model, prompt, 10**11)
    with pytest.raises(ValueError, match="output of 1,000,000,000 sequences"):
        generate(model, prompt[:1], 1, num_return_sequences=10**9)
    with pytest.raises(ValueError, match="output of 1 sequences"):
        stream(model, prompt[:1], 10**11)  # at the call, not at the first next()
    monkeypatch.setenv("GPTLAB_MAX_BYTES", str(2 * (5 + 10) * 8 - 1))  # one byte short
    with pytest.raises(ValueError, match="would need 240 bytes, more than the 239 bytes"):
        generate(model, prompt, 10)
    monkeypatch.setenv("GPTLAB_MAX_BYTES", str(2 * (5 + 10) * 8 + 10**6))  # the cache is 0.1 MB
    assert generate(model, prompt, 10).shape == (2, 15)


class _Wrapped:
    """A model that is not a GPT but answers the interface generation needs (as Llama does)."""

    def __init__(self, inner: GPT) -> None:
        self.inner, self.config, self.training = inner, inner.config, inner.training

    def next_token_logits(self, idx, *, kv_cache=None):
        return self.inner.next_token_logits(idx, kv_cache=kv_cache)

    def new_kv_cache(self, batch_size=1):
        return self.inner.new_kv_cache(batch_size)

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)


def test_any_model_with_the_interface_can_generate(model, prompt):
    """Sampling used to accept only the GPT class; the Llama family must go through it too."""
    wrapped = _Wrapped(model)
    expected = generate(model, prompt, 8, temperature=0)
    assert torch.equal(generate(wrapped, prompt, 8, temperature=0), expected)
    assert list(stream(wrapped, prompt[:1], 8, temperature=0)) == expected[0, 5:].tolist()


# ------------------------------------------------------------------------ byte-safe streaming

SPLIT_TEXT = "Hello 你好世界, 😀👍🏽 naïve 👨‍👩‍👧!"


@pytest.fixture(scope="module")
def gpt2_bpe() -> BPETokenizer:
    return BPETokenizer.gpt2()


def test_decode_stream_never_splits_a_character(gpt2_bpe):
    """Decoding GPT-2 tokens one at a time gives U+FFFD for Chinese and emoji; the stream holds
    their bytes back until the character is complete."""
    enc = get_tokenizer("gpt2")
    ids = enc.encode(SPLIT_TEXT)
    assert "\ufffd" in "".join(enc.decode([i]) for i in ids)  # the problem is real here
    for tok in (enc, gpt2_bpe):
        lazy = iter(ids)
        pieces = list(decode_stream(tok, lazy))
        assert "".join(pieces) == SPLIT_TEXT
        assert all(p and "\ufffd" not in p for p in pieces)
        assert len(pieces) > 10  # it streams: pieces come out as the characters complete
    assert list(decode_stream(enc, [])) == []


def test_decode_stream_joins_to_decode_on_any_ids(gpt2_bpe):
    """Even for ids that are not valid UTF-8 (random tokens from an untrained model)."""
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        ids = torch.randint(0, 50257, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
        ids = ids.tolist()
        assert "".join(decode_stream(gpt2_bpe, ids)) == gpt2_bpe.decode(ids)
    half = gpt2_bpe.encode("你")[:1]  # a stream that stops inside a character
    assert list(decode_stream(gpt2_bpe, half)) == [gpt2_bpe.decode(half)] == ["\ufffd"]


def test_decode_stream_checks_its_tokenizer_and_ids():
    chars = CharTokenizer.from_text("héllo")
    assert list(decode_stream(chars, chars.encode("héllo"))) == list("héllo")
    with pytest.raises(TypeError, match="each token's bytes"):
        decode_stream(object(), [1])
    with pytest.raises(ValueError, match="token id 50257 is not in the gpt2 vocabulary"):
        list(decode_stream(get_tokenizer("gpt2"), [50257]))
    with pytest.raises(TypeError, match="token ids must be ints"):
        list(decode_stream(get_tokenizer("gpt2"), [1.0]))


def test_stream_text_is_stream_decoded():
    enc = get_tokenizer("gpt2")
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    idx = torch.tensor([enc.encode("你好")])
    kw = dict(temperature=1.0, top_k=50)
    ids = list(stream(gpt, idx, 12, generator=torch.Generator().manual_seed(5), **kw))
    text = list(stream_text(gpt, enc, idx, 12, generator=torch.Generator().manual_seed(5), **kw))
    assert "".join(text) == enc.decode(ids)
