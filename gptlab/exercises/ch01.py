"""Checkers for the exercises of chapter 1, "Text and tokens".

Each checker compares the reader's answer with a reference that Python or the package computes
(``str.encode("utf-8")``, :class:`gptlab.data.TokenWindowDataset`, nearest rows) on cases
chosen to expose the usual mistakes, and names the mistake it recognises.
"""

from __future__ import annotations

import codecs
import dis
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch

from gptlab.data import TokenWindowDataset
from gptlab.exercises import exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_bpe_encode",
    "check_nearest_token",
    "check_split_on_specials",
    "check_utf8_encode",
    "check_windows",
]


# 1.1 ---------------------------------------------------------------------------------------

# Code points at every boundary of UTF-8's 1-, 2-, 3- and 4-byte forms, plus familiar ones.
_CODE_POINTS = (
    0x41,  # A
    0x0A,  # newline
    0x7F,
    0x80,
    0xE9,  # é
    0x7FF,
    0x800,
    0x4F60,  # 你
    0xFFFD,
    0xFFFF,
    0x10000,
    0x1F600,  # 😀
    0x10FFFF,
)


def _utf8_length(cp: int) -> int:
    return 1 if cp < 0x80 else 2 if cp < 0x800 else 3 if cp < 0x10000 else 4


def _code_objects(fn: Any) -> Iterator[types.CodeType]:
    """The code of ``fn``, of the functions nested in it and of the global functions it names."""
    code = getattr(fn, "__code__", None)
    todo = [(code, getattr(fn, "__globals__", {}))] if isinstance(code, types.CodeType) else []
    seen: set[types.CodeType] = set()
    while todo:
        code, namespace = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        yield code
        todo += [(c, namespace) for c in code.co_consts if isinstance(c, types.CodeType)]
        for name in code.co_names:
            helper = namespace.get(name)
            if isinstance(helper, types.FunctionType):
                todo.append((helper.__code__, helper.__globals__))


def _is_utf8_codec_name(value: object) -> bool:
    if not isinstance(value, str) or not value or len(value) > 16:
        return False
    try:
        return codecs.lookup(value).name == "utf-8"
    except LookupError:
        return False


_CALLS_ENCODE = "calls an encoder such as str.encode (as in chr(cp).encode('utf-8'))"
_NAMES_CODEC = "names the 'utf-8' codec (as in bytes(chr(cp), 'utf-8'))"


def _library_encoding(fn: Any) -> str | None:
    """How the code of ``fn`` (or a function it defines or calls by name) lets Python encode, if it does."""
    codes = list(_code_objects(fn))
    attributes = {
        op.argval
        for code in codes
        for op in dis.get_instructions(code)
        if op.opname in ("LOAD_ATTR", "LOAD_METHOD")
    }
    if "encode" in attributes:
        return _CALLS_ENCODE
    if any(_is_utf8_codec_name(c) for code in codes for c in code.co_consts):
        return _NAMES_CODEC
    return None


def _call_watching_encode(fn: Any, cp: int) -> tuple[Any, bool]:
    """``fn(cp)``, and whether anything it ran called ``str.encode`` or ``codecs.encode``: this
    catches the encoders that reading the code misses (methods of objects, functions in a dict)."""
    called = False

    def watch(frame: Any, event: str, arg: Any) -> None:
        nonlocal called
        if event == "c_call" and getattr(arg, "__name__", "") in ("encode", "utf_8_encode"):
            called = True

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        result = fn(cp)
    finally:
        sys.setprofile(previous)
    return result, called


def _by_hand(how: str, call: str = "utf8_encode") -> str:
    return (
        f"{call} {how}, so Python does the encoding for you; the exercise is to build the "
        "bytes yourself from the table of section 1.1 with >>, & and |"
    )


@exercise("1.1", "UTF-8 by hand")
def check_utf8_encode(utf8_encode: Any) -> str | None:
    """``utf8_encode(code_point)`` must return the same bytes as ``chr(code_point).encode("utf-8")``
    without calling it (or any other library encoder): the exercise is to apply the bit patterns."""
    fn = _callable(utf8_encode, "utf8_encode", "1.1")
    how = _library_encoding(fn)
    if how is not None:
        return _by_hand(how)
    for cp in _CODE_POINTS:
        want = chr(cp).encode("utf-8")
        got, used_encode = _call_watching_encode(fn, cp)
        if used_encode:
            return _by_hand(_CALLS_ENCODE, f"utf8_encode({cp:#x})")
        if isinstance(got, (list, tuple, bytearray)) and all(isinstance(b, int) for b in got):
            got = bytes(got) if all(0 <= b < 256 for b in got) else got
        if not isinstance(got, bytes):
            return f"utf8_encode({cp:#x}) returned {type(got).__name__}; return bytes, e.g. bytes([0xC3, 0xA9])"
        if got == want:
            continue
        label = f"U+{cp:04X} ({chr(cp)!r})"
        if len(got) != len(want):
            return (
                f"{label} needs {len(want)} byte(s), you returned {len(got)}: code points below "
                "0x80 take 1 byte, below 0x800 2, below 0x10000 3, the rest 4"
            )
        if len(want) > 1 and any(b >> 6 != 0b10 for b in got[1:]):
            return (
                f"for {label} every byte after the first must look like 10xxxxxx "
                "(0x80 | six bits of the code point)"
            )
        if len(want) > 1 and got[0] >> (7 - len(want)) != want[0] >> (7 - len(want)):
            return (
                f"for {label} the first byte must start with {len(want)} one-bits and a zero "
                f"({'1' * len(want)}0...), which says how many bytes follow"
            )
        return (
            f"utf8_encode({cp:#x}) gave {got!r}, expected {want!r}: put the highest bits of the "
            "code point in the first byte and six bits in each following byte, in order"
        )
    return None


# 1.2 ---------------------------------------------------------------------------------------

# Merges learned from "hug hug hugs pug" (see the chapter), then a trap: (b, c) is learned
# before (a, b), so "abc" must become a + bc (then abc), not ab + c.
_MERGES: list[tuple[bytes, bytes]] = [
    (b"u", b"g"),
    (b"h", b"ug"),
    (b" ", b"hug"),
    (b"p", b"ug"),
    (b"b", b"c"),
    (b"a", b"b"),
    (b"a", b"bc"),
    (b"a", b"a"),
    (b"aa", b"a"),
]
_WORDS = (b"hug", b" hugs", b" pug", b"pugs", b"abc", b"abab", b"aaaa", b"aaaaa", b"x", b"", b"ab")


def _reference_bpe(word: bytes, merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    rank = {pair: i for i, pair in enumerate(merges)}
    parts = [word[i : i + 1] for i in range(len(word))]
    while True:
        ranked = [
            (rank.get(pair, len(rank)), i)
            for i, pair in enumerate(zip(parts, parts[1:], strict=False))
        ]
        best, i = min(ranked, default=(len(rank), 0))
        if best == len(rank):
            return parts
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def _left_to_right(word: bytes, merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    known = set(merges)
    parts = [word[i : i + 1] for i in range(len(word))]
    i = 0
    while i < len(parts) - 1:
        if (parts[i], parts[i + 1]) in known:
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
            i = max(i - 1, 0)  # the new token may merge with its left neighbour
        else:
            i += 1
    return parts


@exercise("1.2", "encode a word with learned merges")
def check_bpe_encode(bpe_encode: Any) -> str | None:
    """``bpe_encode(word, merges)`` splits ``word`` (bytes) into tokens: start from single bytes and
    apply the merges by rank (earliest learned first) until none applies."""
    fn = _callable(bpe_encode, "bpe_encode", "1.2")
    for word in _WORDS:
        got = fn(word, list(_MERGES))
        if got is None:
            return "bpe_encode returned None: return the list of tokens"
        got = list(got)
        want = _reference_bpe(word, _MERGES)
        if got == want:
            continue
        call = f"bpe_encode({word!r}, merges)"
        if any(not isinstance(t, bytes) for t in got):
            return f"{call} must return a list of bytes objects such as [b'h', b'ug'], got {got!r}"
        if b"".join(got) != word:
            return f"{call} gave {got!r}: the tokens must join back to the word"
        if got == _left_to_right(word, _MERGES):
            return (
                f"{call} gave {got!r}, expected {want!r}: merge the pair that was learned FIRST "
                "(lowest index in merges), not the leftmost pair that can merge"
            )
        return f"{call} gave {got!r}, expected {want!r}: keep merging until no learned pair is left"
    return None


# 1.3 ---------------------------------------------------------------------------------------

_SPECIAL_CASES: list[tuple[str, list[str]]] = [
    ("a<|endoftext|>b", ["<|endoftext|>"]),
    ("<|endoftext|><|endoftext|>hi<|endoftext|>", ["<|endoftext|>"]),
    ("no specials here", ["<|endoftext|>"]),
    ("", ["<|endoftext|>"]),
    ("x<|end|>!y<|end|>", ["<|end|>", "<|end|>!"]),
    ("<|<|endoftext|>|> <|endoftext|", ["<|endoftext|>"]),
    ("a.b*c", [".", "*"]),  # specials are plain text, not regular expressions
]


def _reference_split(text: str, specials: list[str]) -> list[str]:
    alternatives = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    return [piece for piece in re.split(f"({alternatives})", text) if piece]


@exercise("1.3", "cut text at special tokens")
def check_split_on_specials(split_on_specials: Any) -> str | None:
    """``split_on_specials(text, specials)`` returns the pieces of ``text`` in order, each special
    token as its own item (the longest one where two start at the same place), no empty pieces."""
    fn = _callable(split_on_specials, "split_on_specials", "1.3")
    for text, specials in _SPECIAL_CASES:
        got = fn(text, list(specials))
        if got is None:
            return "split_on_specials returned None: return the list of pieces"
        got = list(got)
        want = _reference_split(text, specials)
        if got == want:
            continue
        call = f"split_on_specials({text!r}, {specials!r})"
        if "".join(got) != text:
            if all(p not in specials for p in got):
                return f"{call} gave {got!r}: keep each special token as an item of its own"
            return f"{call} gave {got!r}: joined together, the pieces must give back the text"
        if "" in got:
            return f"{call} gave {got!r}: drop empty pieces"
        return (
            f"{call} gave {got!r}, expected {want!r}: where two special tokens start at the same "
            "place the longer one wins, and special tokens are matched literally (re.escape)"
        )
    return None


# 1.4 ---------------------------------------------------------------------------------------


def _as_list(x: Any) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


@exercise("1.4", "input and target windows")
def check_windows(make_windows: Any) -> str | None:
    """``make_windows(ids, T)`` returns the non-overlapping ``(x, y)`` windows of
    ``TokenWindowDataset(ids, T, stride=T)``: ``y`` is ``x`` shifted left by one."""
    fn = _callable(make_windows, "make_windows", "1.4")
    for n, T in ((20, 4), (21, 4), (9, 8), (10, 3)):
        ids = list(range(100, 100 + n))
        dataset = TokenWindowDataset(torch.tensor(ids), T, T)
        want = [(x.tolist(), y.tolist()) for x, y in dataset]
        got = fn(list(ids), T)
        try:
            got = [(_as_list(x), _as_list(y)) for x, y in got]
        except (TypeError, ValueError):
            return "return a list of (x, y) pairs, each x and y a list (or tensor) of T ids"
        if got == want:
            continue
        call = f"make_windows(list(range(100, {100 + n})), {T})"
        if got and all(x == y for x, y in got):
            return f"{call}: y equals x; the target is the NEXT token, y = ids[s + 1 : s + T + 1]"
        if got and any(len(x) != T or len(y) != T for x, y in got):
            return f"{call}: every x and every y must hold exactly T = {T} ids"
        if len(got) != len(want):
            return (
                f"{call} gave {len(got)} windows, expected {len(want)}: a window starts every T "
                "ids and needs T + 1 ids (its inputs plus the last target)"
            )
        return f"{call} gave {got[:2]}..., expected {want[:2]}..."
    return None


# 1.5 ---------------------------------------------------------------------------------------


@exercise("1.5", "from a vector back to its token")
def check_nearest_token(nearest_token: Any) -> str | None:
    """``nearest_token(vectors, weight)`` with ``vectors`` (..., C) and the embedding table
    ``weight`` (V, C) returns, for each vector, the id of the row nearest to it (Euclidean)."""
    fn = _callable(nearest_token, "nearest_token", "1.5")
    gen = torch.Generator().manual_seed(0)
    for shape, V, C in (((2, 3), 7, 4), ((5,), 11, 3), ((1, 1), 5, 2)):
        # Rows of very different lengths: the largest dot product is then often NOT the nearest.
        weight = torch.randn(V, C, generator=gen) * torch.linspace(0.2, 3.0, V)[:, None]
        ids = torch.randint(V, shape, generator=gen)
        vectors = weight[ids] + 0.01 * torch.randn(*shape, C, generator=gen)  # (..., C)
        got = fn(vectors.clone(), weight.clone())
        if not isinstance(got, torch.Tensor):
            return f"nearest_token must return a tensor of ids, got {type(got).__name__}"
        if tuple(got.shape) != shape:
            return (
                f"for vectors of shape {tuple(vectors.shape)} return one id per vector, shape "
                f"{shape}; got {tuple(got.shape)} (take the argmin over the vocabulary axis)"
            )
        if torch.equal(got.long(), ids):
            continue
        if torch.equal(got.long(), (vectors @ weight.T).argmax(-1)):
            return (
                "you picked the largest dot product: it favours long rows. Pick the row with the "
                "smallest distance ||vector - weight[i]|| instead"
            )
        return "some ids are wrong: for each vector pick the row i of weight nearest to it"
    return None
