"""Beam search: one beam is greedy, enough beams is exhaustive search, and the result equals
transformers' canonical beam search (``early_stopping="never"``) on the same weights."""

from __future__ import annotations

import itertools

import pytest
import torch

from gptlab.beam import Beam, beam_search
from gptlab.model import GPT, GPTConfig
from gptlab.sampling import generate

pytestmark = pytest.mark.usefixtures("one_thread")


def _gpt(vocab: int, seed: int, sharpness: float = 40.0, **kw) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab, block_size=24, n_layer=2, n_head=2, n_embd=16, **kw)
    model = GPT(config).eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init: beams then disagree
        model.lm_head.weight.mul_(sharpness)
    return model


@torch.no_grad()
def _sequence_logprob(model: GPT, prompt: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([prompt + continuation])
    logits, _ = model(ids[:, :-1])
    logp = torch.log_softmax(logits.double(), dim=-1)[0, len(prompt) - 1 :]
    return float(logp.gather(1, torch.tensor(continuation)[:, None]).sum())


def test_one_beam_is_greedy():
    model = _gpt(37, seed=0)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    [best] = beam_search(model, prompt, 10, num_beams=1)
    assert best.ids == generate(model, prompt, 10, temperature=0)[0].tolist()
    # float32: the beam adds cached per-step log-probs, the check sums one full forward pass;
    # the two differ by ~1e-7 depending on the CPU's kernels (1.1e-6 relative on this one)
    want = _sequence_logprob(model, [3, 1, 4, 1, 5], best.ids[5:])
    assert best.logprob == pytest.approx(want, rel=0, abs=1e-5)


def test_enough_beams_find_the_likeliest_sequence_that_greedy_misses():
    vocab, n = 5, 3
    prompt = [2, 0]
    for seed in range(40):  # find a model where greedy is not the best sequence
        model = _gpt(vocab, seed, sharpness=8.0)
        scores = {
            c: _sequence_logprob(model, prompt, list(c))
            for c in itertools.product(range(vocab), repeat=n)
        }
        best = max(scores, key=scores.get)
        greedy = tuple(generate(model, torch.tensor([prompt]), n, temperature=0)[0, 2:].tolist())
        if greedy != best:
            break
    else:
        pytest.fail("no seed where greedy misses the best sequence")
    beams = beam_search(
        model, torch.tensor([prompt]), n, num_beams=vocab**2, num_return_sequences=3
    )
    ranked = sorted(scores, key=scores.get, reverse=True)[:3]
    assert [tuple(b.ids[2:]) for b in beams] == ranked  # the exhaustive top three, in order
    for b in beams:
        assert b.logprob == pytest.approx(scores[tuple(b.ids[2:])], abs=1e-6)
        assert b.score == pytest.approx(b.logprob / n)  # length_penalty 1: per token
    assert scores[tuple(beams[0].ids[2:])] > scores[greedy]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_equals_transformers_canonical_beam_search(tmp_path, length_penalty):
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from gptlab.pretrained import save_hf_gpt2

    hf_logging.set_verbosity_error()
    vocab, n, k = 41, 12, 4
    model = _gpt(vocab, seed=3, sharpness=8.0)
    save_hf_gpt2(model, tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    finished_early = 0
    for seed in range(6):
        prompt = torch.randint(0, vocab, (1, 4), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():  # end-of-sequence: the second likeliest first token, so that
            eos = int(model.next_token_logits(prompt).topk(2).indices[0, 1])  # beams end early
        ours = beam_search(
            model, prompt, n, num_beams=k, length_penalty=length_penalty, eos_token_id=eos,
            num_return_sequences=k,
        )  # fmt: skip
        with torch.no_grad():
            out = hf.generate(
                prompt, attention_mask=torch.ones_like(prompt), num_beams=k, do_sample=False,
                max_new_tokens=n, early_stopping="never", length_penalty=length_penalty,
                eos_token_id=eos, pad_token_id=eos, num_return_sequences=k,
                output_scores=True, return_dict_in_generate=True,
            )  # fmt: skip
        for beam, row, score in zip(ours, out.sequences, out.sequences_scores, strict=True):
            ids = row.tolist()
            if eos in ids[4:]:
                ids = ids[: 4 + ids[4:].index(eos) + 1]  # drop the padding after eos
            assert beam.ids == ids, seed
            assert beam.score == pytest.approx(float(score), abs=1e-4)
        finished_early += any(len(b.ids) < 4 + n for b in ours)
    if length_penalty == 0.0:  # the raw sum favours short hypotheses: some end early
        assert finished_early >= 2


def test_length_bias_and_its_correction():
    """With the raw sum (length_penalty 0) a short finished hypothesis wins more often than
    with the per-token mean (length_penalty 1): scores of longer sequences are sums of more
    negative terms."""
    vocab = 23
    model = _gpt(vocab, seed=11, sharpness=8.0)
    lengths = {0.0: [], 1.0: []}
    for seed in range(8):
        prompt = torch.randint(0, vocab, (1, 3), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():  # end-of-sequence: the second likeliest first token
            eos = int(model.next_token_logits(prompt).topk(2).indices[0, 1])
        for lp, found in lengths.items():
            [best] = beam_search(
                model, prompt, 15, num_beams=4, length_penalty=lp, eos_token_id=eos
            )
            found.append(len(best.ids) - 3)
    assert sum(lengths[0.0]) < sum(lengths[1.0])
    assert all(a <= b for a, b in zip(lengths[0.0], lengths[1.0], strict=True))


def test_bad_arguments_are_named():
    model = _gpt(11, seed=0)
    one = torch.tensor([[1, 2]])
    cases = [
        (dict(idx=torch.tensor([[1], [2]])), "one prompt"),
        (dict(num_beams=0), "num_beams"),
        (dict(num_return_sequences=5), "cannot exceed num_beams"),
        (dict(length_penalty=float("nan")), "length_penalty"),
        (dict(eos_token_id=11), "eos_token_id"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ]
    for kwargs, message in cases:
        args = {"idx": one, "max_new_tokens": 3, **kwargs}
        with pytest.raises(ValueError, match=message):
            beam_search(model, args.pop("idx"), args.pop("max_new_tokens"), **args)
    assert isinstance(beam_search(model, one, 2)[0], Beam)
    model.train()
    beam_search(model, one, 2)
    assert model.training  # the mode is restored
