"""Logits processors: fixed token sets, line length (character and byte-level BPE), acrostics.

The sampling loops here are hand-written (model.next_token_logits + apply_processors + argmax or
multinomial) so they test the processors alone; every generated poem must pass the line,
character and punctuation rules of gptlab.poetry.check_poem.
"""

from __future__ import annotations

import pytest
import torch

import gptlab
from gptlab.constraints import (
    AcrosticProcessor,
    AllowedTokensProcessor,
    BanTokensProcessor,
    ConstraintViolation,
    LineLengthProcessor,
    apply_processors,
    is_han,
)
from gptlab.poetry import check_poem

POEMS = (
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n\n"
    "白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n\n"
    "春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n\n"
    "远上寒山石径斜，白云生处有人家。\n停车坐爱枫林晚，霜叶红于二月花。\n"
)
SHAPE_RULES = ("lines", "chars", "punctuation")


@pytest.fixture(scope="module")
def char_tok() -> gptlab.CharTokenizer:
    return gptlab.CharTokenizer.from_text(POEMS)


@pytest.fixture(scope="module")
def bpe_tok() -> gptlab.BPETokenizer:
    return gptlab.BPETokenizer.train(POEMS * 4, 300)


def tiny_model(vocab_size: int) -> gptlab.GPT:
    torch.manual_seed(0)
    config = gptlab.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, vocab_size=vocab_size)
    return gptlab.GPT(config).eval()


@torch.no_grad()
def sample(model, prompt, processors, steps, temperature, seed=0):
    """Greedy (temperature 0) or multinomial sampling with the processors applied first."""
    generator = torch.Generator().manual_seed(seed)
    ids = prompt
    for _ in range(steps):
        logits = model.next_token_logits(ids[:, -model.config.block_size :])
        logits = apply_processors(processors, ids, logits)
        if temperature == 0:
            token = logits.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(logits / temperature, -1)
            token = torch.multinomial(probs, 1, generator=generator)
        ids = torch.cat([ids, token], dim=1)
    return ids


def passes_shape(text: str) -> bool:
    report = check_poem(text)
    return all(report.checks[rule] for rule in SHAPE_RULES)


# --------------------------------------------------------------------------------------------
# Character tokenizer with a tiny random GPT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0, 2.0])
@pytest.mark.parametrize(("line_length", "n_lines"), [(5, 4), (7, 8)])
def test_char_poems_have_the_form(char_tok, temperature, line_length, n_lines):
    newline = char_tok.encode("\n")[0]
    model = tiny_model(char_tok.vocab_size)
    prompt = torch.tensor([[newline]] * 3)
    proc = LineLengthProcessor(char_tok, line_length, n_lines, prompt_len=1, eos_token_id=newline)
    steps = n_lines * (line_length + 1) + 3  # the poem, then padding the rule fills with eos
    out = sample(model, prompt, [proc], steps, temperature)
    for row in out[:, 1:].tolist():
        text = char_tok.decode(row)
        poem, _, tail = text.partition("\n")
        assert set(tail) <= {"\n"}, text  # after the poem: only end-of-text
        report = check_poem(poem)
        assert all(report.checks[r] for r in SHAPE_RULES), (text, report.problems)
        assert len(report.lines) == n_lines and {len(x) for x in report.lines} == {line_length}


def test_unconstrained_tiny_model_breaks_the_form(char_tok):
    """Control: without the processor the random model does not write poems, so the test above
    measures the processor, not luck."""
    model = tiny_model(char_tok.vocab_size)
    prompt = torch.tensor([[char_tok.encode("\n")[0]]] * 3)
    out = sample(model, prompt, [], 24, 1.0)
    assert not any(passes_shape(char_tok.decode(r[1:])) for r in out.tolist())


def test_acrostic_lines_start_with_the_heads(char_tok):
    newline = char_tok.encode("\n")[0]
    model = tiny_model(char_tok.vocab_size)
    prompt = torch.tensor([[newline]] * 2)
    heads = "春花明月"
    procs = [
        LineLengthProcessor(char_tok, 5, 4, prompt_len=1, eos_token_id=newline),
        AcrosticProcessor(char_tok, heads, prompt_len=1),
    ]
    for temperature in (0.0, 1.0):
        out = sample(model, prompt, procs, 4 * 6, temperature)
        for row in out[:, 1:].tolist():
            report = check_poem(char_tok.decode(row))
            assert [line[0] for line in report.lines] == list(heads)
            assert all(report.checks[r] for r in SHAPE_RULES), report.problems


def test_line_ends_may_span_several_tokens(char_tok):
    """An ending such as '。\\n' is forced one token at a time."""
    newline = char_tok.encode("\n")[0]
    model = tiny_model(char_tok.vocab_size)
    proc = LineLengthProcessor(char_tok, 5, 4, ("，", "。\n"), prompt_len=1, eos_token_id=newline)
    out = sample(model, torch.tensor([[newline]]), [proc], 27, 1.0)
    text = char_tok.decode(out[0, 1:].tolist())
    assert text.count("。\n") == 2 and text.endswith("。\n\n")
    assert passes_shape(text)


# --------------------------------------------------------------------------------------------
# Byte-level BPE: tokens of several characters and tokens holding part of one
# --------------------------------------------------------------------------------------------


def test_bpe_vocabulary_exercises_multichar_and_partial_tokens(bpe_tok):
    """The BPE tests below only mean something if the vocabulary has both kinds of token."""
    pieces = [bpe_tok.decode_bytes([i]) for i in range(bpe_tok.vocab_size - 1)]
    texts = [p.decode("utf-8", "ignore") for p in pieces]
    assert any(len(t) >= 2 and all(map(is_han, t)) for t in texts)  # e.g. '明月'
    assert any(p[0] >= 0xE0 and len(p) < 3 for p in pieces)  # the start of a character


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bpe_poems_have_the_form(bpe_tok, temperature):
    eot = bpe_tok.special_tokens["<|endoftext|>"]
    model = tiny_model(bpe_tok.vocab_size)
    proc = LineLengthProcessor(bpe_tok, 5, 4, prompt_len=1)
    out = sample(model, torch.full((4, 1), eot), [proc], 4 * 6 * 3 + 2, temperature)
    for row in out[:, 1:].tolist():
        assert eot in row, "the poem did not finish"
        end = row.index(eot)
        assert set(row[end:]) == {eot}  # padding after the poem is end-of-text again
        text = bpe_tok.decode(row[:end])
        assert passes_shape(text), (text, check_poem(text).problems)


def test_bpe_token_that_would_overshoot_the_line_is_forbidden(bpe_tok):
    proc = LineLengthProcessor(bpe_tok, 5, 4, prompt_len=0)
    ids = torch.tensor([bpe_tok.encode("床前明月")])  # four characters: one left
    allowed = torch.isfinite(proc(ids, torch.zeros(1, bpe_tok.vocab_size)))[0].tolist()
    for i in range(bpe_tok.vocab_size - 1):
        text = bpe_tok.decode_bytes([i]).decode("utf-8", "ignore")
        if len(text) >= 2 and all(map(is_han, text)):
            assert not allowed[i], text  # two characters do not fit in one
        if text in ("，", "。", "\n"):
            assert not allowed[i], text  # the line is not finished
    for i in (i for i, ok in enumerate(allowed) if ok):  # one character, or its start
        piece = bpe_tok.decode_bytes([i])
        text = piece.decode("utf-8", "ignore")
        assert (len(text) == 1 and is_han(text)) or (not text and piece[0] >= 0xE0), piece
    assert any(allowed)


def test_gpt2_tokenizer_handles_characters_split_over_tokens():
    """GPT-2's byte-level BPE (here the tiktoken encoding) splits most Chinese characters into
    two tokens."""
    tok = gptlab.get_tokenizer("gpt2")
    proc = LineLengthProcessor(tok, 5, 2, prompt_len=0)
    acrostic = AcrosticProcessor(tok, "春秋", prompt_len=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(40):
        logits = torch.randn(2, tok.n_vocab, generator=generator)
        logits = apply_processors([proc, acrostic], ids, logits)
        token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
        ids = torch.cat([ids, token], dim=1)
    eot = tok.eot_token
    for row in ids.tolist():
        assert eot in row
        text = tok.decode(row[: row.index(eot)])
        lines = text.replace("，", "。").split("。")[:-1]
        assert text.endswith("。") and len(lines) == 2, text
        assert all(len(x) == 5 and all(map(is_han, x)) for x in lines), text
        assert [x[0] for x in lines] == ["春", "秋"]


# --------------------------------------------------------------------------------------------
# What the line-length rule allows at each point
# --------------------------------------------------------------------------------------------


def allowed_text(tok, proc, generated: str) -> set[str]:
    ids = (
        torch.tensor([tok.encode(generated)]) if generated else torch.zeros(1, 0, dtype=torch.long)
    )
    mask = torch.isfinite(proc(ids, torch.zeros(1, tok.vocab_size)))[0]
    return {tok.decode([i]) for i in mask.nonzero().flatten().tolist()}


def test_line_length_forces_punctuation_and_end(char_tok):
    newline = char_tok.encode("\n")[0]
    proc = LineLengthProcessor(char_tok, 5, 2, prompt_len=0, eos_token_id=newline)
    inside = allowed_text(char_tok, proc, "床前")
    assert inside and all(is_han(c) for c in inside)  # no punctuation, no newline
    assert allowed_text(char_tok, proc, "床前明月光") == {"，"}
    assert allowed_text(char_tok, proc, "床前明月光，疑是地上霜") == {"。"}
    assert allowed_text(char_tok, proc, "床前明月光，疑是地上霜。") == {"\n"}
    assert allowed_text(char_tok, proc, "床前明月光，疑是地上霜。\n\n") == {"\n"}  # padding


def test_line_length_refuses_text_it_would_not_have_allowed(char_tok):
    newline = char_tok.encode("\n")[0]
    proc = LineLengthProcessor(char_tok, 5, 2, prompt_len=0, eos_token_id=newline)
    with pytest.raises(ConstraintViolation, match="not a Han character"):
        allowed_text(char_tok, proc, "床前，")
    with pytest.raises(ConstraintViolation, match="does not end with"):
        allowed_text(char_tok, proc, "床前明月光。")
    with pytest.raises(ConstraintViolation, match="follows the end"):
        allowed_text(char_tok, proc, "床前明月光，疑是地上霜。\n床")


def test_prompt_is_not_constrained(char_tok):
    newline = char_tok.encode("\n")[0]
    proc = LineLengthProcessor(char_tok, 5, 1, prompt_len=3, eos_token_id=newline)
    assert allowed_text(char_tok, proc, "。\n，床前明月光") == {"，"}


def test_line_length_validates_its_arguments(char_tok, bpe_tok):
    with pytest.raises(ValueError, match="eos_token_id"):
        LineLengthProcessor(char_tok, 5, 4, prompt_len=0)  # a CharTokenizer has no <|endoftext|>
    with pytest.raises(TypeError, match="tuple of strings"):
        LineLengthProcessor(bpe_tok, 5, 4, "，。", prompt_len=0)
    with pytest.raises(ValueError, match="Han character"):
        LineLengthProcessor(bpe_tok, 5, 4, ("，", "月"), prompt_len=0)
    with pytest.raises(ValueError, match="line_length"):
        LineLengthProcessor(bpe_tok, 0, 4, prompt_len=0)
    with pytest.raises(ValueError, match="holds a Han character"):
        LineLengthProcessor(char_tok, 5, 4, prompt_len=0, eos_token_id=char_tok.encode("月")[0])
    with pytest.raises(ValueError, match="line ending"):
        LineLengthProcessor(
            char_tok, 5, 4, ("；", "。"), prompt_len=0, eos_token_id=char_tok.encode("\n")[0]
        )
    proc = LineLengthProcessor(bpe_tok, 5, 4, prompt_len=2)
    with pytest.raises(ValueError, match="fewer than prompt_len"):
        proc(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, bpe_tok.vocab_size))


def test_acrostic_validates_heads(char_tok):
    with pytest.raises(ValueError, match="can start heads"):
        AcrosticProcessor(char_tok, "春龙", prompt_len=0)  # 龙 is not in the vocabulary
    with pytest.raises(ValueError, match="line-break"):
        AcrosticProcessor(char_tok, ["春", "，"], prompt_len=0)
    with pytest.raises(ValueError, match="non-empty"):
        AcrosticProcessor(char_tok, "", prompt_len=0)


def test_acrostic_stops_constraining_after_the_last_head(char_tok):
    proc = AcrosticProcessor(char_tok, "春", prompt_len=0)
    assert allowed_text(char_tok, proc, "") == {"春"}
    assert len(allowed_text(char_tok, proc, "春眠")) == char_tok.vocab_size


# --------------------------------------------------------------------------------------------
# Fixed sets and apply_processors
# --------------------------------------------------------------------------------------------


def test_ban_and_allow_processors():
    ids = torch.zeros(2, 3, dtype=torch.long)
    logits = torch.arange(12, dtype=torch.float32).reshape(2, 6)
    banned = BanTokensProcessor([5, 1])(ids, logits)
    assert torch.isinf(banned[:, [1, 5]]).all() and torch.equal(
        banned[:, [0, 2, 3, 4]], logits[:, [0, 2, 3, 4]]
    )
    kept = AllowedTokensProcessor([2])(ids, logits)
    assert kept.argmax(-1).tolist() == [2, 2] and torch.isfinite(kept).sum() == 2
    assert torch.equal(logits, torch.arange(12, dtype=torch.float32).reshape(2, 6))  # not in place
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        BanTokensProcessor([6])(ids, logits)
    with pytest.raises(ValueError, match="empty"):
        AllowedTokensProcessor([])
    with pytest.raises(ValueError, match="non-negative"):
        BanTokensProcessor([-1])


def test_apply_processors_reports_contradicting_rules():
    ids = torch.zeros(1, 1, dtype=torch.long)
    logits = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="no allowed token for rows \\[0\\]"):
        apply_processors([AllowedTokensProcessor([2]), BanTokensProcessor([2])], ids, logits)
    with pytest.raises(TypeError, match="list of callables"):
        apply_processors(BanTokensProcessor([1]), ids, logits)
    with pytest.raises(ValueError, match="same batch"):
        apply_processors([], torch.zeros(2, 1, dtype=torch.long), logits)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        apply_processors([lambda i, x: x[:, :2]], ids, logits)
    assert torch.equal(apply_processors([], ids, logits), logits)


def test_is_han():
    assert is_han("月") and is_han("\U00020000")
    assert not any(map(is_han, "，。a1 \n"))
    with pytest.raises(ValueError):
        is_han("明月")


def test_generate_and_stream_apply_processors_like_the_hand_loop(char_tok):
    """The hook in gptlab.generate/stream: the same tokens as applying the processors by hand."""
    newline = char_tok.encode("\n")[0]
    model = tiny_model(char_tok.vocab_size)
    prompt = torch.tensor([[newline]] * 2)
    proc = LineLengthProcessor(char_tok, 5, 4, prompt_len=1, eos_token_id=newline)
    steps = 4 * 6
    by_hand = sample(model, prompt, [proc], steps, 0.0)
    out = gptlab.generate(model, prompt, steps, temperature=0, logits_processors=[proc])
    assert torch.equal(out, by_hand[:, : out.shape[1]])
    assert all(passes_shape(char_tok.decode(r[1:]).partition("\n")[0]) for r in out.tolist())
    streamed = list(
        gptlab.stream(model, prompt[:1], steps, temperature=0, logits_processors=[proc])
    )
    assert streamed == out[0, 1 : 1 + len(streamed)].tolist()
    with pytest.raises(TypeError, match="wrap a single processor in a list"):
        gptlab.generate(model, prompt, 2, logits_processors=proc)
    with pytest.raises(TypeError, match=r"logits_processors\[0\] is not callable"):
        gptlab.stream(model, prompt[:1], 2, logits_processors=[42])
