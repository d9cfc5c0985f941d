"""Chapter 1 checkers: each accepts a right answer and rejects the usual wrong ones with a hint."""

from __future__ import annotations

import codecs
import re

import pytest
import torch

from gptlab.exercises import NotSolved, ch01, check, registered
from gptlab.tokenizers import BPETokenizer


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_1_exercises_are_registered():
    assert [k for k in registered() if k.startswith("1.")] == ["1.1", "1.2", "1.3", "1.4", "1.5"]


def test_stub_is_not_solved(capsys):
    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("1.1", "1.2", "1.3", "1.4", "1.5"):
        assert check(exercise_id, stub) is False
        assert "not solved yet" in capsys.readouterr().out
    assert "pass your function itself" in _hint(ch01.check_bpe_encode, [1, 2])


# 1.1 UTF-8 by hand ----------------------------------------------------------------------------


def utf8_encode(cp: int) -> bytes:
    if cp < 0x80:
        return bytes([cp])
    if cp < 0x800:
        return bytes([0xC0 | cp >> 6, 0x80 | cp & 0x3F])
    if cp < 0x10000:
        return bytes([0xE0 | cp >> 12, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
    return bytes([0xF0 | cp >> 18, 0x80 | cp >> 12 & 0x3F, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])


def test_1_1_accepts_hand_written_utf8(capsys):
    assert check("1.1", utf8_encode) is True
    assert "correct" in capsys.readouterr().out
    assert check("1.1", lambda cp: list(utf8_encode(cp))) is True  # a list of ints is fine

    def documented(cp: int) -> bytes:
        """Encode like str.encode("utf-8") does, by hand."""  # naming the codec in prose is fine
        return utf8_encode(cp)

    assert check("1.1", documented) is True
    assert check("1.1", lambda cp: encode(cp)) is True  # a global helper may be called encode


def _library_helper(cp: int) -> bytes:  # a helper in the reader's namespace that lets Python encode
    return bytes(chr(cp), "utf-8")


def encode(cp: int) -> bytes:  # a reader's own hand-written helper that happens to be called encode
    return utf8_encode(cp)


_ENCODERS = {"library": str.encode}  # an encoder that reading the code cannot see


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda cp: chr(cp).encode("utf-8"), "str.encode"),  # the call the exercise forbids
        (lambda cp: chr(cp).encode(), "str.encode"),  # UTF-8 is the default
        (lambda cp: list(chr(cp).encode("utf-8")), "str.encode"),
        (lambda cp: str.encode(chr(cp), "utf-8"), "str.encode"),
        (lambda cp: codecs.encode(chr(cp), "utf-8"), "str.encode"),
        (lambda cp: chr(cp).encode("utf-16-be"), "str.encode"),  # and the wrong codec
        (lambda cp: _ENCODERS["library"](chr(cp)), "utf8_encode(0x41) calls an encoder"),
        (lambda cp: bytes(chr(cp), "utf-8"), "'utf-8' codec"),
        (lambda cp: bytearray(chr(cp), encoding="UTF8"), "'utf-8' codec"),
        (lambda cp: _library_helper(cp), "'utf-8' codec"),
        (  # by hand below 0x10000, the library for the 4-byte forms
            lambda cp: utf8_encode(cp) if cp < 0x10000 else chr(cp).encode(),
            "str.encode",
        ),
    ],
)
def test_1_1_rejects_the_library_call_it_forbids(wrong, hint, capsys):
    """The old checker compared only the bytes, so it accepted every one of these (issue 12 §3)."""
    assert check("1.1", wrong) is False
    out = capsys.readouterr().out
    assert "wrong answer" in out and "not solved yet" not in out and hint in out
    assert "build the bytes yourself" in out


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda cp: bytes([cp & 0xFF]), "needs 2 byte"),  # one byte for everything
        (lambda cp: cp.to_bytes(4, "big"), "needs 1 byte"),
        (  # continuation bytes without their 10xxxxxx marker
            lambda cp: bytes([b & 0x3F if i else b for i, b in enumerate(utf8_encode(cp))]),
            "10xxxxxx",
        ),
        (  # lead byte without the length prefix
            lambda cp: bytes(
                [b & 0x1F if i == 0 and cp >= 0x80 else b for i, b in enumerate(utf8_encode(cp))]
            ),
            "one-bits and a zero",
        ),
        (lambda cp: utf8_encode(cp)[::-1] if cp >= 0x80 else utf8_encode(cp), "10xxxxxx"),
        (lambda cp: str(cp), "return bytes"),
    ],
)
def test_1_1_rejects_wrong_encodings(wrong, hint):
    assert hint in _hint(ch01.check_utf8_encode, wrong)


# 1.2 encode a word with learned merges -------------------------------------------------------


def bpe_encode(word, merges):
    parts = [word[i : i + 1] for i in range(len(word))]
    for a, b in merges:  # applying the merges in the order they were learned is BPE
        i, out = 0, []
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == (a, b):
                out.append(a + b)
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def test_1_2_reference_is_gptlabs_encoder():
    """The checker's expected tokens are exactly what BPETokenizer.encode produces."""
    vocab = {i: bytes([i]) for i in range(256)}
    merges = []
    for a, b in ch01._MERGES:
        vocab[len(vocab)] = a + b
        merges.append((a, b))
    tok = BPETokenizer(vocab, merges, {})
    for word in ch01._WORDS:
        want = ch01._reference_bpe(word, ch01._MERGES)
        assert [tok.vocab[i] for i in tok.encode(word.decode())] == want


def test_1_2_accepts_rank_order_and_learned_order(capsys):
    assert check("1.2", bpe_encode) is True
    assert "correct" in capsys.readouterr().out
    assert check("1.2", ch01._reference_bpe) is True  # lowest-rank pair first, one at a time


def test_1_2_rejects_leftmost_first_bytes_only_and_ints():
    assert "learned FIRST" in _hint(ch01.check_bpe_encode, ch01._left_to_right)

    def one_pass(word, merges):  # a single merge and stop
        parts = [word[i : i + 1] for i in range(len(word))]
        for i in range(len(parts) - 1):
            if (parts[i], parts[i + 1]) in merges:
                return parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
        return parts

    assert "keep merging" in _hint(ch01.check_bpe_encode, one_pass)
    assert "list of bytes" in _hint(ch01.check_bpe_encode, lambda word, merges: list(word))
    assert "join back" in _hint(ch01.check_bpe_encode, lambda word, merges: [b"x"])


# 1.3 cut text at special tokens ---------------------------------------------------------------


def split_on_specials(text, specials):
    pattern = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    return [piece for piece in re.split(f"({pattern})", text) if piece]


def test_1_3_accepts_longest_first_split(capsys):
    assert check("1.3", split_on_specials) is True
    assert "correct" in capsys.readouterr().out


def test_1_3_reference_agrees_with_gptlab_encoding():
    tok = BPETokenizer.train("x y", 256 + 2, special_tokens=("<|end|>", "<|end|>!"))
    text = "x<|end|>!y<|end|>"
    pieces = split_on_specials(text, ["<|end|>", "<|end|>!"])
    ids = [i for p in pieces for i in tok.encode(p, allowed_special="all")]
    assert ids == tok.encode(text, allowed_special="all")


def test_1_3_rejects_dropped_specials_shortest_first_and_empty_pieces():
    def dropped(text, specials):
        return [p for p in re.split("|".join(map(re.escape, specials)), text) if p]

    def shortest_first(text, specials):
        pattern = "|".join(re.escape(s) for s in sorted(specials, key=len))
        return [piece for piece in re.split(f"({pattern})", text) if piece]

    def keeps_empty(text, specials):
        pattern = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
        return re.split(f"({pattern})", text)

    def unescaped(text, specials):
        pattern = "|".join(sorted(specials, key=len, reverse=True))
        return [piece for piece in re.split(f"({pattern})", text) if piece]

    assert "keep each special token" in _hint(ch01.check_split_on_specials, dropped)
    assert "the longer one wins" in _hint(ch01.check_split_on_specials, shortest_first)
    assert "drop empty pieces" in _hint(ch01.check_split_on_specials, keeps_empty)
    assert _hint(ch01.check_split_on_specials, unescaped) is not None


# 1.4 input and target windows -----------------------------------------------------------------


def make_windows(ids, T):
    return [(ids[s : s + T], ids[s + 1 : s + T + 1]) for s in range(0, len(ids) - T, T)]


def test_1_4_accepts_shifted_windows(capsys):
    def as_tensors(ids, T):
        return [(torch.tensor(x), torch.tensor(y)) for x, y in make_windows(ids, T)]

    assert check("1.4", make_windows) is True
    assert check("1.4", as_tensors) is True


def test_1_4_rejects_unshifted_short_and_miscounted_windows():
    def same(ids, T):
        return [(ids[s : s + T], ids[s : s + T]) for s in range(0, len(ids) - T, T)]

    def ragged(ids, T):  # windows up to the very end: the last one lacks its final target
        return [(ids[s : s + T], ids[s + 1 : s + T + 1]) for s in range(0, len(ids), T)]

    def stride_one(ids, T):  # overlapping windows: stride 1 instead of T
        return [(ids[s : s + T], ids[s + 1 : s + T + 1]) for s in range(len(ids) - T)]

    assert "NEXT token" in _hint(ch01.check_windows, same)
    assert "exactly T" in _hint(ch01.check_windows, ragged)
    assert "a window starts every T" in _hint(ch01.check_windows, stride_one)
    assert "(x, y) pairs" in _hint(ch01.check_windows, lambda ids, T: [1, 2, 3])


# 1.5 from a vector back to its token ---------------------------------------------------------


def nearest_token(vectors, weight):
    return (
        torch.cdist(vectors.reshape(-1, vectors.shape[-1]), weight)
        .argmin(-1)
        .reshape(vectors.shape[:-1])
    )


def test_1_5_accepts_nearest_row(capsys):
    assert check("1.5", nearest_token) is True
    assert "correct" in capsys.readouterr().out

    def squared_distance(vectors, weight):  # same argmin, written out
        return ((vectors[..., None, :] - weight) ** 2).sum(-1).argmin(-1)

    assert check("1.5", squared_distance) is True


def test_1_5_rejects_dot_product_flattened_and_lists():
    def dot_product(vectors, weight):
        return (vectors @ weight.T).argmax(-1)

    def flattened(vectors, weight):
        return nearest_token(vectors, weight).flatten()

    assert "largest dot product" in _hint(ch01.check_nearest_token, dot_product)
    assert "one id per vector" in _hint(ch01.check_nearest_token, flattened)
    assert "must return a tensor" in _hint(
        ch01.check_nearest_token, lambda v, w: nearest_token(v, w).tolist()
    )
    assert "some ids are wrong" in _hint(
        ch01.check_nearest_token, lambda v, w: (nearest_token(v, w) + 1) % w.shape[0]
    )
