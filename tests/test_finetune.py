"""Sequence classification on a GPT: head, last-token pooling with padding, freezing, data, metrics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptlab.data import Document
from gptlab.finetune import (
    ClassifierHistory,
    GPTClassifier,
    PassageDataset,
    accuracy,
    build_genre_datasets,
    check_disjoint,
    confusion_matrix,
    count_parameters,
    final_hidden_states,
    freeze,
    majority_baseline,
    make_passages,
    pad_batch,
    passage_loader,
    pool_last_token,
    predict,
    train_classifier,
)
from gptlab.model import GPT, GPTConfig

VOCAB = 256  # the byte tokenizer below


pytestmark = pytest.mark.usefixtures("one_thread")


class ByteTokenizer:
    """One token per UTF-8 byte: enough to cut passages without a trained tokenizer."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def tiny_gpt(seed: int = 0, n_layer: int = 3) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=n_layer, n_head=2, n_embd=16)
    return GPT(cfg)


def play(title: str, genre: str, lines: int = 200) -> Document:
    text = "".join(f"{title.upper()}:\nline {i} of {title}, a {genre}\n\n" for i in range(lines))
    return Document(title, genre, text)


DOCS = [play(f"{g.title()} {i}", g) for g in ("comedy", "history", "tragedy") for i in range(5)]


# --------------------------------------------------------------------------- hidden states, head


def test_final_hidden_states_is_what_forward_feeds_the_lm_head():
    gpt = tiny_gpt()
    idx = torch.randint(0, VOCAB, (2, 11))
    hidden = final_hidden_states(gpt, idx)
    assert hidden.shape == (2, 11, 16)
    torch.testing.assert_close(gpt.lm_head(hidden), gpt(idx)[0])


def test_head_maps_n_embd_to_n_classes():
    clf = GPTClassifier(tiny_gpt(), 5)
    assert clf.head.weight.shape == (5, 16) and clf.head.bias.shape == (5,)
    logits = clf(torch.randint(0, VOCAB, (4, 7)))
    assert logits.shape == (4, 5)
    # the head adds n_embd * n_classes + n_classes parameters and nothing else
    assert count_parameters(clf) == count_parameters(clf.gpt) + 16 * 5 + 5


def test_head_init_is_seeded_and_independent_of_global_rng():
    a = GPTClassifier(tiny_gpt(), 3, seed=1)
    torch.manual_seed(123)
    b = GPTClassifier(tiny_gpt(), 3, seed=1)
    c = GPTClassifier(tiny_gpt(), 3, seed=2)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.all(a.head.bias == 0)
    assert 0.01 < a.head.weight.std().item() < 0.04  # GPT-2's N(0, 0.02)


# --------------------------------------------------------------------------- padding and pooling


def test_pad_batch_pads_on_the_right_and_reports_lengths():
    idx, lengths = pad_batch([[5, 6, 7], [8], torch.tensor([1, 2])], pad_id=9)
    assert idx.tolist() == [[5, 6, 7], [8, 9, 9], [1, 2, 9]]
    assert lengths.tolist() == [3, 1, 2]
    assert idx.dtype == torch.long


def test_pool_last_token_picks_position_length_minus_one():
    B, T, C = 3, 5, 2
    hidden = torch.arange(B * T, dtype=torch.float).repeat_interleave(C).view(B, T, C)
    pooled = pool_last_token(hidden, torch.tensor([5, 1, 3]))
    # entry (b, t) holds b * T + t in every channel
    assert pooled[:, 0].tolist() == [0 * T + 4, 1 * T + 0, 2 * T + 2]
    assert torch.equal(pool_last_token(hidden), hidden[:, -1])


def test_padded_batch_gives_each_passage_its_unpadded_logits():
    clf = GPTClassifier(tiny_gpt(), 3).eval()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (9, 4, 1, 6)]
    for pad_id in (0, 255):  # the pad's value cannot matter: no real token attends to it
        idx, lengths = pad_batch(seqs, pad_id=pad_id)
        batched = clf(idx, lengths)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(batched[i], clf(s[None])[0])


def test_pooling_the_padded_end_instead_would_be_wrong():
    # Guards the test above: reading position -1 of a padded row gives a different answer.
    clf = GPTClassifier(tiny_gpt(), 3).eval()
    seq = torch.randint(0, VOCAB, (4,))
    idx, lengths = pad_batch([seq, torch.randint(0, VOCAB, (8,))])
    assert not torch.allclose(clf(idx)[0], clf(seq[None])[0])
    torch.testing.assert_close(clf(idx, lengths)[0], clf(seq[None])[0])


# --------------------------------------------------------------------------- freezing


def _one_step(clf: GPTClassifier) -> None:
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, VOCAB, (4, 8))
    loss = F.cross_entropy(clf(idx), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()


@pytest.mark.parametrize("k", [0, 1, 3])
def test_freeze_keeps_frozen_weights_bit_identical_and_trains_the_rest(k):
    clf = GPTClassifier(tiny_gpt(), 3)
    n_trainable = freeze(clf, trainable_blocks=k)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    _one_step(clf)
    top = {f"gpt.transformer.h.{i}." for i in range(3 - k, 3)}
    expect = 0
    for name, p in clf.named_parameters():
        trainable = name.startswith(("head.", "gpt.transformer.ln_f.")) or any(
            name.startswith(t) for t in top
        )
        assert p.requires_grad == trainable, name
        if trainable:
            expect += p.numel()
            assert not torch.equal(p, before[name]), f"{name} should have been updated"
        else:
            assert torch.equal(p, before[name]), f"{name} is frozen but changed"
    assert n_trainable == expect == count_parameters(clf, trainable_only=True)


def test_freeze_none_unfreezes_everything_including_embeddings():
    clf = GPTClassifier(tiny_gpt(), 3)
    freeze(clf, trainable_blocks=0)
    assert not clf.gpt.transformer.wte.weight.requires_grad
    assert freeze(clf, None) == count_parameters(clf)
    assert all(p.requires_grad for p in clf.parameters())


def test_freeze_all_blocks_still_keeps_embeddings_frozen():
    clf = GPTClassifier(tiny_gpt(), 3)
    n = freeze(clf, 3)
    emb = clf.gpt.transformer.wte.weight.numel() + clf.gpt.transformer.wpe.weight.numel()
    assert n == count_parameters(clf) - emb


# --------------------------------------------------------------------------- data


def test_make_passages_lengths_labels_titles_and_seed():
    ds = make_passages(DOCS, ByteTokenizer(), passage_tokens=20, passages_per_document=4, seed=3)
    assert len(ds) == 15 * 4
    assert ds.label_names == ("comedy", "history", "tragedy")
    assert ds.counts() == {"comedy": 20, "history": 20, "tragedy": 20}
    assert all(len(p) == 20 for p in ds.passages)
    for ids, label, title in zip(ds.passages, ds.labels.tolist(), ds.titles, strict=True):
        doc = next(d for d in DOCS if d.title == title)
        assert bytes(ids.tolist()).decode() in doc.text  # a real stretch of that play
        assert ds.label_names[label] == doc.genre
    again = make_passages(DOCS, ByteTokenizer(), passage_tokens=20, passages_per_document=4, seed=3)
    other = make_passages(DOCS, ByteTokenizer(), passage_tokens=20, passages_per_document=4, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(ds.passages, again.passages, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(ds.passages, other.passages, strict=True))


def test_passages_of_one_document_start_at_lines_and_do_not_overlap():
    doc = DOCS[0]
    names = ("comedy", "history", "tragedy")
    ds = make_passages(
        [doc], ByteTokenizer(), label_names=names, passage_tokens=30, passages_per_document=6
    )
    starts = [doc.text.index(bytes(p.tolist()).decode()) for p in ds.passages]
    assert starts == sorted(starts)
    assert all(b - a >= 30 for a, b in zip(starts, starts[1:], strict=False))
    assert all(s == 0 or doc.text[s - 1] == "\n" for s in starts)


def test_min_tokens_draws_variable_lengths():
    ds = make_passages(
        DOCS, ByteTokenizer(), passage_tokens=24, passages_per_document=4, min_tokens=8, seed=0
    )
    lengths = [len(p) for p in ds.passages]
    assert min(lengths) >= 8 and max(lengths) <= 24 and len(set(lengths)) > 5


def test_build_genre_datasets_splits_by_document():
    train, test = build_genre_datasets(
        DOCS, ByteTokenizer(), test_fraction=0.2, passage_tokens=16, seed=0
    )
    assert not set(train.titles) & set(test.titles)
    assert len(train.documents()) + len(test.documents()) == len(DOCS)
    assert all(n > 0 for n in test.counts().values())  # every genre is tested
    assert train.label_names == test.label_names


def test_check_disjoint_names_the_shared_play():
    a = PassageDataset([torch.tensor([1])], [0], ["Hamlet"], ["comedy", "tragedy"])
    b = PassageDataset([torch.tensor([2])], [1], ["Hamlet"], ["comedy", "tragedy"])
    with pytest.raises(ValueError, match=r"both train and test, e.g. \['Hamlet'\]"):
        check_disjoint(a, b)


def test_loader_yields_right_padded_batches_with_labels():
    ds = PassageDataset(
        [torch.tensor([1, 2, 3]), torch.tensor([4])], [1, 0], ["a", "b"], ["x", "y"]
    )
    idx, lengths, labels = next(iter(passage_loader(ds, batch_size=2, pad_id=7)))
    assert idx.tolist() == [[1, 2, 3], [4, 7, 7]]
    assert lengths.tolist() == [3, 1] and labels.tolist() == [1, 0]


# --------------------------------------------------------------------------- metrics


def test_accuracy_and_confusion_matrix_against_a_hand_count():
    pred = [0, 2, 1, 1, 0, 2, 2]
    true = [0, 1, 1, 2, 0, 2, 1]
    assert accuracy(pred, true) == pytest.approx(4 / 7)
    cm = confusion_matrix(pred, true, 3)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(true, pred, strict=True):
        expected[t, p] += 1  # row = true, column = predicted
    assert torch.equal(cm, expected)
    assert cm.sum() == 7 and cm.trace() == 4
    logits = F.one_hot(torch.tensor(pred), 3).float()  # scores are turned into argmax ids
    assert accuracy(logits, true) == pytest.approx(4 / 7)


def test_majority_baseline_uses_the_training_majority():
    assert majority_baseline([0, 0, 1], [0, 1, 1, 1]) == pytest.approx(0.25)


# --------------------------------------------------------------------------- training


def _separable_data(n: int, seed: int) -> PassageDataset:
    """Label = whether the passage ends in token 1 or 2: easy for the last-token state."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    passages = []
    for lab in labels.tolist():
        body = torch.randint(
            10, 60, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen
        )
        passages.append(torch.cat([body, torch.tensor([1 + lab])]))
    return PassageDataset(passages, labels, [f"d{i}" for i in range(n)], ["one", "two"])


def test_train_classifier_learns_records_history_and_is_seeded():
    train, test = _separable_data(64, 0), _separable_data(32, 1)
    runs = []
    for _ in range(2):
        clf = GPTClassifier(tiny_gpt(), 2)
        hist = train_classifier(clf, train, test, epochs=3, batch_size=16, lr=3e-3)
        runs.append(hist)
    hist = runs[0]
    assert isinstance(hist, ClassifierHistory)
    assert len(hist.train_loss) == len(hist.train_accuracy) == len(hist.test_accuracy) == 3
    assert len(hist.step_loss) == 3 * 4
    assert hist.trainable_parameters == count_parameters(clf)
    assert hist.final_test_accuracy >= 0.9 and hist.train_loss[-1] < hist.train_loss[0]
    assert hist.step_loss == runs[1].step_loss  # same seed, same run
    assert accuracy(predict(clf, test), test.labels) == runs[1].final_test_accuracy


def test_train_classifier_with_frozen_trunk_leaves_it_unchanged():
    clf = GPTClassifier(tiny_gpt(), 2)
    freeze(clf, 0)
    before = clf.gpt.transformer.h[0].attn.c_attn.weight.clone()
    hist = train_classifier(clf, _separable_data(16, 0), epochs=1, batch_size=8)
    assert torch.equal(before, clf.gpt.transformer.h[0].attn.c_attn.weight)
    assert hist.test_accuracy == []
    with pytest.raises(ValueError, match="no test accuracy was recorded"):
        _ = hist.final_test_accuracy


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_helpful_errors():
    gpt = tiny_gpt()
    with pytest.raises(ValueError, match="at least two classes"):
        GPTClassifier(gpt, 1)
    with pytest.raises(TypeError, match="must be a gptlab GPT"):
        GPTClassifier(torch.nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="label_names must be 3 strings"):
        GPTClassifier(gpt, 3, label_names=["a", "b"])
    clf = GPTClassifier(gpt, 3)
    with pytest.raises(ValueError, match=r"between 0 and n_layer=3, got 4; use None"):
        freeze(clf, 4)
    with pytest.raises(ValueError, match="between 0 and n_layer=3, got -1"):
        freeze(clf, -1)
    with pytest.raises(TypeError, match="wrap your GPT first"):
        freeze(gpt, 1)
    with pytest.raises(ValueError, match="block_size is 32"):
        clf(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 256 is outside"):
        clf(torch.full((1, 3), 256))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 4\]"):
        clf(torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="sequences is empty"):
        pad_batch([])
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pad_batch([[1], []])
    with pytest.raises(ValueError, match="documents is empty"):
        make_passages([], ByteTokenizer())
    with pytest.raises(ValueError, match="must not exceed passage_tokens"):
        make_passages(DOCS, ByteTokenizer(), passage_tokens=8, min_tokens=9)
    with pytest.raises(ValueError, match=r"genres \['tragedy'\] are not in label_names"):
        make_passages(DOCS, ByteTokenizer(), label_names=["comedy", "history"])
    with pytest.raises(ValueError, match="only the genre.*pass label_names"):
        make_passages(DOCS[:2], ByteTokenizer())
    with pytest.raises(ValueError, match="dataset is empty"):
        PassageDataset([], [], [], ["a", "b"])
    with pytest.raises(ValueError, match="only the genre"):
        build_genre_datasets([play("A", "comedy"), play("B", "comedy")], ByteTokenizer())
    with pytest.raises(ValueError, match="one entry per example"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="predictions is empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\).*is n_classes right"):
        confusion_matrix([0, 2], [0, 1], 2)
    ds = _separable_data(4, 0)
    with pytest.raises(ValueError, match="has 2 labels but the model has n_classes=3"):
        train_classifier(clf, ds)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        train_classifier(GPTClassifier(gpt, 2), ds, lr=0)


# --------------------------------------------------------------------------- verse or prose

VERSE = (
    "HAMLET:\nTo be, or not to be: that is the question:\nWhether 'tis nobler in the mind to "
    "suffer\nThe slings and arrows of outrageous fortune,\nOr to take arms against a sea\n"
)
PROSE = (
    "BEATRICE:\nYes, faith; it is my cousin's duty to make curtsy\nand say 'Father, as it "
    "please you.' But yet for all\nthat, cousin, let him be a handsome fellow, or else\nmake "
    "another curtsy and say 'Father, as it please\nme.'\n"
)


def test_verse_or_prose_reads_the_line_starts():
    from gptlab.finetune import verse_or_prose

    assert verse_or_prose(VERSE) == "verse"
    assert verse_or_prose(PROSE) == "prose"
    # the first and last lines may be cut mid-line: a lower-case start there does not count
    assert verse_or_prose("ng, cut here\n" + VERSE[8:] + "and cut") == "verse"
    # one lower-case start in seven lines (14%) is below the 25% prose share: left out
    mixed = "A:\n" + "".join(f"Line {i}\n" for i in range(6)) + "and one more\nEnd\n"
    assert verse_or_prose(mixed) is None
    assert verse_or_prose(mixed, prose_share=0.1) == "prose"
    assert verse_or_prose("A:\nOne line\nTwo\n") is None  # fewer than 3 spoken lines
    with pytest.raises(TypeError, match="text must be a str"):
        verse_or_prose(b"bytes")
    with pytest.raises(ValueError, match=r"prose_share must be in \(0, 1\]"):
        verse_or_prose(VERSE, prose_share=0)


class DecodingByteTokenizer(ByteTokenizer):
    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_build_verse_prose_datasets_is_balanced_split_by_play_and_labelled_by_the_rule():
    from gptlab.finetune import build_verse_prose_datasets, verse_or_prose

    docs = []
    for g in ("comedy", "history", "tragedy"):
        for i in range(5):  # half of each play verse, half prose
            text = (VERSE * 20 + PROSE * 20) if i % 2 else (PROSE * 20 + VERSE * 20)
            docs.append(Document(f"{g} {i}", g, text))
    tok = DecodingByteTokenizer()
    train, test = build_verse_prose_datasets(
        docs, tok, passage_tokens=300, passages_per_document=12, seed=3
    )
    genre_train, genre_test = build_genre_datasets(docs, tok, passage_tokens=300, seed=3)
    assert set(train.titles) == set(genre_train.titles)  # the same split of the plays
    assert set(test.titles) == set(genre_test.titles)
    for data in (train, test):
        assert data.label_names == ("prose", "verse")
        counts = data.counts()
        assert counts["prose"] == counts["verse"] > 0
        for ids, label in zip(data.passages, data.labels.tolist(), strict=True):
            assert verse_or_prose(tok.decode(ids.tolist())) == data.label_names[label]
    again, _ = build_verse_prose_datasets(
        docs, tok, passage_tokens=300, passages_per_document=12, seed=3
    )
    assert all(torch.equal(a, b) for a, b in zip(train.passages, again.passages, strict=True))
    with pytest.raises(TypeError, match=r"\.decode"):
        build_verse_prose_datasets(docs, ByteTokenizer())
    only_verse = [Document(d.title, d.genre, VERSE * 40) for d in docs]
    with pytest.raises(ValueError, match="0 prose"):
        build_verse_prose_datasets(only_verse, tok, passage_tokens=300)


def test_on_epoch_sees_each_epoch_and_can_stop_training():
    train = _separable_data(32, 0)
    seen = []

    def stop_after_two(epoch, history):
        seen.append((epoch, len(history.train_loss)))
        return epoch == 2

    clf = GPTClassifier(tiny_gpt(), 2)
    hist = train_classifier(clf, train, epochs=5, batch_size=16, on_epoch=stop_after_two)
    assert seen == [(1, 1), (2, 2)] and len(hist.train_loss) == 2
    full = train_classifier(GPTClassifier(tiny_gpt(), 2), train, epochs=2, batch_size=16)
    assert hist.step_loss == full.step_loss  # stopping early changes nothing before the stop
    with pytest.raises(TypeError, match="on_epoch must be a function"):
        train_classifier(clf, train, on_epoch=3)


def test_document_folds_test_every_document_once_stratified_and_seeded():
    from gptlab.finetune import document_folds

    folds = document_folds(DOCS, 5, seed=1)
    assert len(folds) == 5
    tested = [d.title for _, test in folds for d in test]
    assert sorted(tested) == sorted(d.title for d in DOCS)  # each document tested exactly once
    for train, test in folds:
        assert not {d.title for d in train} & {d.title for d in test}
        assert len(train) + len(test) == len(DOCS)
        assert sorted(d.genre for d in test) == ["comedy", "history", "tragedy"]  # 5 of each
    again = document_folds(DOCS, 5, seed=1)
    assert [[d.title for d in t] for _, t in again] == [[d.title for d in t] for _, t in folds]
    other = document_folds(DOCS, 5, seed=2)
    assert [[d.title for d in t] for _, t in other] != [[d.title for d in t] for _, t in folds]
    with pytest.raises(ValueError, match="at least two folds"):
        document_folds(DOCS, 1)
    with pytest.raises(ValueError, match="cannot fill 16 folds"):
        document_folds(DOCS, 16)
    with pytest.raises(TypeError, match="Document objects"):
        document_folds(["a", "b"], 2)
