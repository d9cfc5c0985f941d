"""Tokenizers: text -> integer ids -> text.

Chapter 1 builds two of them:

* :class:`CharTokenizer` gives every distinct character of a text its own id. Tiny vocabulary,
  long sequences, and it cannot encode a character it never saw.
* :class:`BPETokenizer` is GPT-2's scheme: start from the 256 possible bytes (so *any* text can be
  encoded) and repeatedly merge the most frequent adjacent pair into a new token. Text is first cut
  into "pre-tokens" (words, numbers, punctuation runs, whitespace) by GPT-2's regular expression,
  and merges never cross a pre-token boundary.

:func:`get_tokenizer` returns the real GPT-2 tokenizer as a fast ``tiktoken.Encoding``, built offline
from the ranks shipped in ``gptlab/assets/gpt2.tiktoken``. ``BPETokenizer.gpt2()`` loads the same
ranks into our pure-Python implementation, and the tests prove both give identical ids.

Special tokens are guarded as in tiktoken: ``encode`` refuses text that contains a special
token's string unless ``allowed_special`` names it, and ``encode_ordinary`` treats it as plain
text. Text from users and files goes through ``encode_ordinary``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import heapq
import importlib.resources
import json
import os
import pathlib
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import regex

from gptlab.utils import atomic_write

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "KNOWN_PATTERNS",
    "BPETokenizer",
    "CharTokenizer",
    "TokenizerFileError",
    "encode_plain",
    "get_tokenizer",
]

#: GPT-2's pre-tokenization pattern (tiktoken's ``r50k_base``): contractions, optional space +
#: letters, optional space + digits, optional space + other symbols, and whitespace runs.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

#: Pre-tokenizer patterns that :meth:`BPETokenizer.load` accepts from a file without asking. A
#: regular expression can take exponential time on some inputs (``(a|aa)+$``), so a file may
#: not bring its own unless the reader opts in with ``trust_pattern=True``.
KNOWN_PATTERNS: dict[str, str] = {
    "gpt2": GPT2_SPLIT_PATTERN,
    # SmolLM2 (Hugging Face: Digits(individual_digits=True), then GPT-2's ByteLevel regex) as
    # one regex: every digit alone, and whitespace before a digit ends as at the end of text.
    "smollm2": r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?[^\s\p{L}\p{N}]++|\s+(?![^\s\p{N}])|\s""",
}

ENDOFTEXT = "<|endoftext|>"
_GPT2_RANKS_FILE = "gpt2.tiktoken"
_GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_GPT2_N_RANKS = 50256
_KNOWN_TOKENIZERS = ("gpt2",)

_CHAR_FORMAT = "gptlab.char_tokenizer"
_BPE_FORMAT = "gptlab.bpe_tokenizer"
_FORMAT_VERSION = 1
_CHUNK_CACHE_SIZE = 1 << 16


class TokenizerFileError(ValueError):
    """A tokenizer file (saved JSON or shipped ranks) is missing, corrupted or unsupported."""


def _check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(
            f"{what} must be a str, got {type(text).__name__}; "
            "decode bytes first (e.g. data.decode('utf-8')) or pass the string itself"
        )
    return text


def _check_ids(ids: Any) -> list[int]:
    """Accept any sequence of integers (list, tuple, 1-D tensor/array) and return a list of ints."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
    if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
        ids = ids.tolist()
    try:
        out = list(ids)
    except TypeError:
        raise TypeError(
            f"ids must be a sequence of ints, got {type(ids).__name__}; pass e.g. [15496, 11]"
        ) from None
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(
                f"token ids must be ints, got {i!r} ({type(i).__name__}); "
                "pass a flat list of ints (for a batch, decode one row at a time)"
            )
    return out


def _unreadable(path: str | os.PathLike[str], exc: OSError, what: str) -> TokenizerFileError:
    """The error for a tokenizer path that cannot be read, saying what to pass instead."""
    name = os.fspath(path)
    if isinstance(exc, FileNotFoundError):
        return TokenizerFileError(f"no {what} at {name!r}; check the path")
    if isinstance(exc, IsADirectoryError):
        return TokenizerFileError(
            f"{name!r} is a directory, not a {what}; pass the path of the file inside it "
            "(e.g. os.path.join(directory, 'tokenizer.json'))"
        )
    return TokenizerFileError(f"cannot read the {what} {name!r}: {exc.strerror or exc}")


def _read_json(path: str | os.PathLike[str], expected_format: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise _unreadable(path, exc, "tokenizer file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerFileError(
            f"{os.fspath(path)!r} is not valid JSON ({exc}); the file is corrupted: save it again"
        ) from None
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise TokenizerFileError(
            f"{os.fspath(path)!r} is not a {expected_format} file (format: {found!r}); "
            "load it with the class that saved it"
        )
    if data.get("version") != _FORMAT_VERSION:
        raise TokenizerFileError(
            f"{os.fspath(path)!r} has format version {data.get('version')!r}, but this gptlab "
            f"reads version {_FORMAT_VERSION}; upgrade gptlab or re-save the tokenizer"
        )
    return data


def _write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    with atomic_write(path, mode="w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)
        handle.write("\n")


# --------------------------------------------------------------------------------------------
# Character tokenizer
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """One id per distinct character, in sorted order: the simplest tokenizer that works."""

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(
                    f"every entry of chars must be a single character, got {c!r}; "
                    "build the tokenizer with CharTokenizer.from_text(text)"
                )
        if len(set(chars)) != len(chars):
            dupes = sorted(c for c, n in Counter(chars).items() if n > 1)
            raise ValueError(f"chars must be distinct, these repeat: {dupes!r}")
        if not chars:
            raise ValueError(
                "a CharTokenizer needs at least one character; fit it on non-empty text"
            )
        self.chars: list[str] = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every distinct character of ``text`` (sorted by code point)."""
        _check_text(text)
        if not text:
            raise ValueError("cannot fit a CharTokenizer on empty text; pass the training text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Map each character to its id."""
        _check_text(text)
        try:
            return [self._stoi[c] for c in text]
        except KeyError as exc:
            raise ValueError(
                f"character {exc.args[0]!r} is not in the vocabulary of this CharTokenizer; "
                "refit it with CharTokenizer.from_text on text that contains it"
            ) from None

    def encode_ordinary(self, text: str) -> list[int]:
        """Same as :meth:`encode` (a CharTokenizer has no special tokens), so that every gptlab
        tokenizer, like tiktoken, can encode user text with ``encode_ordinary``."""
        return self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """Map ids back to characters and join them."""
        ids = _check_ids(ids)
        n = len(self.chars)
        for i in ids:
            if not 0 <= i < n:
                raise ValueError(f"token id {i} is out of range; valid ids are 0..{n - 1}")
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON (atomically)."""
        _write_json(path, {"format": _CHAR_FORMAT, "version": _FORMAT_VERSION, "chars": self.chars})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        """Read a tokenizer written by :meth:`save`."""
        data = _read_json(path, _CHAR_FORMAT)
        chars = data.get("chars")
        if not isinstance(chars, list):
            raise TokenizerFileError(
                f"{os.fspath(path)!r} has no 'chars' list; the file is corrupted"
            )
        try:
            return cls(chars)
        except ValueError as exc:
            raise TokenizerFileError(f"{os.fspath(path)!r} is corrupted: {exc}") from None

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------------
# Byte-pair encoding
# --------------------------------------------------------------------------------------------


def _bpe_split(piece: bytes, ranks: dict[bytes, int], max_rank: int | None = None) -> list[bytes]:
    """Split ``piece`` into tokens the way tiktoken does.

    Start from single bytes; repeatedly merge the adjacent pair whose concatenation has the lowest
    rank (the leftmost one on ties) until no adjacent pair is a token. ``max_rank`` ignores tokens
    of that rank and above (used to recover which pair produced a token).
    """
    inf = float("inf")

    def rank_of(start: int, end: int) -> float:
        r = ranks.get(piece[start:end])
        return inf if r is None or (max_rank is not None and r >= max_rank) else r

    bounds = list(range(len(piece) + 1))  # part i is piece[bounds[i]:bounds[i + 1]]
    pair_ranks = [rank_of(bounds[i], bounds[i + 2]) for i in range(len(bounds) - 2)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == inf:
            break
        i = pair_ranks.index(best)  # leftmost among equals
        del bounds[i + 1]
        del pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = rank_of(bounds[i], bounds[i + 2])
        if i > 0:
            pair_ranks[i - 1] = rank_of(bounds[i - 1], bounds[i + 1])
    return [piece[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


def _latin1(token: bytes) -> str:
    # Each byte becomes the code point of the same value: reversible and readable for ASCII.
    return token.decode("latin-1")


class _Descending:
    """Heap key that orders byte-pair keys from greatest to smallest (heapq is a min-heap)."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[bytes, bytes]) -> None:
        self.key = key

    def __lt__(self, other: _Descending) -> bool:
        return self.key > other.key


def _merge_word(word: tuple[int, ...], a: int, b: int, new: int) -> tuple[int, ...]:
    """Replace every non-overlapping occurrence of ``a, b`` (left to right) by ``new``."""
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _compile_pattern(pattern: Any) -> regex.Pattern[str]:
    """Compile a pre-tokenizer pattern, turning ``regex.error`` into a ValueError that says so."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a regex string, got {type(pattern).__name__}")
    try:
        return regex.compile(pattern)
    except regex.error as exc:
        raise ValueError(
            f"pattern {pattern!r} is not a valid regular expression ({exc}); fix it or use the "
            "default, gptlab.tokenizers.GPT2_SPLIT_PATTERN"
        ) from None


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``, with surrogates fixed up the way tiktoken does.

    Surrogates are not characters and have no UTF-8 form, yet a Python str can hold them: a
    surrogate pair becomes the character it stands for, a lone surrogate becomes U+FFFD.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def _check_special_tokens(special_tokens: Any) -> tuple[str, ...]:
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens must be a sequence of strings, got the string {special_tokens!r}; "
            f"wrap it: special_tokens=({special_tokens!r},)"
        )
    specials = tuple(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be distinct, got {specials!r}")
    return specials


class BPETokenizer:
    """Byte-level byte-pair encoding with GPT-2's pre-tokenizer and special tokens.

    ``vocab`` maps every id to its bytes (special tokens to their UTF-8 bytes), ``merges`` lists
    the pairs that built each multi-byte token in the order they were learned, and
    ``special_tokens`` maps each special string to its id. Ids are dense: ``0..vocab_size-1``.

    Encoding is tiktoken's algorithm: split the text on special tokens, cut each piece with
    ``pattern``, then inside each pre-token merge the adjacent pair whose concatenation has the
    lowest id until none is in the vocabulary.
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> None:
        special_tokens = dict(special_tokens or {})
        self._validate(vocab, merges, special_tokens, pattern)
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges: list[tuple[bytes, bytes]] = [tuple(m) for m in merges]  # type: ignore[misc]
        self.special_tokens: dict[str, int] = special_tokens
        self.pattern = pattern
        for s, i in special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._id_to_bytes = [self.vocab[i] for i in range(len(self.vocab))]
        self._ranks = {t: i for i, t in vocab.items()}  # ordinary tokens only: bytes -> id
        self._pat = _compile_pattern(pattern)
        self._special_res: dict[frozenset[str], re.Pattern[str]] = {}
        self._encode_chunk = functools.lru_cache(maxsize=_CHUNK_CACHE_SIZE)(self._bpe_chunk)

    @staticmethod
    def _validate(vocab: Any, merges: Any, special_tokens: dict[str, int], pattern: Any) -> None:
        if not isinstance(vocab, dict):
            raise TypeError(f"vocab must be a dict id -> bytes, got {type(vocab).__name__}")
        for i, t in vocab.items():
            if isinstance(i, bool) or not isinstance(i, int) or not isinstance(t, bytes) or not t:
                raise ValueError(f"vocab must map int ids to non-empty bytes, got {i!r}: {t!r}")
        tokens = set(vocab.values())
        if len(tokens) != len(vocab):
            raise ValueError("vocab has two ids with the same bytes; every token must be distinct")
        missing = [b for b in range(256) if bytes([b]) not in tokens]
        if missing:
            raise ValueError(
                f"vocab lacks {len(missing)} single bytes (e.g. {bytes([missing[0]])!r}); a "
                "byte-level BPE needs all 256 so that any text can be encoded"
            )
        for s, i in special_tokens.items():
            if not isinstance(s, str) or not s or isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(
                    f"special_tokens must map non-empty str -> int id, got {s!r}: {i!r}"
                )
            if i in vocab:
                raise ValueError(f"special token {s!r} has id {i}, which an ordinary token uses")
        ids = sorted(list(vocab) + list(special_tokens.values()))
        if ids != list(range(len(ids))):
            raise ValueError(
                "token ids (ordinary and special together) must be exactly 0..vocab_size-1 "
                "with no gaps or repeats"
            )
        by_id = sorted((i, t) for i, t in vocab.items() if len(t) > 1)
        if len(merges) != len(by_id):
            raise ValueError(
                f"there are {len(by_id)} multi-byte tokens but {len(merges)} merges; "
                "each multi-byte token needs exactly one merge"
            )
        rank = {t: i for i, t in vocab.items()}
        for (tok_id, token), merge in zip(by_id, merges, strict=True):
            if (
                not isinstance(merge, (tuple, list))
                or len(merge) != 2
                or not all(isinstance(p, bytes) for p in merge)
            ):
                raise ValueError(f"each merge must be a pair of bytes, got {merge!r}")
            a, b = merge
            if a + b != token or rank.get(a, tok_id) >= tok_id or rank.get(b, tok_id) >= tok_id:
                raise ValueError(
                    f"merge {merge!r} does not build token {tok_id} ({token!r}) from two "
                    "earlier tokens; merges must follow the order of the token ids"
                )
        _compile_pattern(pattern)

    # ---- construction ------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        verbose: bool = False,
        *,
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> BPETokenizer:
        """Learn merges from ``text`` until the vocabulary holds ``vocab_size`` tokens.

        Ids 0..255 are the single bytes, then one id per merge, then the special tokens. Each step
        merges the most frequent adjacent pair (ties: the greatest pair of byte strings). Special
        tokens are cut out of the text first, so they are never split or merged. Pair counts are
        kept up to date incrementally: a merge re-counts only the distinct pre-tokens containing
        the pair. If a pair rebuilds bytes that are already a token, that token's id is reused
        (the vocabulary never holds the same bytes twice).
        """
        _check_text(text)
        specials = _check_special_tokens(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must be at least {minimum} "
                f"(256 byte tokens + {len(specials)} special tokens); pass a larger vocab_size"
            )
        n_ordinary = vocab_size - len(specials)
        pat = _compile_pattern(pattern)

        # Count each distinct pre-token once, with its frequency.
        word_freq: Counter[str] = Counter()
        segments = _split_on(text, specials) if specials else [text]
        for segment in segments:
            word_freq.update(pat.findall(segment))
        words = [tuple(_utf8(w)) for w in word_freq]
        freqs = list(word_freq.values())

        vocab: list[bytes] = [bytes([b]) for b in range(256)]
        known: dict[bytes, int] = {t: i for i, t in enumerate(vocab)}
        merges: list[tuple[bytes, bytes]] = []

        # Pair counts and, for each pair, the words that contain it.
        counts: dict[tuple[int, int], int] = {}
        where: dict[tuple[int, int], set[int]] = {}
        for w, (word, f) in enumerate(zip(words, freqs, strict=True)):
            for pair in zip(word, word[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + f
                where.setdefault(pair, set()).add(w)

        def entry(pair: tuple[int, int], count: int) -> tuple[int, _Descending, int, int]:
            return (-count, _Descending((vocab[pair[0]], vocab[pair[1]])), pair[0], pair[1])

        heap = [entry(p, c) for p, c in counts.items()]
        heapq.heapify(heap)
        n_target = n_ordinary - 256
        while len(vocab) < n_ordinary and heap:
            neg_count, _, a, b = heapq.heappop(heap)
            if counts.get((a, b)) != -neg_count:
                continue  # stale entry: this pair's count changed after it was pushed
            merged = vocab[a] + vocab[b]
            new = known.get(merged)
            created = new is None
            if new is None:  # a pair may rebuild an existing token; then reuse its id
                new = len(vocab)
                vocab.append(merged)
                known[merged] = new
                merges.append((vocab[a], vocab[b]))
            # Re-count only the words that contain the pair: remove their old pairs, add the new.
            delta: dict[tuple[int, int], int] = {}
            for w in where.pop((a, b)):
                word, f = words[w], freqs[w]
                new_word = _merge_word(word, a, b, new)
                old_pairs = list(zip(word, word[1:], strict=False))
                new_pairs = list(zip(new_word, new_word[1:], strict=False))
                for p in old_pairs:
                    delta[p] = delta.get(p, 0) - f
                for p in new_pairs:
                    delta[p] = delta.get(p, 0) + f
                old_set, new_set = set(old_pairs), set(new_pairs)
                for p in old_set - new_set:
                    if p != (a, b):
                        where[p].discard(w)
                for p in new_set - old_set:
                    where.setdefault(p, set()).add(w)
                words[w] = new_word
            for p, d in delta.items():
                if d == 0:
                    continue
                c = counts.get(p, 0) + d
                if c > 0:
                    counts[p] = c
                    heapq.heappush(heap, entry(p, c))
                else:
                    counts.pop(p, None)
                    where.pop(p, None)
            if verbose and created and (len(merges) % 100 == 0 or len(vocab) == n_ordinary):
                print(
                    f"merge {len(merges)}/{n_target}: {vocab[a]!r} + {vocab[b]!r} -> id {new} "
                    f"(seen {-neg_count} times)"
                )
        if len(vocab) < n_ordinary:
            warnings.warn(
                f"the text ran out of pairs to merge after {len(merges)} merges; the tokenizer has "
                f"{len(vocab) + len(specials)} tokens instead of {vocab_size}. Train on more text "
                "or ask for a smaller vocab_size",
                stacklevel=2,
            )
        special_ids = {s: len(vocab) + k for k, s in enumerate(specials)}
        return cls(dict(enumerate(vocab)), merges, special_ids, pattern)

    @classmethod
    def from_tiktoken_file(
        cls,
        path: str | os.PathLike[str],
        special_tokens: dict[str, int] | None = None,
        pattern: str = GPT2_SPLIT_PATTERN,
    ) -> BPETokenizer:
        """Load a tiktoken ranks file (lines ``base64(token) rank``) and recover its merges.

        ``special_tokens`` defaults to ``{"<|endoftext|>": <number of ranks>}``.
        """
        try:
            data = pathlib.Path(path).read_bytes()
        except OSError as exc:
            raise _unreadable(path, exc, "ranks file") from None
        return cls._from_ranks(_parse_tiktoken(data, os.fspath(path)), special_tokens, pattern)

    @classmethod
    def gpt2(cls) -> BPETokenizer:
        """GPT-2's tokenizer (50,257 tokens) in pure Python, from the ranks shipped with gptlab."""
        ranks = _gpt2_ranks()
        vocab = {i: t for t, i in ranks.items()}
        return cls(vocab, _gpt2_merges(), {ENDOFTEXT: _GPT2_N_RANKS}, GPT2_SPLIT_PATTERN)

    @classmethod
    def _from_ranks(
        cls, ranks: dict[bytes, int], special_tokens: dict[str, int] | None, pattern: str
    ) -> BPETokenizer:
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: len(ranks)}
        return cls(
            {i: t for t, i in ranks.items()}, _recover_merges(ranks), special_tokens, pattern
        )

    # ---- encoding ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_bytes)

    def _bpe_chunk(self, chunk: str) -> tuple[int, ...]:
        piece = _utf8(chunk)
        token = self._ranks.get(piece)
        if token is not None:  # whole pre-token is one token (tiktoken takes this shortcut too)
            return (token,)
        return tuple(self._ranks[p] for p in _bpe_split(piece, self._ranks))

    def _known_specials(self, names: Iterable[str], argument: str) -> frozenset[str]:
        if isinstance(names, str):
            raise ValueError(
                f"{argument} must be 'all' or a set of special tokens, got {names!r}; "
                f"for one token write {argument}={{{names!r}}}"
            )
        try:
            chosen = frozenset(names)
        except TypeError:
            raise TypeError(
                f"{argument} must be 'all' or a set of special tokens, got {names!r}"
            ) from None
        unknown = sorted(chosen - set(self.special_tokens))
        if unknown:
            raise ValueError(
                f"{unknown!r} are not special tokens of this tokenizer; known: "
                f"{sorted(self.special_tokens)!r}"
            )
        return chosen

    def _special_sets(
        self, allowed_special: Any, disallowed_special: Any
    ) -> tuple[frozenset[str], frozenset[str]]:
        """(specials encoded as control tokens, specials whose text is an error), as tiktoken."""
        everything = frozenset(self.special_tokens)
        if allowed_special == "all":
            allowed = everything
        elif allowed_special == "none":
            allowed = frozenset()
            if disallowed_special == "all":  # "none" is gptlab's shorthand for plain text
                disallowed_special = ()
        elif isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special must be 'all', 'none' or a set of special tokens, got "
                f"{allowed_special!r}"
            )
        else:
            allowed = self._known_specials(allowed_special, "allowed_special")
        if disallowed_special == "all":
            return allowed, everything - allowed
        disallowed = self._known_specials(disallowed_special, "disallowed_special")
        if allowed & disallowed:
            raise ValueError(
                f"{sorted(allowed & disallowed)!r} are both allowed and disallowed; "
                "name each special token in at most one of the two"
            )
        return allowed, disallowed

    def _special_re(self, allowed: frozenset[str]) -> re.Pattern[str]:
        pat = self._special_res.get(allowed)
        if pat is None:
            # Longest first, so that of two specials starting at the same place the longer wins.
            alternatives = sorted(allowed, key=lambda s: (-len(s), s))
            pat = re.compile("|".join(re.escape(s) for s in alternatives))
            self._special_res[allowed] = pat
        return pat

    def _refuse_disallowed(self, text: str, disallowed: frozenset[str]) -> None:
        match = self._special_re(disallowed).search(text)
        if match is not None:
            token = match.group()
            raise ValueError(
                f"the text contains {token!r}, the text of a special token. To encode it as the "
                f"control token pass allowed_special={{{token!r}}} (or 'all'); to encode it as "
                "plain text use encode_ordinary(text) (or disallowed_special=())"
            )

    def _extend_ordinary(self, text: str, out: list[int]) -> None:
        encode_chunk = self._encode_chunk
        for chunk in self._pat.findall(text):
            out.extend(encode_chunk(chunk))

    def _encode_with(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Encode ``text``, turning the special tokens in ``allowed`` into their ids."""
        out: list[int] = []
        if not allowed:
            self._extend_ordinary(text, out)
            return out
        start = 0
        for m in self._special_re(allowed).finditer(text):
            self._extend_ordinary(text[start : m.start()], out)
            out.append(self.special_tokens[m.group()])
            start = m.end()
        self._extend_ordinary(text[start:], out)
        return out

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> token ids, with every special token's text encoded as plain text.

        Use it for text from users and files: a literal ``<|endoftext|>`` in it stays seven
        ordinary tokens and cannot end a document or a chat turn early.
        """
        _check_text(text)
        out: list[int] = []
        self._extend_ordinary(text, out)
        return out

    def encode(
        self,
        text: str,
        allowed_special: str | Iterable[str] = (),
        *,
        disallowed_special: str | Iterable[str] = "all",
    ) -> list[int]:
        """Text -> token ids, guarding special tokens as tiktoken does.

        A special token's text becomes its id only if ``allowed_special`` names it (a set of
        tokens, or ``"all"``). Text that contains a special token in ``disallowed_special``
        (``"all"``: every one not allowed) raises ValueError, so a prompt or a file cannot slip a
        control token in by accident; ``disallowed_special=()`` encodes it as plain text instead,
        as does :meth:`encode_ordinary`. ``allowed_special="none"`` is gptlab's shorthand for
        plain text too. Surrogates are fixed up like tiktoken: a lone one encodes as U+FFFD.
        """
        _check_text(text)
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        if disallowed:
            self._refuse_disallowed(text, disallowed)
        return self._encode_with(text, allowed)

    def encode_iterable(
        self,
        iterable: Iterable[str],
        allowed_special: str | Iterable[str] = (),
        *,
        disallowed_special: str | Iterable[str] = "all",
    ) -> Iterator[int]:
        """Encode a stream of strings (e.g. an open file) lazily, in constant memory.

        The result equals ``encode("".join(iterable), ...)`` with the same special-token
        arguments, which are checked at once. A disallowed special token's text raises
        ValueError when the stream reaches it, after the ids before it have been yielded.
        """
        if isinstance(iterable, (str, bytes)):
            raise TypeError(
                "encode_iterable expects an iterable of strings (e.g. an open file or a list of "
                "lines); for one string use encode(text)"
            )
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        return self._encode_pieces(iter(iterable), allowed, disallowed)

    def _encode_pieces(
        self, pieces: Iterator[str], allowed: frozenset[str], disallowed: frozenset[str]
    ) -> Iterator[int]:
        """The lazy part of :meth:`encode_iterable`.

        Text is held back only where appending more could still change the tokens: the last two
        pre-tokens (a contraction such as ``'ll`` spans three characters, whitespace looks one
        character ahead) and any tail that could be the start of a special token. Disallowed
        specials are searched in each piece plus the tail of the text before it that a special
        token could start in.
        """
        special_re = self._special_re(allowed) if allowed else None
        longest = max((len(s) for s in allowed), default=1)
        overlap = max((len(s) for s in disallowed), default=1) - 1
        seen_tail = ""
        buffer = ""
        for piece in pieces:
            _check_text(piece, "each item of the iterable")
            if disallowed:
                window = seen_tail + piece
                self._refuse_disallowed(window, disallowed)
                seen_tail = window[max(0, len(window) - overlap) :] if overlap else ""
            buffer += piece
            out: list[int] = []
            # A special token that starts before `safe` lies wholly inside the buffer.
            safe = len(buffer) - longest + 1
            if special_re is not None:
                while True:
                    m = special_re.search(buffer)
                    if m is None or m.start() >= safe:
                        break
                    self._extend_ordinary(buffer[: m.start()], out)
                    out.append(self.special_tokens[m.group()])
                    buffer = buffer[m.end() :]
                    safe = len(buffer) - longest + 1
            if safe > 0:
                matches = list(self._pat.finditer(buffer, 0, safe))
                if len(matches) > 2:
                    # Encode the settled pre-tokens as they are: re-running the regex on the
                    # prefix alone could join its last whitespace differently.
                    for m in matches[:-2]:
                        out.extend(self._encode_chunk(m.group()))
                    buffer = buffer[matches[-2].start() :]
            yield from out
        yield from self._encode_with(buffer, allowed)

    # ---- decoding ----------------------------------------------------------------------

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Token ids -> the raw bytes they stand for."""
        ids = _check_ids(ids)
        table = self._id_to_bytes
        if ids and (min(ids) < 0 or max(ids) >= len(table)):
            bad = next(i for i in ids if not 0 <= i < len(table))
            raise ValueError(f"token id {bad} is out of range; valid ids are 0..{len(table) - 1}")
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text. Byte sequences that are not valid UTF-8 (e.g. half a character)
        become the replacement character U+FFFD, as in GPT-2."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- persistence -------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer as readable JSON (atomically).

        Tokens are bytes; each is stored as the string whose code points equal its byte values
        (latin-1), so ASCII tokens read as themselves: ``" the"``.
        """
        data = {
            "format": _BPE_FORMAT,
            "version": _FORMAT_VERSION,
            "token_encoding": "latin-1: each character's code point is one byte of the token",
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "vocab": [_latin1(self.vocab[i]) for i in sorted(self._ranks.values())],
            "merges": [[_latin1(a), _latin1(b)] for a, b in self.merges],
        }
        _write_json(path, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, trust_pattern: bool = False) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`, checking that it is complete and consistent.

        The file's pre-tokenizer pattern must be one of :data:`KNOWN_PATTERNS`: a regular
        expression from a file can take exponential time on some texts. Pass
        ``trust_pattern=True`` to accept another one from a file you trust.
        """
        if not isinstance(trust_pattern, bool):
            raise TypeError(f"trust_pattern must be True or False, got {trust_pattern!r}")
        data = _read_json(path, _BPE_FORMAT)
        name = os.fspath(path)
        try:
            vocab_list, merges_list = data["vocab"], data["merges"]
            specials, pattern = data["special_tokens"], data["pattern"]
        except KeyError as exc:
            raise TokenizerFileError(
                f"{name!r} lacks the field {exc.args[0]!r}; the file is corrupted"
            ) from None
        if not trust_pattern and pattern not in KNOWN_PATTERNS.values():
            raise TokenizerFileError(
                f"{name!r} uses the pre-tokenizer pattern {str(pattern)[:80]!r}, which is not one "
                f"of gptlab's known patterns ({', '.join(KNOWN_PATTERNS)}). A regular expression "
                "can take exponential time on some texts; if you trust this file, load it with "
                "BPETokenizer.load(path, trust_pattern=True)"
            )
        try:
            if not isinstance(vocab_list, list) or not isinstance(merges_list, list):
                raise ValueError("'vocab' and 'merges' must be lists")
            if not isinstance(specials, dict):
                raise ValueError("'special_tokens' must be an object")
            tokens = [t.encode("latin-1") for t in vocab_list]
            merges = [(a.encode("latin-1"), b.encode("latin-1")) for a, b in merges_list]
            # Special tokens sit at their own ids; ordinary tokens fill the others in order.
            taken = set(specials.values())
            free = [i for i in range(len(tokens) + len(specials)) if i not in taken]
            return cls(dict(zip(free, tokens, strict=False)), merges, specials, pattern)
        except (ValueError, TypeError, AttributeError, UnicodeEncodeError) as exc:
            raise TokenizerFileError(f"{name!r} is corrupted or inconsistent: {exc}") from None

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={sorted(self.special_tokens)!r})"
        )


def _split_on(text: str, specials: Sequence[str]) -> list[str]:
    """Cut ``text`` at every special token (longest first), dropping the specials."""
    alternatives = sorted(specials, key=lambda s: (-len(s), s))
    return re.split("|".join(re.escape(s) for s in alternatives), text)


def _recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Find the pair that built each multi-byte token: BPE-encode it with only lower ranks.

    Tiktoken files store ranks, not merges; for a valid BPE vocabulary this leaves exactly two
    parts for every token.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _bpe_split(token, ranks, max_rank=rank)
        if len(parts) != 2:
            raise TokenizerFileError(
                f"token {token!r} (rank {rank}) cannot be built by merging two lower-ranked "
                "tokens; this is not a valid BPE ranks file"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _parse_tiktoken(data: bytes, name: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank_text = line.split()
            token, rank = base64.b64decode(token_b64, validate=True), int(rank_text)
        except ValueError:
            raise TokenizerFileError(
                f"{name!r} line {lineno} is not '<base64 token> <rank>': {line[:60]!r}; "
                "the ranks file is corrupted"
            ) from None
        if token in ranks:
            raise TokenizerFileError(f"{name!r} line {lineno}: token {token!r} appears twice")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerFileError(f"{name!r}: ranks must be exactly 0..{len(ranks) - 1}, each once")
    return ranks


def _read_gpt2_asset() -> bytes:
    resource = importlib.resources.files("gptlab") / "assets" / _GPT2_RANKS_FILE
    try:
        return resource.read_bytes()
    except FileNotFoundError:
        raise TokenizerFileError(
            f"gptlab's package data {_GPT2_RANKS_FILE} is missing; reinstall gptlab "
            "(pip install --force-reinstall gptlab)"
        ) from None


@functools.lru_cache(maxsize=1)
def _gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's ranks from package data, after checking the file's sha256."""
    data = _read_gpt2_asset()
    digest = hashlib.sha256(data).hexdigest()
    if digest != _GPT2_SHA256:
        raise TokenizerFileError(
            f"gptlab's package data {_GPT2_RANKS_FILE} is corrupted (sha256 {digest}, expected "
            f"{_GPT2_SHA256}); reinstall gptlab (pip install --force-reinstall gptlab)"
        )
    ranks = _parse_tiktoken(data, _GPT2_RANKS_FILE)
    if len(ranks) != _GPT2_N_RANKS:  # pragma: no cover - guarded by the hash
        raise TokenizerFileError(f"expected {_GPT2_N_RANKS} GPT-2 ranks, found {len(ranks)}")
    return ranks


@functools.lru_cache(maxsize=1)
def _gpt2_merges() -> tuple[tuple[bytes, bytes], ...]:
    return tuple(_recover_merges(_gpt2_ranks()))


def get_tokenizer(name: str = "gpt2") -> tiktoken.Encoding:
    """The fast (Rust) tiktoken encoding ``name``, built offline from gptlab's package data.

    The encoding is built once and shared by later calls.
    """
    if not isinstance(name, str) or name not in _KNOWN_TOKENIZERS:
        raise ValueError(
            f"unknown tokenizer {name!r}; known tokenizers: {', '.join(_KNOWN_TOKENIZERS)}"
        )
    return _gpt2_encoding()


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> tiktoken.Encoding:
    import tiktoken

    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=_gpt2_ranks(),
        special_tokens={ENDOFTEXT: _GPT2_N_RANKS},
        explicit_n_vocab=_GPT2_N_RANKS + 1,
    )


def encode_plain(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` in which special-token strings are plain text.

    User text (prompts, corpora, evaluation items) must never turn a typed ``<|endoftext|>`` or
    ``<|im_start|>`` into the control token: that would let a prompt end a document or open a
    chat turn. gptlab's tokenizers and tiktoken's encodings all have ``encode_ordinary``; any
    other tokenizer is asked for ``encode(text)``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    encode = getattr(tokenizer, "encode_ordinary", None)
    if encode is None:
        encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        raise TypeError(
            f"tokenizer must have encode_ordinary or encode, got {type(tokenizer).__name__}"
        )
    return list(encode(text))
