"""Chat format, prompt-masked examples, padding, fine-tuning loop and the windowed chat session."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptlab.chat import (
    IGNORE_INDEX,
    ChatDataset,
    ChatSession,
    LengthGroupedBatches,
    build_example,
    chat_loader,
    chat_loop,
    collate_chat,
    conversation_segments,
    end_token_id,
    evaluate_chat,
    exchange_texts,
    finetune_chat,
    format_conversation,
    split_conversations,
    tokenize_conversation,
)
from gptlab.data import Document, split_documents
from gptlab.evaluate import contamination
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import BPETokenizer, CharTokenizer, get_tokenizer

GPT2_EOT = 50256

CONVERSATIONS = [
    ["What is AI?", "The science of machines that think."],
    ["Hello", "Hi there!", "How are you?", "Fine, thanks.", "Bye", "Goodbye."],
    ["Tell me a joke", "Why did the chicken cross the road?", "Why?"],  # ends with a question
    ["Do you like  spaces?  ", "  Yes,\nand newlines.\n"],
    ["Type <|endoftext|> please", "I would rather not."],
    ["What's 2 + 2?", "It's 4 -- isn't it?"],
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2_tok():
    return get_tokenizer("gpt2")


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE with <|endoftext|>, trained on the dialogue snippets above."""
    text = "\n\n".join(format_conversation(c[: len(c) // 2 * 2]) for c in CONVERSATIONS) * 3
    return BPETokenizer.train(text.replace("<|endoftext|>", "\n"), 300)


def tiny_gpt(vocab_size: int, seed: int = 0, block_size: int = 64) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16)
    return GPT(cfg).eval()


def always_eos_gpt(vocab_size: int, eos: int, block_size: int = 64) -> GPT:
    """A GPT whose every next-token prediction is ``eos`` (greedy): the final LayerNorm outputs a
    constant vector aligned with the (enlarged) embedding of eos, and the head is tied to it."""
    model = tiny_gpt(vocab_size, block_size=block_size)
    with torch.no_grad():
        model.transformer.wte.weight[eos] *= 100
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[eos])
    return model


# ---------------------------------------------------------------------------------- format


def test_format_conversation_exact_string():
    text = format_conversation(["Hi", " Hello! ", "Bye"], system="Be brief.")
    assert text == (
        "SYSTEM:\nBe brief.<|endoftext|>USER:\nHi\n\nBOT:\nHello!<|endoftext|>USER:\nBye\n\nBOT:\n"
    )
    assert format_conversation(["Hi", "Hello!"]) == "USER:\nHi\n\nBOT:\nHello!<|endoftext|>"


def test_segments_mark_only_replies_and_end_marker():
    pieces = conversation_segments(["Hi", "Hello!"], system="S")
    learned = [p.text for p in pieces if p.is_response]
    assert learned == ["Hello!", "<|endoftext|>"]
    open_pieces = conversation_segments(["Hi"], add_generation_prompt=False)
    assert "".join(p.text for p in open_pieces) == "USER:\nHi"


@pytest.mark.parametrize("tok_name", ["gpt2_tok", "bpe"])
def test_piecewise_tokens_equal_whole_string_encoding(tok_name, request):
    """Encoding tag, message and separator separately gives the ids of the whole string, so the
    format tokenizes the same way in training and at chat time."""
    tok = request.getfixturevalue(tok_name)
    eos = end_token_id(tok)
    for conv in CONVERSATIONS:
        for system in (None, "You are a helpful chatbot."):
            ids, flags = tokenize_conversation(conv, tok, system)
            text = format_conversation(conv, system)
            if "Type <|endoftext|>" in conv[0]:
                # typed by the user: plain text, never the special id
                assert ids.count(eos) == 1 + (system is not None) and flags[-1]
                continue
            assert ids == tok.encode(text, allowed_special={"<|endoftext|>"})
            assert len(flags) == len(ids)


def test_tags_encode_to_the_same_ids_everywhere(gpt2_tok):
    user_tag = gpt2_tok.encode_ordinary("USER:\n")
    for conv in CONVERSATIONS:
        conv = conv[: len(conv) // 2 * 2]
        ids, _ = tokenize_conversation(conv, gpt2_tok)
        starts = [i for i in range(len(ids)) if ids[i : i + len(user_tag)] == user_tag]
        assert len(starts) == len(conv) // 2


# ---------------------------------------------------------------------------------- masking


def test_masking_exact_positions_single_exchange(gpt2_tok):
    prompt = gpt2_tok.encode_ordinary("USER:\nHi\n\nBOT:\n")
    reply = gpt2_tok.encode_ordinary("Hello!")
    ids = prompt + reply + [GPT2_EOT]
    x, y = build_example(["Hi", "Hello!"], gpt2_tok, block_size=64)
    assert x.tolist() == ids[:-1]
    n = len(prompt)
    # y[t] predicts ids[t + 1]: the first reply token is predicted from the last prompt token
    assert y[: n - 1].tolist() == [IGNORE_INDEX] * (n - 1)
    assert y[n - 1 :].tolist() == reply + [GPT2_EOT]
    x2, y2 = build_example(["Hi", "Hello!"], gpt2_tok, block_size=64, mask_prompt=False)
    assert torch.equal(x2, x) and y2.tolist() == ids[1:]


def test_masking_multi_turn_with_system(gpt2_tok):
    enc = gpt2_tok.encode_ordinary
    parts = [
        (enc("SYSTEM:\nBe kind.") + [GPT2_EOT] + enc("USER:\nHello\n\nBOT:\n"), False),
        (enc("Hi there!") + [GPT2_EOT], True),
        (enc("USER:\nHow are you?\n\nBOT:\n"), False),
        (enc("Fine.") + [GPT2_EOT], True),
    ]
    ids = [t for p, _ in parts for t in p]
    learn = [flag for p, flag in parts for _ in p]
    turns = ["Hello", "Hi there!", "How are you?", "Fine."]
    x, y = build_example(turns, gpt2_tok, block_size=128, system="Be kind.")
    expected = [ids[t + 1] if learn[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    assert x.tolist() == ids[:-1] and y.tolist() == expected
    assert int((y != IGNORE_INDEX).sum()) == sum(learn)


def test_masked_loss_is_cross_entropy_over_reply_tokens_only(bpe):
    model = tiny_gpt(bpe.vocab_size)
    x, y = build_example(CONVERSATIONS[1], bpe, block_size=64)
    logits, loss = model(x[None], y[None])
    keep = y != IGNORE_INDEX
    manual = F.cross_entropy(logits[0][keep], y[keep])
    torch.testing.assert_close(loss, manual)


# ---------------------------------------------------------------------------------- truncation


def test_truncation_drops_oldest_exchanges_and_keeps_system(gpt2_tok):
    turns = [f"question number {i} " * 3 for i in range(6)]
    turns = [t if k % 2 == 0 else f"answer {k}" for k, t in enumerate(turns)]
    full_x, _ = build_example(turns, gpt2_tok, block_size=512, system="SYS")
    for block_size in (30, 40, 60, len(full_x) - 1):
        x, y = build_example(turns, gpt2_tok, block_size=block_size, system="SYS")
        assert len(x) == len(y) <= block_size
        text = gpt2_tok.decode(x.tolist())
        assert text.startswith("SYSTEM:\nSYS<|endoftext|>USER:\n")
        assert "answer 5" in text or len(x) == block_size  # newest exchange kept
        assert (y != IGNORE_INDEX).any()
    x, _ = build_example(turns, gpt2_tok, block_size=len(full_x) - 1, system="SYS")
    assert "question number 0" not in gpt2_tok.decode(x.tolist())  # the oldest went first
    assert "question number 2" in gpt2_tok.decode(x.tolist())


def test_truncation_cuts_a_long_reply_at_the_end(gpt2_tok):
    x, y = build_example(["Hi", "word " * 100], gpt2_tok, block_size=16)
    assert len(x) == len(y) == 16
    prompt = gpt2_tok.encode_ordinary("USER:\nHi\n\nBOT:\n")
    assert x.tolist()[: len(prompt)] == prompt
    assert GPT2_EOT not in y.tolist()  # the end marker was cut off


def test_prompt_that_fills_the_window_is_an_error(gpt2_tok):
    with pytest.raises(ValueError, match="nothing of the reply fits in block_size=8"):
        build_example(["a long question " * 10, "ok"], gpt2_tok, block_size=8)


# ---------------------------------------------------------------------------------- data


def test_dataset_drops_unanswered_message_and_counts(bpe):
    ds = ChatDataset(CONVERSATIONS, bpe, block_size=64)
    assert len(ds) == len(CONVERSATIONS) and ds.n_skipped == 0
    x, _ = ds[2]  # "Tell me a joke": its trailing "Why?" is gone
    assert "Why?" not in bpe.decode(x.tolist())
    assert ds.num_target_tokens() == sum(int((y != IGNORE_INDEX).sum()) for _, y in ds)
    small = ChatDataset([["a long question " * 10, "ok"], ["Hi", "Yo"]], bpe, block_size=12)
    assert len(small) == 1 and small.n_skipped == 1


def test_collate_pads_right_and_padding_does_not_change_logits(bpe):
    ds = ChatDataset(CONVERSATIONS, bpe, block_size=64)
    batch = [ds[0], ds[1]]
    pad = end_token_id(bpe)
    x, y = collate_chat(batch, pad_id=pad)
    T = max(len(b[0]) for b in batch)
    assert x.shape == y.shape == (2, T)
    n0 = len(batch[0][0])
    assert (x[0, n0:] == pad).all() and (y[0, n0:] == IGNORE_INDEX).all()
    model = tiny_gpt(bpe.vocab_size)
    logits, _ = model(x)
    alone, _ = model(batch[0][0][None])
    torch.testing.assert_close(logits[0, :n0], alone[0])  # pads come after: causal mask hides them


def test_loader_is_seeded(bpe):
    ds = ChatDataset(CONVERSATIONS, bpe, block_size=64)
    first = [x.tolist() for x, _ in chat_loader(ds, 2, ds.pad_id, seed=3)]
    again = [x.tolist() for x, _ in chat_loader(ds, 2, ds.pad_id, seed=3)]
    assert first == again


def test_length_grouped_batches_cover_everything_once_and_reduce_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 120, (203,), generator=g).tolist()
    sampler = LengthGroupedBatches(lengths, 16, seed=1)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert len(batches) == len(sampler) == 13
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(203))  # every example exactly once per pass
    assert epochs[0] != epochs[1]  # a new order every pass
    assert list(LengthGroupedBatches(lengths, 16, seed=1)) == epochs[0]  # seeded

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    perm = torch.randperm(203, generator=g).tolist()
    random_batches = [perm[i : i + 16] for i in range(0, 203, 16)]
    assert padded(epochs[0]) < 0.75 * padded(random_batches)


def test_evaluate_chat_weights_every_token_equally(bpe):
    ds = ChatDataset(CONVERSATIONS, bpe, block_size=64)
    model = tiny_gpt(bpe.vocab_size)
    total, count = 0.0, 0
    for x, y in ds:
        with torch.no_grad():
            logits, _ = model(x[None])
        total += float(F.cross_entropy(logits[0], y, ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((y != IGNORE_INDEX).sum())
    assert evaluate_chat(model, ds, batch_size=4) == pytest.approx(total / count, rel=1e-5)


def test_finetune_chat_lowers_the_reply_loss(bpe):
    ds = ChatDataset(CONVERSATIONS, bpe, block_size=64)
    model = tiny_gpt(bpe.vocab_size)
    history = finetune_chat(model, ds, ds, steps=30, batch_size=6, lr=1e-2, log_interval=0)
    assert len(history.train_loss) == 30 and history.eval_steps == [0, 30]
    assert history.val_loss[-1] < history.val_loss[0] - 0.5
    model2 = tiny_gpt(bpe.vocab_size)
    history2 = finetune_chat(model2, ds, ds, steps=30, batch_size=6, lr=1e-2, log_interval=0)
    assert history2.train_loss == history.train_loss  # seeded batches, same result


# ---------------------------------------------------------------------------------- session


def test_session_stops_at_end_marker_and_records_exact_ids(bpe):
    eos = end_token_id(bpe)
    session = ChatSession(always_eos_gpt(bpe.vocab_size, eos), bpe, max_new_tokens=8)
    assert session.send("Hello") == ""
    (exchange,) = session.history
    assert exchange.ids == tokenize_conversation(["Hello"], bpe)[0] + [eos]


def test_session_reply_without_end_marker_is_closed(bpe):
    eos = end_token_id(bpe)
    model = tiny_gpt(bpe.vocab_size)
    session = ChatSession(model, bpe, max_new_tokens=5)
    reply = session.send("Hello")
    ids = session.history[0].ids
    assert ids[-1] == eos
    user_ids = tokenize_conversation(["Hello"], bpe)[0]
    new = ids[len(user_ids) : -1]
    assert len(new) <= 5 and bpe.decode(new).strip() == reply


def test_session_trims_oldest_first_keeps_system_and_fits(bpe):
    eos = end_token_id(bpe)
    block, new_tokens = 64, 8
    model = always_eos_gpt(bpe.vocab_size, eos, block_size=block)
    session = ChatSession(model, bpe, system="Be kind.", max_new_tokens=new_tokens)
    system_ids, _ = tokenize_conversation(["x"], bpe, "Be kind.")
    system_ids = system_ids[: -len(tokenize_conversation(["x"], bpe)[0])]
    messages = [f"message {i} here" for i in range(8)]
    for i, message in enumerate(messages):
        prompt = session.prompt_ids(message)
        assert len(prompt) + new_tokens <= block
        assert prompt[: len(system_ids)] == system_ids  # the system prompt always stays
        kept = len(session.history) - session.dropped
        # the kept exchanges are the newest ones, in order, right after the system prompt
        middle = [t for ex in session.history[session.dropped :] for t in ex.ids]
        assert prompt == system_ids + middle + tokenize_conversation([message], bpe)[0]
        # and one more exchange would not have fitted
        if session.dropped:
            older = session.history[session.dropped - 1].ids
            assert len(prompt) + len(older) > session.prompt_budget
        assert kept <= i
        session.send(message)
    assert session.dropped > 0
    assert "message 0" in session.transcript()  # the transcript keeps everything


def test_chat_loop_scripted(bpe):
    eos = end_token_id(bpe)
    session = ChatSession(always_eos_gpt(bpe.vocab_size, eos), bpe, max_new_tokens=4)
    lines = iter(["Hi", "  ", "How are you?", "quit", "never read"])
    out: list[str] = []
    n = chat_loop(session, read=lambda _: next(lines), write=out.append)
    assert n == 2 and out == ["bot> ", "bot> "] and len(session.history) == 2
    session.reset()
    assert session.history == [] and session.dropped == 0


# ---------------------------------------------------------------------------------- errors


def test_bad_turns(gpt2_tok):
    with pytest.raises(TypeError, match="wrap it"):
        format_conversation("Hello")
    with pytest.raises(ValueError, match="at least one user message"):
        format_conversation([])
    with pytest.raises(ValueError, match=r"turn 1 \(bot\) is empty"):
        format_conversation(["Hi", "   "])
    with pytest.raises(TypeError, match=r"turn 0 \(user\) must be a string"):
        format_conversation([3, "x"])
    with pytest.raises(ValueError, match=r"drop the last turn \(turns\[:-1\]\)"):
        build_example(["Hi", "Hello", "Bye"], gpt2_tok, 64)
    with pytest.raises(ValueError, match="pass None for no system prompt"):
        format_conversation(["Hi"], system=" ")
    with pytest.raises(ValueError, match="block_size must be >= 2"):
        build_example(["Hi", "Hello"], gpt2_tok, 1)
    with pytest.raises(TypeError, match="mask_prompt must be True or False"):
        build_example(["Hi", "Hello"], gpt2_tok, 64, mask_prompt="yes")


def test_tokenizer_without_end_marker_is_rejected():
    with pytest.raises(TypeError, match="does not have"):
        build_example(["Hi", "Hello"], CharTokenizer.from_text("HiHelo"), 64)


def test_bad_session_inputs(bpe):
    eos = end_token_id(bpe)
    model = always_eos_gpt(bpe.vocab_size, eos, block_size=32)
    with pytest.raises(ValueError, match="leave no room for a message"):
        ChatSession(model, bpe, system="Be kind. " * 20, max_new_tokens=8)
    session = ChatSession(model, bpe, max_new_tokens=8)
    with pytest.raises(ValueError, match="message is empty"):
        session.send("  ")
    with pytest.raises(ValueError, match="shorten the message or lower max_new_tokens"):
        session.send("a very long message " * 10)
    with pytest.raises(TypeError, match="must be a gptlab GPT"):
        ChatSession(torch.nn.Linear(2, 2), bpe)
    with pytest.raises(TypeError, match="must be a ChatSession"):
        chat_loop("not a session")


def test_bad_finetune_inputs(bpe):
    ds = ChatDataset(CONVERSATIONS, bpe, block_size=64)
    model = tiny_gpt(bpe.vocab_size, block_size=32)
    with pytest.raises(ValueError, match="build the dataset with block_size <= 32"):
        finetune_chat(model, ds, steps=1)
    with pytest.raises(TypeError, match="must be a ChatDataset"):
        finetune_chat(model, [(1, 2)], steps=1)
    with pytest.raises(ValueError, match="warmup_steps"):
        finetune_chat(tiny_gpt(bpe.vocab_size), ds, steps=2, warmup_steps=5)
    with pytest.raises(ValueError, match="empty batch"):
        collate_chat([], pad_id=0)
    with pytest.raises(TypeError, match="must be a list of turns"):
        ChatDataset(["just a string"], bpe, 64)


# --- splitting conversations without leaks ----------------------------------------------------


def _doc(topic: str, *turns: str) -> Document:
    return Document(f"{topic}: {turns[0]}", topic, "\n".join(turns) + "\n", turns)


JOKE = "What do you get when you cross a cow and a"
SPLIT_DOCS = [
    _doc("misc", "What is AI?", "The science of machines that think."),  # 0
    _doc("misc", "what is   AI", "the science of machines that think"),  # 1: copy of 0
    _doc("misc", "What is AI?", "A field of computer science."),  # 2: 0's prompt
    _doc("misc", "Tell me a joke", f"{JOKE} trampoline? A milkshake."),  # 3
    _doc("misc", "Another one", f"{JOKE} duck? Milk and quackers."),  # 4: an 8-gram of 3's
] + [_doc("misc", f"Question {k}?", f"Answer {k}.") for k in range(15)]


def test_exchange_texts_pairs_answered_messages_only():
    assert exchange_texts(["Hi ", "Hello", "Bye?"]) == ["Hi\nHello"]
    assert exchange_texts(["a", "b", "c", "d"]) == ["a\nb", "c\nd"]
    with pytest.raises(TypeError, match="got one string"):
        exchange_texts("Hi")


def test_split_conversations_dedups_and_keeps_related_conversations_together():
    """A plain random split separates a prompt's two answers (and near-copies) for some seed."""
    order = {id(d): i for i, d in enumerate(SPLIT_DOCS)}

    def position(doc: Document) -> int:
        return order[id(doc)]

    together_held = 0
    for seed in range(20):
        train, held = split_conversations(SPLIT_DOCS, 0.25, seed=seed)
        assert SPLIT_DOCS[1] not in train + held  # the normalised copy is dropped
        assert sorted(train + held, key=position) == [d for i, d in enumerate(SPLIT_DOCS) if i != 1]
        assert train == sorted(train, key=position) and held == sorted(held, key=position)
        assert len(held) <= 5  # round(0.25 * 19 distinct)
        for a, b in ((0, 2), (3, 4)):
            assert (SPLIT_DOCS[a] in held) == (SPLIT_DOCS[b] in held)
            together_held += SPLIT_DOCS[a] in held
        sides = [[t for d in side for t in exchange_texts(d.turns)] for side in (train, held)]
        assert contamination.check_split(*sides).clean
    assert together_held > 0  # the groups were held out too, always whole
    separated = 0
    for seed in range(20):  # what the old split did with the same documents
        train, held = split_documents(SPLIT_DOCS, 0.25, seed=seed)
        separated += (SPLIT_DOCS[0] in held) != (SPLIT_DOCS[2] in held)
    assert separated > 0


def test_split_conversations_is_seeded():
    a = split_conversations(SPLIT_DOCS, 0.25, seed=3)
    assert split_conversations(SPLIT_DOCS, 0.25, seed=3) == a
    assert any(split_conversations(SPLIT_DOCS, 0.25, seed=s) != a for s in range(4, 8))


def test_split_by_topic_holds_out_whole_topics():
    docs = [
        _doc(f"t{t}", f"Topic {t} question {k}?", f"Reply {t}.{k}")
        for t in range(5)
        for k in range(4)
    ]
    docs.append(_doc("t4", "Topic 0 question 0?", "Another reply."))  # links t4 to t0
    for seed in range(10):
        train, held = split_conversations(docs, 0.25, seed=seed, by="topic")
        held_topics = {d.genre for d in held}
        assert held_topics and not held_topics & {d.genre for d in train}
        assert held_topics in ({"t1"}, {"t2"}, {"t3"})  # t0 + t4 (9) is too big for 5
        assert len(held) == 4


def test_split_conversations_runs_the_contamination_check(monkeypatch):
    seen = {}

    def refuse(train, heldout, n=8, max_fraction=0.0):
        seen.update(train=train, heldout=heldout, n=n)
        raise contamination.ContaminationError("leak", contamination.find_overlap(train, heldout))

    monkeypatch.setattr(contamination, "check_split", refuse)
    with pytest.raises(contamination.ContaminationError, match="leak"):
        split_conversations(SPLIT_DOCS, 0.25, seed=0, n=5)
    assert seen["n"] == 5 and len(seen["train"]) + len(seen["heldout"]) == 19
    assert all("\n" in text for text in seen["train"] + seen["heldout"])


def test_bad_split_inputs():
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        split_conversations(SPLIT_DOCS, 0.0)
    with pytest.raises(TypeError, match="val_fraction must be a number"):
        split_conversations(SPLIT_DOCS, "0.1")
    with pytest.raises(TypeError, match="seed must be an int"):
        split_conversations(SPLIT_DOCS, 0.1, seed=1.0)
    with pytest.raises(ValueError, match="by must be 'conversation' or 'topic'"):
        split_conversations(SPLIT_DOCS, by="random")
    with pytest.raises(ValueError, match="n must be >= 1"):
        split_conversations(SPLIT_DOCS, n=0)
    with pytest.raises(TypeError, match="list of dialogue documents"):
        split_conversations("chatterbot")
    with pytest.raises(TypeError, match=r"documents\[0\] must be a gptlab.data.Document"):
        split_conversations([["Hi", "Hello"], ["Bye", "Bye"]])
    with pytest.raises(ValueError, match="at least 2 conversations"):
        split_conversations(SPLIT_DOCS[:1])
    one_group = [_doc("misc", "Hi", "Hello"), _doc("misc", "hi!", "Hey")]
    with pytest.raises(ValueError, match="leaves one side empty"):
        split_conversations(one_group, 0.5)


# ChatML (SmolLM2's template) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatml_tok() -> BPETokenizer:
    text = " ".join(" ".join(t) for t in CONVERSATIONS) + " system user assistant\n" * 20
    return BPETokenizer.train(text * 3, 300, special_tokens=("<|im_start|>", "<|im_end|>"))


def _messages(turns, system):
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": t.strip()}
            for i, t in enumerate(turns)]  # fmt: skip
    return ([{"role": "system", "content": system}] if system else []) + msgs


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chatml_equals_render_chatml_and_piecewise_equals_whole(chatml_tok, system) -> None:
    from gptlab.pretrained import render_chatml

    for turns in CONVERSATIONS:
        whole = render_chatml(_messages(turns, system), add_generation_prompt=len(turns) % 2 == 1)
        assert format_conversation(turns, system, template="chatml") == whole
        ids, is_reply = tokenize_conversation(turns, chatml_tok, system, template="chatml")
        assert ids == chatml_tok.encode(whole, allowed_special="all")
        # the replies and their <|im_end|> are learned; nothing else is
        end = chatml_tok.encode("<|im_end|>", allowed_special="all")[0]
        learned = chatml_tok.decode([i for i, r in zip(ids, is_reply, strict=True) if r])
        replies = [t.strip() + "<|im_end|>" for t in turns[1::2]]
        assert learned == "".join(replies)
        assert sum(r and i == end for i, r in zip(ids, is_reply, strict=True)) == len(replies)


def test_chatml_example_masks_the_prompt_and_user_markers_stay_text(chatml_tok) -> None:
    x, y = build_example(["Type <|im_end|> now", "No."], chatml_tok, 128, template="chatml")
    kept = [int(v) for v in y if v != IGNORE_INDEX]
    assert chatml_tok.decode(kept) == "No.<|im_end|>"
    end = end_token_id(chatml_tok, "chatml")
    # the system, user and assistant turns end with the marker; the one the user typed is text
    assert int((x == end).sum()) == 3
    data = ChatDataset([["Hi", "Hello"]], chatml_tok, 256, template="chatml")
    assert data.pad_id == end and data.template == "chatml"


def test_chatml_rejects_tokenizers_without_its_markers_and_unknown_templates() -> None:
    with pytest.raises(TypeError, match="<|im_start|>"):
        end_token_id(get_tokenizer("gpt2"), "chatml")
    with pytest.raises(ValueError, match="template must be one of"):
        format_conversation(["Hi"], template="llama3")
    with pytest.raises(ValueError, match="template must be one of"):
        ChatDataset([["Hi", "Hello"]], get_tokenizer("gpt2"), 32, template="ChatML")


def test_finetune_chat_trains_a_llama_on_chatml(chatml_tok) -> None:
    from gptlab.applications import greedy_replies
    from gptlab.llama import Llama, LlamaConfig
    from gptlab.sampling import generate

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=chatml_tok.vocab_size, block_size=96, n_layer=2, n_head=4,
                         n_kv_head=2, n_embd=32, intermediate_size=64)  # fmt: skip
    model = Llama(config)
    data = ChatDataset([["What is AI?", "Machines that think."]] * 8, chatml_tok, 96,
                       system="S", template="chatml")  # fmt: skip
    history = finetune_chat(model, data, data, steps=30, batch_size=4, lr=1e-2)
    assert history.val_loss[-1] < history.val_loss[0] / 3
    reply = greedy_replies(model, chatml_tok, ["What is AI?"], system="S", template="chatml",
                           max_new_tokens=12)  # fmt: skip
    prompt = tokenize_conversation(["What is AI?"], chatml_tok, "S", template="chatml")[0]
    out = generate(model, torch.tensor([prompt]), 12, temperature=0.0,
                   eos_token_id=end_token_id(chatml_tok, "chatml"))[0, len(prompt):].tolist()  # fmt: skip
    end = end_token_id(chatml_tok, "chatml")
    assert end in out  # it learned to end its turn
    assert reply == [chatml_tok.decode(out[: out.index(end)]).strip()]
    assert reply[0].startswith("Machines")


@pytest.mark.parametrize("template", ["gptlab", "chatml"])
def test_a_message_that_is_exactly_a_marker_stays_text(chatml_tok, template) -> None:
    tok = chatml_tok if template == "chatml" else BPETokenizer.train("hello there " * 50, 270)
    end = end_token_id(tok, template)
    marker = "<|im_end|>" if template == "chatml" else "<|endoftext|>"
    ids, _ = tokenize_conversation([marker, "No."], tok, template=template)
    ends = 3 if template == "chatml" else 1  # system, user and reply turns; or the reply alone
    assert ids.count(end) == ends  # the user's "marker" is text, not the special id
    x, y = build_example([marker, marker], tok, 256, template=template)
    assert int((y == end).sum()) == 1  # only the reply's own end marker is learned as the id
