"""gptlab.evaluate.multiple_choice: option scores, normalisation, batching, accuracy."""

from __future__ import annotations

import pytest
import torch

import gptlab
from gptlab.evaluate.multiple_choice import (
    MultipleChoiceItem,
    centred_accuracy,
    evaluate_multiple_choice,
    score_options,
)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = gptlab.CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ?:.\n")
    torch.manual_seed(0)
    config = gptlab.GPTConfig(
        n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tok.vocab_size
    )
    return gptlab.GPT(config).eval(), tok


ITEMS = [
    MultipleChoiceItem(
        "question: what is red?\nanswer:", (" a rose", " the sky", " grass is green"), 0, "q1"
    ),
    MultipleChoiceItem("the cat sat on the", (" mat", " moon"), 1, "q2"),
    MultipleChoiceItem("x" * 40, (" y", " zz", " long option here", " q"), 2, "q3"),  # cut context
]


@torch.no_grad()
def hand_score(model, tok, context, option):
    """Sum of log p(option token | everything before it), one prefix at a time."""
    ids = tok.encode(context) + tok.encode(option)
    ids = ids[-(model.config.block_size + 1) :]
    n = len(tok.encode(option))
    total = 0.0
    for j in range(len(ids) - n, len(ids)):
        logits = model(torch.tensor([ids[:j]]))[0][0, -1]
        total += float(torch.log_softmax(logits.double(), -1)[ids[j]])
    return total


def test_scores_match_a_hand_loop(model_and_tokenizer):
    model, tok = model_and_tokenizer
    scores = score_options(model, tok, ITEMS, batch_size=4)
    for item, item_scores in zip(ITEMS, scores, strict=True):
        for option, s in zip(item.options, item_scores, strict=True):
            assert s.logprob == pytest.approx(
                hand_score(model, tok, item.context, option), abs=1e-4
            )
            assert s.tokens == len(option) and s.bytes == len(option.encode())


def test_batching_and_right_padding_do_not_change_any_score(model_and_tokenizer):
    model, tok = model_and_tokenizer
    batched = score_options(model, tok, ITEMS, batch_size=9)  # every row in one padded batch
    alone = score_options(model, tok, ITEMS, batch_size=1)
    for row_b, row_a in zip(batched, alone, strict=True):
        for b, a in zip(row_b, row_a, strict=True):
            assert abs(b.logprob - a.logprob) <= 1e-5


def test_normalisations_rank_by_sum_per_token_and_per_byte(model_and_tokenizer):
    model, tok = model_and_tokenizer
    scores = score_options(model, tok, ITEMS)
    for normalization, key in [
        ("sum", lambda s: s.logprob),
        ("token", lambda s: s.logprob / s.tokens),
        ("byte", lambda s: s.logprob / s.bytes),
    ]:
        result = evaluate_multiple_choice(model, tok, ITEMS, normalization=normalization)
        expected = [max(range(len(r)), key=lambda j, r=r: key(r[j])) for r in scores]
        assert result.predictions == expected
        assert result.correct == [p == it.answer for p, it in zip(expected, ITEMS, strict=True)]
        assert result.accuracy == sum(result.correct) / 3


def test_centred_accuracy():
    assert centred_accuracy(0.25, 4) == 0.0
    assert centred_accuracy(1.0, 4) == 1.0
    assert centred_accuracy(0.625, 4) == pytest.approx(0.5)
    assert centred_accuracy(0.0, 2) == -1.0
    with pytest.raises(ValueError):
        centred_accuracy(0.5, 1)


def test_result_centred_accuracy_uses_the_mean_chance_over_items(model_and_tokenizer):
    model, tok = model_and_tokenizer
    result = evaluate_multiple_choice(model, tok, ITEMS)
    chance = (1 / 3 + 1 / 2 + 1 / 4) / 3
    assert result.chance == pytest.approx(chance)
    assert result.centred_accuracy == pytest.approx((result.accuracy - chance) / (1 - chance))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(context="", options=("a", "b"), answer=0),
        dict(context="c", options=("a",), answer=0),
        dict(context="c", options=("a", "a"), answer=0),
        dict(context="c", options=("a", "b"), answer=2),
        dict(context="c", options="ab", answer=0),
    ],
)
def test_malformed_items_are_refused(kwargs):
    with pytest.raises((TypeError, ValueError)):
        MultipleChoiceItem(**kwargs)


def test_an_option_longer_than_the_block_is_refused(model_and_tokenizer):
    model, tok = model_and_tokenizer
    item = MultipleChoiceItem("ab", ("a" * 40, "b"), 0)
    with pytest.raises(ValueError, match="block_size"):
        score_options(model, tok, [item])
    with pytest.raises(ValueError, match="normalization"):
        evaluate_multiple_choice(model, tok, [item], normalization="length")


def test_choose_options_equals_evaluate_without_scoring_again(model_and_tokenizer):
    from gptlab.evaluate import choose_options

    model, tok = model_and_tokenizer
    scores = score_options(model, tok, ITEMS)
    for normalization in ("sum", "token", "byte"):
        direct = evaluate_multiple_choice(model, tok, ITEMS, normalization=normalization)
        chosen = choose_options(ITEMS, scores, normalization=normalization)
        assert chosen.predictions == direct.predictions and chosen.correct == direct.correct
        assert chosen.chance == direct.chance and chosen.normalization == normalization
    with pytest.raises(ValueError, match="scores for 2 items but 3 items"):
        choose_options(ITEMS, scores[:2])
    with pytest.raises(ValueError, match="item 1 has 2 options"):
        choose_options(ITEMS, [scores[0], scores[1][:1], scores[2]])
    with pytest.raises(ValueError, match="normalization"):
        choose_options(ITEMS, scores, normalization="length")
