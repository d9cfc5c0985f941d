"""Logits processors: rules that shape what a model may say next, applied before sampling.

A *logits processor* is any callable ``(ids, logits) -> logits``: ``ids`` is the LongTensor
``(B, t)`` of every token so far (prompt included), ``logits`` the FloatTensor ``(B, V)`` the
model gave for the next token. It returns new logits of the same shape, usually the same values
with forbidden tokens set to ``-inf``. Generation applies processors in order
(:func:`apply_processors`) *before* temperature, top-k and top-p, so a forbidden token has
probability exactly 0 under every sampling method, and greedy decoding picks the best allowed one.

Processors here are stateless: each call re-reads the generated tokens (``ids[:, prompt_len:]``)
to find where it is, so they work with or without a KV cache, with batches, and when the model's
window slides (they need the whole sequence, not the window).

Text rules work on *bytes*, so that byte-level BPE, whose tokens may hold half a Chinese character
or several characters, is handled exactly like a character tokenizer: a token is allowed only if
the bytes it adds keep the text on a path that can still satisfy the rule.

* :class:`BanTokensProcessor`, :class:`AllowedTokensProcessor`: fixed sets of token ids.
* :class:`LineLengthProcessor`: ``n_lines`` lines of exactly ``line_length`` Han characters,
  each closed by its punctuation, then end-of-text (the form of a 绝句 or 律诗).
* :class:`AcrosticProcessor`: line ``i`` starts with a given character (藏头诗).
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from gptlab.tokenizers import ENDOFTEXT, CharTokenizer

__all__ = [
    "AcrosticProcessor",
    "AllowedTokensProcessor",
    "BanTokensProcessor",
    "ConstraintViolation",
    "HAN_CLASS",
    "LineLengthProcessor",
    "LogitsProcessor",
    "apply_processors",
    "is_han",
]

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# CJK Unified Ideographs: basic block, extension A, compatibility ideographs, extensions B-H and
# the compatibility supplement. Punctuation (，。) and radicals are not Han characters here.
_HAN_RANGES = (
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x323AF),
)


#: The Han blocks as the body of a regular-expression character class: ``f"[{HAN_CLASS}]"``.
HAN_CLASS = "".join(f"{chr(low)}-{chr(high)}" for low, high in _HAN_RANGES)
_HAN_CHAR = re.compile(f"[{HAN_CLASS}]")


def is_han(char: str) -> bool:
    """True when ``char`` is one Chinese (Han) character: the unit a poem's line is counted in."""
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"is_han expects a single character, got {char!r}")
    return _HAN_CHAR.match(char) is not None


class ConstraintViolation(ValueError):
    """The tokens generated so far already break a processor's rule, so it cannot continue.

    Raised when a processor sees text it would never have allowed: it was not applied from the
    first generated token, or ``prompt_len`` is wrong.
    """


# --------------------------------------------------------------------------------------------
# Applying processors
# --------------------------------------------------------------------------------------------


def apply_processors(
    processors: Sequence[LogitsProcessor], ids: torch.Tensor, logits: torch.Tensor
) -> torch.Tensor:
    """Run ``processors`` in order on ``logits`` ``(B, V)`` given ``ids`` ``(B, t)``.

    Raises ``ValueError`` when, after all of them, some row has no allowed token left (every
    logit ``-inf``): sampling from it would give NaN probabilities, and the cause is always two
    rules that contradict each other (e.g. an acrostic character the line-length rule forbids).
    """
    if isinstance(processors, (str, bytes)) or not isinstance(processors, Sequence):
        raise TypeError(
            f"processors must be a list of callables (ids, logits) -> logits, got "
            f"{type(processors).__name__}; wrap a single processor in a list"
        )
    for k, processor in enumerate(processors):
        if not callable(processor):
            raise TypeError(f"processors[{k}] is not callable: {processor!r}")
    _check_ids_logits(ids, logits)
    for processor in processors:
        out = processor(ids, logits)
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"logits processor {processor!r} must return a tensor of shape "
                f"{tuple(logits.shape)}, got {got}"
            )
        logits = out
    dead = (torch.isneginf(logits) | torch.isnan(logits)).all(dim=-1)
    if bool(dead.any()):
        rows = dead.nonzero().flatten().tolist()
        raise ValueError(
            f"the logits processors leave no allowed token for rows {rows} at step "
            f"{ids.shape[1]}: their rules contradict each other (check that every character an "
            "acrostic or allow-list asks for is one the other processors permit)"
        )
    return logits


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


def _check_ids_logits(ids: Any, logits: Any) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        raise TypeError(
            f"ids must be an integer tensor (B, t) of the tokens so far, got {_describe(ids)}"
        )
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise TypeError(
            f"logits must be a float tensor (B, V) for the next token, got {_describe(logits)}"
        )
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if ids.shape[0] != logits.shape[0]:
        raise ValueError(
            f"ids has {ids.shape[0]} rows but logits has {logits.shape[0]}: they must describe "
            "the same batch"
        )


def _masked(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``logits`` with every entry where ``allowed`` (bool, ``(B, V)`` or ``(V,)``) is False -inf."""
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


# --------------------------------------------------------------------------------------------
# Fixed token sets
# --------------------------------------------------------------------------------------------


def _check_token_ids(token_ids: Any, name: str) -> tuple[int, ...]:
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
        raise TypeError(
            f"{name} must be an iterable of int token ids, got {type(token_ids).__name__}; "
            "encode text with tokenizer.encode first"
        )
    ids = tuple(token_ids)
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{name} must hold non-negative int token ids, got {i!r}")
    return ids


def _vocab_mask(ids: tuple[int, ...], vocab_size: int, what: str) -> torch.Tensor:
    if ids and max(ids) >= vocab_size:
        raise ValueError(
            f"{what} token id {max(ids)} is outside the model's vocabulary of {vocab_size}; "
            "build the processor with the model's tokenizer"
        )
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[list(ids)] = True
    return mask


class BanTokensProcessor:
    """Forbid the given token ids at every step (e.g. a word list, or end-of-text too early)."""

    def __init__(self, token_ids: Iterable[int]) -> None:
        self.token_ids = _check_token_ids(token_ids, "token_ids")

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        _check_ids_logits(ids, logits)
        return _masked(logits, ~_vocab_mask(self.token_ids, logits.shape[-1], "a banned"))

    def __repr__(self) -> str:
        return f"BanTokensProcessor({len(self.token_ids)} tokens)"


class AllowedTokensProcessor:
    """Allow only the given token ids at every step (e.g. digits for a numeric answer)."""

    def __init__(self, token_ids: Iterable[int]) -> None:
        self.token_ids = _check_token_ids(token_ids, "token_ids")
        if not self.token_ids:
            raise ValueError("token_ids is empty: allowing no token leaves nothing to sample")

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        _check_ids_logits(ids, logits)
        return _masked(logits, _vocab_mask(self.token_ids, logits.shape[-1], "an allowed"))

    def __repr__(self) -> str:
        return f"AllowedTokensProcessor({len(self.token_ids)} tokens)"


# --------------------------------------------------------------------------------------------
# The vocabulary as bytes
# --------------------------------------------------------------------------------------------


class _Vocab:
    """Each token's bytes (``None`` for special tokens) and the end-of-text id, if any."""

    def __init__(self, tokenizer: Any) -> None:
        self.pieces: list[bytes | None]
        specials: dict[str, int]
        if isinstance(tokenizer, CharTokenizer):
            self.pieces = [c.encode("utf-8") for c in tokenizer.chars]
            specials = {}
        elif callable(getattr(tokenizer, "decode_single_token_bytes", None)):  # tiktoken
            specials = {s: tokenizer.encode_single_token(s) for s in tokenizer.special_tokens_set}
            self.pieces = []
            for i in range(tokenizer.n_vocab):
                try:
                    self.pieces.append(tokenizer.decode_single_token_bytes(i))
                except KeyError:  # a hole in the id range: never allowed
                    self.pieces.append(None)
        elif callable(getattr(tokenizer, "decode_bytes", None)):  # gptlab's BPETokenizer
            specials = dict(tokenizer.special_tokens)
            self.pieces = [tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
        else:
            raise TypeError(
                f"constraints need a gptlab CharTokenizer or BPETokenizer or a tiktoken encoding, "
                f"got {type(tokenizer).__name__}"
            )
        for i in specials.values():
            self.pieces[i] = None
        self.eot: int | None = specials.get(ENDOFTEXT)

    def __len__(self) -> int:
        return len(self.pieces)


_VOCABS: weakref.WeakKeyDictionary[Any, _Vocab] = weakref.WeakKeyDictionary()


def _vocab(tokenizer: Any) -> _Vocab:
    """The :class:`_Vocab` of ``tokenizer``, built once per tokenizer object (GPT-2's: ~1 s)."""
    with contextlib.suppress(KeyError, TypeError):  # TypeError: not weak-referenceable
        return _VOCABS[tokenizer]
    vocab = _Vocab(tokenizer)
    with contextlib.suppress(TypeError):
        _VOCABS[tokenizer] = vocab
    return vocab


def _utf8_length(lead: int) -> int:
    """How many bytes the UTF-8 character starting with byte ``lead`` has; 0 if not a lead byte."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return 0


def _is_han_prefix(piece: bytes) -> bool:
    """Is ``piece`` a proper, non-empty prefix of the UTF-8 encoding of some Han character?

    The characters that start with ``piece`` form one range of code points, from ``piece``
    filled up with the smallest continuation bytes (0x80) to it filled with the largest (0xBF);
    the prefix is a Han one when that range meets a Han block.
    """
    width = _utf8_length(piece[0]) if piece else 0
    if width < 2 or len(piece) >= width or any(not 0x80 <= b < 0xC0 for b in piece[1:]):
        return False
    # Overlong forms (F0 83 ... encodes a 3-byte character in 4) are not UTF-8: clamp them out.
    low = max(
        _code_point(piece + b"\x80" * (width - len(piece))), (0x80, 0x800, 0x10000)[width - 2]
    )
    high = _code_point(piece + b"\xbf" * (width - len(piece)))
    return any(low <= end and high >= start for start, end in _HAN_RANGES)


def _code_point(encoded: bytes) -> int:
    """The code point a complete UTF-8 sequence stands for (overlong forms included)."""
    code = encoded[0] & (0x7F >> len(encoded))
    for byte in encoded[1:]:
        code = code << 6 | (byte & 0x3F)
    return code


def _is_han_bytes(piece: bytes) -> bool:
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(text) == 1 and is_han(text)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Line length
# --------------------------------------------------------------------------------------------


class LineLengthProcessor:
    """Force ``n_lines`` lines of exactly ``line_length`` Han characters, then end-of-text.

    Inside a line only tokens made of Han characters are allowed, and only those that fit: a BPE
    token of three characters is forbidden when two remain, and a token holding part of a
    character is allowed only when the character can still be finished within the line. After
    ``line_length`` characters the line's ending (``line_ends[i % len(line_ends)]``, e.g. ``，``
    then ``。``; it may be longer, such as ``"。\\n"``) is forced token by token, and after the last
    line the end-of-text token ``eos_token_id`` (default: the tokenizer's ``<|endoftext|>``; a
    CharTokenizer has none, so pass e.g. the id of ``"\\n"``). Rows that go on past it (the
    padding ``generate`` adds to finished rows) get end-of-text again.

    ``prompt_len`` is where generation starts in ``ids``: the rule applies to ``ids[:,
    prompt_len:]``, so every row of a batch must have a prompt of that length.
    """

    def __init__(
        self,
        tokenizer: Any,
        line_length: int,
        n_lines: int,
        line_ends: Sequence[str] = ("，", "。"),
        *,
        prompt_len: int,
        eos_token_id: int | None = None,
    ) -> None:
        self.line_length = _check_int("line_length", line_length, 1)
        self.n_lines = _check_int("n_lines", n_lines, 1)
        self.prompt_len = _check_int("prompt_len", prompt_len, 0)
        self.line_ends = _check_line_ends(line_ends)
        self._vocab = _vocab(tokenizer)
        self.eos_token_id = self._check_eos(tokenizer, eos_token_id)
        self._ends = [e.encode("utf-8") for e in self.line_ends]
        self._analyse_vocabulary()
        for end in self._ends:
            if not self._end_tokens(end).any():
                raise ValueError(
                    f"no token of this tokenizer starts the line ending {end.decode()!r}; "
                    "refit the tokenizer on text that contains it or change line_ends"
                )
        if not (self._free_span >= 1).any():
            raise ValueError(
                "this tokenizer has no token made of Han characters, so no line can be written"
            )

    def _check_eos(self, tokenizer: Any, eos_token_id: int | None) -> int:
        if eos_token_id is None:
            if self._vocab.eot is None:
                raise ValueError(
                    f"{type(tokenizer).__name__} has no {ENDOFTEXT} token; pass eos_token_id= "
                    "the id that ends a poem (for a CharTokenizer e.g. tokenizer.encode('\\n')[0])"
                )
            return self._vocab.eot
        _check_int("eos_token_id", eos_token_id, 0)
        if eos_token_id >= len(self._vocab):
            raise ValueError(
                f"eos_token_id {eos_token_id} is outside the vocabulary of {len(self._vocab)}"
            )
        piece = self._vocab.pieces[eos_token_id]
        if piece is not None and any(map(is_han, piece.decode("utf-8", "ignore"))):
            raise ValueError(
                f"eos_token_id {eos_token_id} ({piece.decode('utf-8', 'replace')!r}) holds a Han "
                "character, so it could not be told apart from a line's text; pick another token"
            )
        return eos_token_id

    def _analyse_vocabulary(self) -> None:
        """Split every token into (leading continuation bytes, whole Han chars, partial char)."""
        free_span = torch.full((len(self._vocab),), -1, dtype=torch.long)
        # Tokens that start inside a character, by their leading continuation bytes.
        self._by_head: dict[bytes, list[tuple[int, int]]] = {}
        for i, piece in enumerate(self._vocab.pieces):
            parsed = _split_han_token(piece) if piece else None
            if parsed is None:
                continue
            head, span = parsed
            if head:
                self._by_head.setdefault(head, []).append((i, span))
            else:
                free_span[i] = span
        self._free_span = free_span
        self._end_cache: dict[bytes, torch.Tensor] = {}

    def _end_tokens(self, rest: bytes) -> torch.Tensor:
        """Tokens whose bytes are a non-empty prefix of ``rest`` (the unwritten part of an end)."""
        mask = self._end_cache.get(rest)
        if mask is None:
            mask = torch.tensor(
                [bool(p) and rest.startswith(p) for p in self._vocab.pieces], dtype=torch.bool
            )
            self._end_cache[rest] = mask
        return mask

    def _state(self, row: list[int]) -> tuple[int, int, bytes, int | None]:
        """(line, completed chars, pending partial char bytes, position in the line's ending)."""
        line, chars, pending, end_pos = 0, 0, b"", None
        for token in row:
            if line == self.n_lines:
                if token == self.eos_token_id:
                    continue  # padding after the poem
                raise ConstraintViolation(
                    f"token {token} follows the end of the poem; only eos_token_id may"
                )
            piece = self._vocab.pieces[token] if 0 <= token < len(self._vocab) else None
            if piece is None:
                raise ConstraintViolation(
                    f"token {token} (special or outside the vocabulary) appears inside line "
                    f"{line + 1} of the poem; apply the processor from the first generated token"
                )
            for k, byte in enumerate(piece):
                if line == self.n_lines:
                    raise ConstraintViolation(
                        f"token {token} carries {piece[k:]!r} past the poem's last ending"
                    )
                if end_pos is None:
                    pending += bytes([byte])
                    if len(pending) < max(_utf8_length(pending[0]), 1):
                        continue
                    if not _is_han_bytes(pending):
                        raise ConstraintViolation(
                            f"line {line + 1} holds {pending.decode('utf-8', 'replace')!r}, "
                            "which is not a Han character; is prompt_len right?"
                        )
                    chars, pending = chars + 1, b""
                    if chars == self.line_length:
                        end_pos = 0
                    continue
                end = self._ends[line % len(self._ends)]
                if byte != end[end_pos]:
                    raise ConstraintViolation(f"line {line + 1} does not end with {end.decode()!r}")
                end_pos += 1
                if end_pos == len(end):
                    line, chars, end_pos = line + 1, 0, None
        return line, chars, pending, end_pos

    def _allowed(self, row: list[int], vocab_size: int) -> torch.Tensor:
        line, chars, pending, end_pos = self._state(row)
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        if line == self.n_lines:
            allowed[self.eos_token_id] = True
            return allowed
        n = len(self._vocab)
        if end_pos is not None:
            allowed[:n] = self._end_tokens(self._ends[line % len(self._ends)][end_pos:])
            return allowed
        left = self.line_length - chars  # characters still to write, the pending one included
        if not pending:
            allowed[:n] = (self._free_span >= 1) & (self._free_span <= left)
            return allowed
        need = _utf8_length(pending[0])
        for head, tokens in self._by_head.items():
            joined = pending + head
            if len(joined) < need and _is_han_prefix(joined):
                # the token only continues the character: it must be all head (span 0)
                ids = [i for i, span in tokens if span == 0]
            elif len(joined) == need and _is_han_bytes(joined):
                ids = [i for i, span in tokens if 1 + span <= left]
            else:
                continue
            allowed[ids] = True
        return allowed

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        _check_ids_logits(ids, logits)
        if logits.shape[-1] < len(self._vocab):
            raise ValueError(
                f"logits cover {logits.shape[-1]} tokens but the tokenizer has {len(self._vocab)}"
                "; build the processor with the model's own tokenizer"
            )
        if ids.shape[1] < self.prompt_len:
            raise ValueError(
                f"ids has {ids.shape[1]} tokens, fewer than prompt_len={self.prompt_len}; pass "
                "the whole sequence so far (prompt included), not the model's window"
            )
        rows = ids[:, self.prompt_len :].tolist()
        allowed = torch.stack([self._allowed(row, logits.shape[-1]) for row in rows])
        return _masked(logits, allowed)

    def __repr__(self) -> str:
        return (
            f"LineLengthProcessor(line_length={self.line_length}, n_lines={self.n_lines}, "
            f"line_ends={self.line_ends!r}, prompt_len={self.prompt_len})"
        )


def _check_line_ends(line_ends: Any) -> tuple[str, ...]:
    if isinstance(line_ends, str) or not isinstance(line_ends, Sequence) or not line_ends:
        raise TypeError(
            f"line_ends must be a non-empty tuple of strings such as ('，', '。'), got "
            f"{line_ends!r}"
        )
    for end in line_ends:
        if not isinstance(end, str) or not end:
            raise ValueError(f"every line ending must be a non-empty str, got {end!r}")
        if any(is_han(c) for c in end):
            raise ValueError(
                f"line ending {end!r} contains a Han character; endings are punctuation or "
                "newlines, otherwise a line's text and its ending could not be told apart"
            )
    return tuple(line_ends)


def _split_han_token(piece: bytes) -> tuple[bytes, int] | None:
    """``(head, span)`` if ``piece`` can sit inside a line of Han characters, else ``None``.

    ``head`` is the run of continuation bytes a token may start with (the end of a character
    begun by the previous token); ``span`` counts the characters the rest starts: whole ones
    plus one for a trailing partial character.
    """
    k = 0
    while k < len(piece) and 0x80 <= piece[k] < 0xC0:
        k += 1
    if k > 3:
        return None
    head, rest, span = piece[:k], piece[k:], 0
    j = 0
    while j < len(rest):
        width = _utf8_length(rest[j])
        if width == 0:
            return None
        if j + width > len(rest):  # a character this token only begins
            return (head, span + 1) if _is_han_prefix(rest[j:]) else None
        if not _is_han_bytes(rest[j : j + width]):
            return None
        span += 1
        j += width
    return head, span


# --------------------------------------------------------------------------------------------
# Acrostic
# --------------------------------------------------------------------------------------------


class AcrosticProcessor:
    """Make line ``i`` of the generated text start with ``heads[i]`` (藏头诗).

    A line ends at any run of the characters in ``line_end_chars`` (``"，。"`` and newline by
    default, so ``"。\\n"`` is one line break). At the start of line ``i < len(heads)`` only tokens
    that begin with ``heads[i]`` (or with part of its bytes, for byte-level BPE) are allowed;
    while heads remain, tokens that hold a line break followed by more text are forbidden, so
    every line starts at a token boundary where the rule can see it. After the last head the
    processor allows everything. Combine it with :class:`LineLengthProcessor` for the form.
    """

    def __init__(
        self,
        tokenizer: Any,
        heads: str | Sequence[str],
        line_end_chars: str = "，。？！；\n",
        *,
        prompt_len: int,
    ) -> None:
        self.heads = _check_heads(heads)
        if not isinstance(line_end_chars, str) or not line_end_chars:
            raise ValueError(f"line_end_chars must be a non-empty str, got {line_end_chars!r}")
        clash = [h for h in self.heads if any(c in line_end_chars for c in h)]
        if clash:
            raise ValueError(f"heads {clash!r} contain line-break characters; remove them")
        self.line_end_chars = line_end_chars
        self.prompt_len = _check_int("prompt_len", prompt_len, 0)
        self._vocab = _vocab(tokenizer)
        marks = "|".join(re.escape(c.encode("utf-8")).decode("latin-1") for c in line_end_chars)
        self._breaks = re.compile(f"(?:{marks})+".encode("latin-1"))
        self._crossing = torch.tensor(
            [bool(p) and self._crosses(p) for p in self._vocab.pieces], dtype=torch.bool
        )
        self._starts: dict[bytes, torch.Tensor] = {}
        for k, head in enumerate(self.heads):
            if not self._starting(head.encode("utf-8")).any():
                raise ValueError(
                    f"no token of this tokenizer can start heads[{k}] = {head!r}; refit the "
                    "tokenizer on text that contains it"
                )

    def _crosses(self, piece: bytes) -> bool:
        """Does this token hold a line break followed by more text?"""
        return any(m.end() < len(piece) for m in self._breaks.finditer(piece))

    def _starting(self, rest: bytes) -> torch.Tensor:
        """Tokens that begin with ``rest`` or are a prefix of it."""
        mask = self._starts.get(rest)
        if mask is None:
            mask = torch.tensor(
                [
                    bool(p) and (p.startswith(rest) or rest.startswith(p))
                    for p in self._vocab.pieces
                ],
                dtype=torch.bool,
            )
            self._starts[rest] = mask
        return mask

    def _allowed(self, row: list[int], vocab_size: int) -> torch.Tensor:
        text = b"".join(
            p for t in row if 0 <= t < len(self._vocab) and (p := self._vocab.pieces[t])
        )
        breaks = list(self._breaks.finditer(text))
        line = len(breaks)
        content = text[breaks[-1].end() :] if breaks else text
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        if line >= len(self.heads):
            return allowed
        n = len(self._vocab)
        head = self.heads[line].encode("utf-8")
        if line + 1 < len(self.heads):
            allowed[:n] &= ~self._crossing
        if content.startswith(head):
            return allowed
        if not head.startswith(content):
            raise ConstraintViolation(
                f"line {line + 1} starts with {content.decode('utf-8', 'replace')!r}, not "
                f"{self.heads[line]!r}; apply the processor from the first generated token"
            )
        allowed[:n] &= self._starting(head[len(content) :])
        allowed[n:] = False
        return allowed

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        _check_ids_logits(ids, logits)
        if ids.shape[1] < self.prompt_len:
            raise ValueError(
                f"ids has {ids.shape[1]} tokens, fewer than prompt_len={self.prompt_len}; pass "
                "the whole sequence so far (prompt included)"
            )
        rows = ids[:, self.prompt_len :].tolist()
        allowed = torch.stack([self._allowed(row, logits.shape[-1]) for row in rows])
        return _masked(logits, allowed)

    def __repr__(self) -> str:
        return f"AcrosticProcessor(heads={''.join(self.heads)!r}, prompt_len={self.prompt_len})"


def _check_heads(heads: Any) -> tuple[str, ...]:
    if isinstance(heads, str):
        heads = tuple(heads)
    if not isinstance(heads, Sequence) or not heads:
        raise ValueError(
            f"heads must be a non-empty str (one character per line) or list of strings, got "
            f"{heads!r}"
        )
    for h in heads:
        if not isinstance(h, str) or not h or h.isspace():
            raise ValueError(f"every head must be a non-empty, non-blank str, got {h!r}")
    return tuple(heads)
