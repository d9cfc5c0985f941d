"""gptlab.evaluate.likelihood: bits per byte, perplexity and sliding windows vs hand computation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import gptlab
from gptlab.evaluate import likelihood as lk


class UniformLM(torch.nn.Module):
    """Gives every token the same logit: exactly ln(vocab) nats per predicted token."""

    def __init__(self, vocab_size: int, block_size: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, block_size=block_size)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.config.vocab_size), None


def tiny_gpt(vocab_size: int = 40, block_size: int = 32) -> gptlab.GPT:
    torch.manual_seed(0)
    config = gptlab.GPTConfig(
        n_layer=1, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size
    )
    return gptlab.GPT(config).eval()


def test_uniform_model_costs_log2_vocab_bits_per_ascii_byte():
    tok = gptlab.CharTokenizer.from_text("abcdefgh ")
    model = UniformLM(tok.vocab_size, block_size=4)  # windows slide: 20 chars, block 4
    texts = ["abc defgh abc defgh!"[:-1], "hgf"]
    bpb = lk.bits_per_byte(model, tok, texts, stride=2)
    assert bpb == pytest.approx(math.log2(tok.vocab_size), rel=1e-6)  # float32 logits
    parts = lk.text_likelihood(model, tok, texts, stride=2)
    assert [p.tokens for p in parts] == [18, 2]  # the first token of each text is context only
    assert [p.bytes for p in parts] == [18, 2]
    assert parts[0].perplexity == pytest.approx(tok.vocab_size)


def test_bos_id_scores_every_token_and_every_byte():
    tok = gptlab.CharTokenizer.from_text("abc")
    model = UniformLM(tok.vocab_size, block_size=8)
    (part,) = lk.text_likelihood(model, tok, ["abcab"], bos_id=0)
    assert (part.tokens, part.bytes) == (5, 5)
    assert part.nats == pytest.approx(5 * math.log(3))


@torch.no_grad()
def _hand_nats(model, ids, block, stride):
    """Token by token: token j is predicted from the window that first scores it."""
    total = 0.0
    begin, scored_to = 0, 0
    while scored_to < len(ids) - 1:
        end = min(begin + block, len(ids) - 1)
        for j in range(scored_to + 1, end + 1):
            context = torch.tensor([ids[begin:j]])
            logits = model(context)[0][0, -1]
            total -= float(torch.log_softmax(logits.double(), -1)[ids[j]])
        scored_to = end
        begin += stride
    return total


@pytest.mark.parametrize("stride", [1, 5, 16])
def test_sliding_windows_match_a_hand_loop_and_batching_does_not_matter(stride):
    model = tiny_gpt(block_size=16)
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (50, 3, 17)]
    batched = lk.sequence_nats(model, seqs, stride=stride, batch_size=7)
    single = [lk.sequence_nats(model, [s], stride=stride, batch_size=1)[0] for s in seqs]
    for (nats, tokens), (nats1, tokens1), s in zip(batched, single, seqs, strict=True):
        assert tokens == tokens1 == len(s) - 1
        assert nats == pytest.approx(nats1, abs=1e-5)
        assert nats == pytest.approx(_hand_nats(model, s, 16, stride), abs=1e-4)


def test_one_window_equals_the_models_own_loss():
    model = tiny_gpt()
    ids = torch.randint(0, 40, (20,), generator=torch.Generator().manual_seed(2)).tolist()
    ((nats, tokens),) = lk.sequence_nats(model, [ids])
    _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert tokens == 19
    assert nats / tokens == pytest.approx(float(loss.detach()), abs=1e-5)


def test_conversions_round_trip_and_match_hand_values():
    assert lk.perplexity(math.log(50)) == pytest.approx(50)
    bpb = lk.loss_to_bits_per_byte(2.0, n_tokens=100, n_bytes=300)
    assert bpb == pytest.approx(2.0 * 100 / (math.log(2) * 300))
    assert lk.bits_per_byte_to_loss(bpb, 100, 300) == pytest.approx(2.0)


def test_reference_model_bits_per_byte_is_in_the_expected_range():
    model, tok = gptlab.load_reference_model()
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east.\n"
    bpb = lk.bits_per_byte(model, tok, [text])
    assert 0.5 < bpb < 4.0  # manifest: about 2.6 bits per character on held-out plays


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m, t: lk.bits_per_byte(m, t, "abc"), TypeError),
        (lambda m, t: lk.bits_per_byte(m, t, []), ValueError),
        (lambda m, t: lk.bits_per_byte(m, t, ["a"]), ValueError),  # one token: nothing scored
        (lambda m, t: lk.bits_per_byte(m, t, ["abc"], stride=0), ValueError),
        (lambda m, t: lk.bits_per_byte(m, t, ["abc"], stride=9), ValueError),
        (lambda m, t: lk.bits_per_byte(object(), t, ["abc"]), TypeError),
        (lambda m, t: lk.perplexity(-1.0), ValueError),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, error):
    tok = gptlab.CharTokenizer.from_text("abc")
    with pytest.raises(error):
        call(UniformLM(3, 8), tok)
