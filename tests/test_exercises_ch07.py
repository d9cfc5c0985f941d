"""Each chapter-7 checker accepts a right answer and rejects the usual wrong ones with a useful hint."""

from __future__ import annotations

import torch

from gptlab.exercises import NotSolved, ch07, check, registered
from gptlab.finetune import freeze, pad_batch, pool_last_token


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_7_exercises_are_registered():
    assert [k for k in registered() if k.startswith("7.")] == ["7.1", "7.2", "7.3", "7.4", "7.5"]


def test_stubs_are_not_solved(capsys):
    def stub(*args):
        raise NotImplementedError

    for k in range(1, 6):
        assert check(f"7.{k}", stub) is False
    assert capsys.readouterr().out.count("not solved yet") == 5


# 7.1 last-token pooling ----------------------------------------------------------------------


def test_last_token_accepts_gather_and_gptlab(capsys):
    def mine(hidden, lengths):
        return hidden[torch.arange(hidden.shape[0]), lengths - 1]

    assert check("7.1", mine) is True
    assert check("7.1", pool_last_token) is True
    assert "correct" in capsys.readouterr().out


def test_last_token_rejects_position_minus_one_and_off_by_one():
    assert "position -1" in _hint(ch07.check_last_token_states, lambda h, n: h[:, -1])

    def off_by_one(hidden, lengths):
        return hidden[torch.arange(hidden.shape[0]), lengths.clamp(max=hidden.shape[1] - 1)]

    assert "off by one" in _hint(ch07.check_last_token_states, off_by_one)
    assert "pass your function itself" in _hint(ch07.check_last_token_states, 3)


# 7.2 right padding ---------------------------------------------------------------------------


def test_right_pad_accepts_gptlab_and_a_loop():
    def loop(sequences, pad_id):
        T = max(len(s) for s in sequences)
        idx = torch.tensor([s + [pad_id] * (T - len(s)) for s in sequences])
        return idx, torch.tensor([len(s) for s in sequences])

    assert _hint(ch07.check_right_pad, loop) is None
    assert _hint(ch07.check_right_pad, pad_batch) is None


def test_right_pad_rejects_left_padding_and_wrong_lengths():
    def left(sequences, pad_id):
        T = max(len(s) for s in sequences)
        idx = torch.tensor([[pad_id] * (T - len(s)) + s for s in sequences])
        return idx, torch.tensor([len(s) for s in sequences])

    assert "left padding" in _hint(ch07.check_right_pad, left)

    def padded_lengths(sequences, pad_id):
        idx, _ = pad_batch(sequences, pad_id)
        return idx, torch.full((len(sequences),), idx.shape[1])

    assert "count the real tokens" in _hint(ch07.check_right_pad, padded_lengths)
    assert "return a pair" in _hint(ch07.check_right_pad, lambda s, p: pad_batch(s, p)[0])


# 7.3 mean pooling ----------------------------------------------------------------------------


def test_mean_pool_accepts_a_masked_mean():
    def mean_pool(hidden, lengths):
        mask = torch.arange(hidden.shape[1])[None, :] < lengths[:, None]  # (B, T)
        summed = (hidden * mask[..., None]).sum(dim=1)
        return summed / lengths[:, None]

    assert _hint(ch07.check_mean_pool, mean_pool) is None


def test_mean_pool_rejects_unmasked_and_wrong_divisor():
    assert "pads included" in _hint(ch07.check_mean_pool, lambda h, n: h.mean(dim=1))

    def divide_by_t(hidden, lengths):
        mask = torch.arange(hidden.shape[1])[None, :] < lengths[:, None]
        return (hidden * mask[..., None]).sum(dim=1) / hidden.shape[1]

    assert "its own length" in _hint(ch07.check_mean_pool, divide_by_t)


# 7.4 freezing --------------------------------------------------------------------------------


def _freeze_top(model, k, *, head=True, ln_f=True, bottom=False, embeddings=False):
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = model.gpt.transformer.h
    chosen = blocks[:k] if bottom else blocks[len(blocks) - k :]
    modules = [*chosen]
    if head:
        modules.append(model.head)
    if ln_f:
        modules.append(model.gpt.transformer.ln_f)
    if embeddings:
        modules += [model.gpt.transformer.wte, model.gpt.transformer.wpe]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)


def test_freeze_accepts_gptlab_and_a_hand_version():
    assert _hint(ch07.check_freeze_top, freeze) is None
    assert _hint(ch07.check_freeze_top, _freeze_top) is None


def test_freeze_rejects_the_usual_mistakes():
    def no_head(m, k):
        _freeze_top(m, k, head=False)

    def no_ln_f(m, k):
        _freeze_top(m, k, ln_f=False)

    def bottom(m, k):
        _freeze_top(m, k, bottom=True)

    def embeddings(m, k):
        _freeze_top(m, k, embeddings=True)

    assert "head is frozen" in _hint(ch07.check_freeze_top, no_head)
    assert "final LayerNorm" in _hint(ch07.check_freeze_top, no_ln_f)
    assert "*top* blocks" in _hint(ch07.check_freeze_top, bottom)
    assert "embeddings" in _hint(ch07.check_freeze_top, embeddings)
    assert _hint(ch07.check_freeze_top, lambda m, k: None) is not None  # nothing frozen


# 7.5 balanced accuracy -----------------------------------------------------------------------


def test_balanced_accuracy_accepts_mean_recall():
    def balanced(cm):
        return (cm.diag() / cm.sum(dim=1)).mean().item()

    assert _hint(ch07.check_balanced_accuracy, balanced) is None
    assert _hint(ch07.check_balanced_accuracy, lambda cm: (cm.diag() / cm.sum(1)).mean()) is None


def test_balanced_accuracy_rejects_accuracy_and_precision():
    assert "plain accuracy" in _hint(
        ch07.check_balanced_accuracy, lambda cm: (cm.trace() / cm.sum()).item()
    )
    assert "column sums" in _hint(
        ch07.check_balanced_accuracy, lambda cm: (cm.diag() / cm.sum(dim=0)).mean().item()
    )
    assert "return one number" in _hint(ch07.check_balanced_accuracy, lambda cm: cm.diag() / 2)
