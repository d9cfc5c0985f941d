"""Turning next-token logits into text: greedy, temperature, top-k, top-p, repetition penalty.

The filters are small pure functions on a ``(B, vocab_size)`` logits tensor so a chapter can
apply and plot them one at a time. :func:`generate` chains them in the order Hugging Face uses
(repetition penalty, temperature, top-k, top-p) and runs the model with a KV cache;
:func:`stream` yields the same tokens one by one, and :func:`decode_stream` /
:func:`stream_text` turn them into text pieces that never split a UTF-8 character.

Any model that answers :class:`LanguageModel` (gptlab's GPT and Llama) goes through here.
"""

from __future__ import annotations

import codecs
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch

from gptlab.model import check_fits_in_memory, check_token_ids
from gptlab.tokenizers import CharTokenizer

__all__ = [
    "LanguageModel",
    "apply_repetition_penalty",
    "apply_temperature",
    "decode_stream",
    "generate",
    "stream",
    "stream_text",
    "top_k_filter",
    "top_p_filter",
]


class LanguageModel(Protocol):
    """What generation needs from a model; gptlab's GPT and Llama both provide it.

    ``config`` has ``block_size`` and ``vocab_size``; ``next_token_logits(idx, kv_cache=...)``
    returns ``(B, vocab_size)``; ``new_kv_cache(batch_size)`` returns an empty cache.
    """

    config: Any
    training: bool

    def next_token_logits(self, idx: torch.Tensor, *, kv_cache: Any = None) -> torch.Tensor: ...

    def new_kv_cache(self, batch_size: int = 1) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by ``temperature``: below 1 sharpens the distribution, above 1 flattens it."""
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 to divide by it, got {temperature}; "
            "for greedy decoding use generate(..., temperature=0)"
        )
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits per row (ties with the k-th are kept), set the rest to -inf."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {k!r}; use None to disable top-k")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the fewest most-likely tokens whose probabilities add up to >= ``p``."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}; 1.0 keeps every token")
    if p == 1:
        return logits
    # A stable sort breaks ties by vocabulary order (as argmax does), so the nucleus is the same
    # on every run and device.
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
    remove_sorted = mass_before >= p  # the top token always has mass_before 0, so it stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def apply_repetition_penalty(
    logits: torch.Tensor, previous: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make tokens that already appear in ``previous`` ``(B, T)`` less likely (CTRL, Keskar 2019).

    A seen token's logit is divided by ``penalty`` if positive and multiplied by it if negative,
    so ``penalty > 1`` always lowers it. ``penalty = 1`` changes nothing.
    """
    if not penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}; 1.0 disables it")
    if penalty == 1:
        return logits
    seen = torch.gather(logits, 1, previous)  # (B, T) logits of the tokens already present
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def _check_model(model: Any) -> None:
    missing = [
        name
        for name in ("next_token_logits", "new_kv_cache", "train", "eval")
        if not callable(getattr(model, name, None))
    ]
    config = getattr(model, "config", None)
    for field in ("block_size", "vocab_size"):
        value = getattr(config, field, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            missing.append(f"config.{field}")
    if missing:
        raise TypeError(
            f"model must be a gptlab language model (GPT or Llama), got {type(model).__name__}, "
            f"which lacks {', '.join(missing)}"
        )


def _check_prompt(model: LanguageModel, idx: Any) -> None:
    """Token ids ``(B, T)`` with B, T >= 1, checked as the model's forward would check them."""
    check_token_ids(idx, model.config.vocab_size)
    if idx.dim() != 2:
        raise ValueError(
            f"idx must be a 2-D (batch, time) tensor of token ids, got {tuple(idx.shape)}; "
            "for one prompt use torch.tensor([ids])"
        )
    if idx.shape[0] == 0:
        raise ValueError("idx has no prompts (batch size 0); pass at least one row")
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty; pass at least one token (e.g. <|endoftext|>, 50256)")


def _warn_if_longer_than_window(model: LanguageModel, idx: torch.Tensor, stacklevel: int) -> None:
    """A prompt longer than the window is allowed (generation slides: the model sees only the
    last ``block_size`` tokens), but its start is then ignored, so say so once per call."""
    block_size = model.config.block_size
    if idx.shape[1] > block_size:
        warnings.warn(
            f"the prompt is {idx.shape[1]} tokens but the model's block_size is {block_size}: it "
            f"sees only the last {block_size}. Crop it yourself (idx[:, -{block_size}:]) to "
            "silence this warning",
            stacklevel=stacklevel + 1,
        )


def _check_int(name: str, value: Any, low: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}{hint}")


def _check_real(
    name: str, value: Any, condition: str, holds: Callable[[float], bool], hint: str
) -> None:
    """``value`` is a real number (not a bool, not NaN) for which ``holds(value)`` is true."""
    is_real = not isinstance(value, bool) and isinstance(value, (int, float))
    if not (is_real and not math.isnan(value) and holds(value)):
        raise ValueError(f"{name} must be {condition}, got {value!r}; {hint}")


def _check_eos(eos_token_id: Any, vocab_size: int) -> None:
    """``eos_token_id`` is None or an int id in the vocabulary."""
    if eos_token_id is not None and (
        isinstance(eos_token_id, bool)
        or not isinstance(eos_token_id, int)
        or not 0 <= eos_token_id < vocab_size
    ):
        raise ValueError(
            f"eos_token_id {eos_token_id!r} is not a token id: it must be an int in the "
            f"vocabulary [0, {vocab_size}); pass None to generate max_new_tokens tokens"
        )


def _validate(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_token_id: int | None,
    num_return_sequences: int,
) -> None:
    """Check every argument of generate/stream before anything runs (or returns early)."""
    _check_model(model)
    _check_prompt(model, idx)
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_int("num_return_sequences", num_return_sequences, 1)
    _check_real("temperature", temperature, ">= 0 (0 means greedy)", lambda t: t >= 0, "e.g. 0.8")
    if top_k is not None:
        _check_int("top_k", top_k, 1, "; use None to disable top-k")
    if top_p is not None:
        _check_real("top_p", top_p, "in (0, 1]", lambda p: 0 < p <= 1, "None or 1.0 disables it")
    _check_real(
        "repetition_penalty",
        repetition_penalty,
        "> 0",
        lambda r: r > 0,
        "1.0 disables it, values like 1.2 discourage repeats",
    )
    _check_eos(eos_token_id, model.config.vocab_size)
    n_rows = idx.shape[0] * num_return_sequences
    check_fits_in_memory(
        n_rows * (idx.shape[1] + max_new_tokens) * 8,  # the int64 output
        f"the output of {n_rows:,} sequences of {idx.shape[1]} + {max_new_tokens:,} tokens",
        idx.device,
        "ask for fewer new tokens (max_new_tokens) or fewer sequences",
    )


def _next_token(
    logits: torch.Tensor,
    previous: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` ``(B, V)``; returns ``(B,)``."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, previous, repetition_penalty)
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _decode(
    model: LanguageModel,
    out: torch.Tensor,
    prompt_len: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_token_id: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
    logits_processors: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = (),
) -> Iterator[tuple[int, torch.Tensor]]:
    """Fill ``out[:, prompt_len:]`` one column at a time, yielding ``(t, tokens)`` after each.

    With a cache the prompt is run once (prefill) and every later step feeds one token. Once the
    sequence outgrows ``block_size`` the window slides: absolute position embeddings change the
    keys of every kept token, so the cache cannot be reused and we recompute over the last
    ``block_size`` tokens, exactly as the uncached path does.
    """
    block_size = model.config.block_size
    finished = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    # A prompt that fills the window leaves the cache nothing to save: the window slides at once.
    cache = model.new_kv_cache(out.shape[0]) if use_cache and prompt_len < block_size else None
    for t in range(prompt_len, out.shape[1]):
        if cache is not None and t > block_size:
            cache = None  # the window slides from here on: recompute (see above)
        if cache is None:
            logits = model.next_token_logits(out[:, max(0, t - block_size) : t])
        else:
            logits = model.next_token_logits(out[:, cache.length : t], kv_cache=cache)
        if logits_processors:  # constraints see the whole sequence so far, prompt included
            from gptlab.constraints import apply_processors

            logits = apply_processors(logits_processors, out[:, :t], logits)
        token = _next_token(
            logits, out[:, :t], temperature, top_k, top_p, repetition_penalty, generator
        )
        if eos_token_id is not None:
            token = token.masked_fill(finished, eos_token_id)  # finished rows are padded with eos
            finished |= token == eos_token_id
        out[:, t] = token
        yield t, token
        if eos_token_id is not None and bool(finished.all()):
            return


@torch.no_grad()
def generate(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    num_return_sequences: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    logits_processors: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = (),
) -> torch.Tensor:
    """Continue each prompt in ``idx`` ``(B, T)`` by up to ``max_new_tokens`` tokens.

    Returns a LongTensor ``(B * num_return_sequences, T + new)``: the prompts (each repeated
    ``num_return_sequences`` times, consecutively) followed by the generated tokens.
    ``temperature=0`` is greedy decoding (argmax); otherwise tokens are drawn with
    ``torch.multinomial`` from ``generator`` (pass a seeded ``torch.Generator`` to reproduce).
    A row that emits ``eos_token_id`` is finished and padded with it; generation stops early
    once every row is finished. The model sees at most the last ``block_size`` tokens; a prompt
    longer than that is allowed, with a warning. Runs in eval mode without gradients and
    restores the model's training mode afterwards. ``logits_processors`` (see
    :mod:`gptlab.constraints`) are callables ``(ids (B, t), logits (B, V)) -> logits`` applied in
    order to every step's logits before the penalty, temperature, top-k and top-p: a general
    hook for constrained decoding (line lengths, forced punctuation, acrostics, banned tokens).
    """
    _validate(
        model,
        idx,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        eos_token_id,
        num_return_sequences,
    )
    _warn_if_longer_than_window(model, idx, stacklevel=3)  # 3: past the no_grad wrapper
    idx = idx.repeat_interleave(num_return_sequences, dim=0)  # (B * n, T)
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    end = T
    was_training = model.training
    model.eval()
    try:
        for t, _ in _decode(
            model,
            out,
            T,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            eos_token_id,
            generator,
            use_cache,
            _check_processors(logits_processors),
        ):
            end = t + 1
    finally:
        model.train(was_training)
    return out[:, :end]


def stream(
    model: LanguageModel,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    logits_processors: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = (),
) -> Iterator[int]:
    """Yield new token ids one at a time for a single prompt (``(1, T)`` or ``(T,)``).

    Same arguments and, with the same seed, the same tokens as :func:`generate`; stops after
    yielding ``eos_token_id``. Arguments are checked at once, not at the first ``next()``. To
    print text as it arrives, use :func:`stream_text`: one token may be half a character.
    """
    if isinstance(idx, torch.Tensor) and idx.dim() == 1:
        idx = idx[None]
    if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.shape[0] > 1:
        raise ValueError(
            f"stream takes one prompt (batch size 1), got batch size {idx.shape[0]}; "
            "use generate() for batches"
        )
    _validate(
        model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, 1
    )
    _warn_if_longer_than_window(model, idx, stacklevel=2)
    T = idx.shape[1]
    out = torch.empty(1, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    steps = _decode(
        model,
        out,
        T,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        eos_token_id,
        generator,
        use_cache,
        _check_processors(logits_processors),
    )
    return _stream_tokens(model, steps)


@torch.no_grad()
def _stream_tokens(
    model: LanguageModel, steps: Iterator[tuple[int, torch.Tensor]]
) -> Iterator[int]:
    was_training = model.training
    model.eval()
    try:
        for _, token in steps:
            yield int(token[0])
    finally:
        model.train(was_training)


def stream_text(
    model: LanguageModel, tokenizer: Any, idx: torch.Tensor, max_new_tokens: int, **options: Any
) -> Iterator[str]:
    """:func:`stream`, decoded: yield the new text piece by piece, never half a character.

    ``options`` are :func:`stream`'s keyword arguments. The pieces join to
    ``tokenizer.decode(new_ids)``; see :func:`decode_stream`.
    """
    return decode_stream(tokenizer, stream(model, idx, max_new_tokens, **options))


def decode_stream(tokenizer: Any, ids: Iterable[int]) -> Iterator[str]:
    """Decode token ids as they arrive into text pieces that never split a UTF-8 character.

    A byte-level BPE token can end in the middle of a character (GPT-2 spells 你 as two tokens,
    most emoji as two or three), and decoding it alone gives U+FFFD. Here the bytes of an
    unfinished character are held back until the token that completes it arrives, so
    ``"".join(decode_stream(tok, ids)) == tok.decode(ids)``: U+FFFD appears only where the whole
    sequence is not valid UTF-8. Works with gptlab's BPETokenizer and CharTokenizer and with
    tiktoken encodings.
    """
    token_bytes = _token_bytes(tokenizer)
    return _decode_pieces(token_bytes, ids)


def _token_bytes(tokenizer: Any) -> Callable[[int], bytes]:
    """The function id -> the bytes of that one token, for each kind of tokenizer we support."""
    if callable(getattr(tokenizer, "decode_single_token_bytes", None)):  # tiktoken
        return _tiktoken_bytes(tokenizer)
    if callable(getattr(tokenizer, "decode_bytes", None)):  # gptlab's BPETokenizer
        return lambda i: tokenizer.decode_bytes([i])
    if isinstance(tokenizer, CharTokenizer):  # every token is a whole character
        return lambda i: tokenizer.decode([i]).encode("utf-8")
    raise TypeError(
        f"decode_stream needs a tokenizer that can give each token's bytes (a gptlab "
        f"BPETokenizer or CharTokenizer, or a tiktoken encoding), got {type(tokenizer).__name__}"
    )


def _tiktoken_bytes(encoding: Any) -> Callable[[int], bytes]:
    def token_bytes(i: int) -> bytes:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"token ids must be ints, got {i!r} ({type(i).__name__})")
        try:
            return encoding.decode_single_token_bytes(i)
        except (KeyError, OverflowError, ValueError):
            raise ValueError(
                f"token id {i} is not in the {encoding.name} vocabulary (0..{encoding.n_vocab - 1})"
            ) from None

    return token_bytes


def _decode_pieces(token_bytes: Callable[[int], bytes], ids: Iterable[int]) -> Iterator[str]:
    # An incremental UTF-8 decoder keeps an unfinished character's bytes for the next call and
    # replaces invalid bytes exactly as bytes.decode("utf-8", errors="replace") does.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in ids:
        piece = decoder.decode(token_bytes(i))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)  # bytes of a character the ids never finished
    if tail:
        yield tail


def _check_processors(processors: Any) -> tuple[Callable[..., torch.Tensor], ...]:
    """``logits_processors`` must be a list (or tuple) of callables, checked before decoding."""
    if isinstance(processors, (str, bytes)) or not isinstance(processors, Sequence):
        raise TypeError(
            "logits_processors must be a list of callables (ids, logits) -> logits, got "
            f"{type(processors).__name__}; wrap a single processor in a list"
        )
    for k, processor in enumerate(processors):
        if not callable(processor):
            raise TypeError(f"logits_processors[{k}] is not callable: {processor!r}")
    return tuple(processors)
