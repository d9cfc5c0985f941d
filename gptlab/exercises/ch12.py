"""Checkers for the exercises of chapter 12, "Serving a model behind an API".

Each checker compares the reader's answer with what gptlab's server does (its SSE chunks from
:mod:`gptlab.serve.schemas`, its stop-string logic in :class:`~gptlab.serve.backend.TextAssembler`,
its ChatML template on SmolLM2's real tokenizer) or with stated properties (a retry policy), and
recognises the usual mistakes so that the hint names the one the reader made.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from typing import Any

from gptlab.exercises import NotSolved, as_number, exercise
from gptlab.exercises import require_callable as _callable
from gptlab.serve.backend import TextAssembler

__all__ = [
    "StopFilter",
    "check_count_prompt_tokens",
    "check_parse_sse",
    "check_retry_delay",
    "check_stop_filter",
    "count_prompt_tokens",
    "parse_sse",
    "retry_delay",
]

CHATML_MARKERS = {"<|im_start|>", "<|im_end|>"}
RETRY_CAP = 60.0  # seconds: the longest backoff retry_delay may choose on its own


# --- reference answers -------------------------------------------------------------------------


def parse_sse(chunks: Iterable[bytes]) -> tuple[str, str | None]:
    """The reply text and finish_reason of choice 0 of a streamed chat completion.

    ``chunks`` are the raw bytes as the network delivers them: a chunk may end anywhere, in the
    middle of a line or of a UTF-8 character. Lines end in ``\\n`` or ``\\r\\n``; an event is a
    group of lines ended by a blank line; ``data: `` lines carry JSON; lines that start with
    ``:`` are comments (keep-alives); ``data: [DONE]`` ends the stream.
    """
    buffer = b""
    text, finish = [], None
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")  # the last piece may be an incomplete line
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line.startswith("data:"):
                continue  # blank line (end of event), comment, or another field
            data = line[5:].lstrip(" ")
            if data == "[DONE]":
                return "".join(text), finish
            for choice in json.loads(data).get("choices", []):
                if choice.get("index", 0) != 0:
                    continue
                text.append(choice.get("delta", {}).get("content") or "")
                finish = choice.get("finish_reason") or finish
    return "".join(text), finish


class StopFilter:
    """Streams text pieces through, cut before the first stop string, never sending too early.

    ``add(piece)`` returns the text that is now safe to send: everything except the longest end
    of the text that begins a stop string (it may turn into one). Once a stop string appears,
    the text before its earliest occurrence is sent and everything after is dropped.
    ``finish()`` returns what is still held back when the stream ends without a stop string.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = tuple(stop)
        self.held = ""
        self.stopped = False

    def add(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        hold = max(
            (k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0
        )
        self.held = text[len(text) - hold :]
        return text[: len(text) - hold]

    def finish(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def count_prompt_tokens(messages: Sequence[dict[str, str]], tokenizer: Any) -> int:
    """Tokens of a chat prompt for SmolLM2 as the server builds it (``usage.prompt_tokens``).

    The ChatML text includes SmolLM2's default system prompt when the conversation has none and
    ends with ``<|im_start|>assistant\\n``; its markers are single special tokens.
    """
    from gptlab.pretrained import render_chatml

    return len(tokenizer.encode(render_chatml(messages), allowed_special=CHATML_MARKERS))


def retry_delay(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (0, 1, ...) after an HTTP 429.

    Exponential backoff with "full jitter": a uniform draw in ``[0, min(60, 0.5 * 2**attempt)]``,
    added to the server's ``Retry-After`` when it sent one (waiting less would only earn
    another 429, and the jitter spreads out the clients that all got one at the same moment).
    """
    ceiling = RETRY_CAP if attempt >= 7 else min(RETRY_CAP, 0.5 * 2**attempt)
    return (retry_after or 0.0) + rng.uniform(0.0, ceiling)


# --- shared helpers -------------------------------------------------------------------------------


def _call(fn: Any, *args: Any, what: str) -> Any:
    """Call the reader's function; turn a crash into a hint that says which input caused it."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except NotSolved:
        raise
    except Exception as exc:
        raise NotSolved(f"{what}: your code raised {type(exc).__name__}: {exc}") from None


# --- 12.1 parse raw SSE bytes ---------------------------------------------------------------------


def _sse_body(pieces: Sequence[str], finish: str, *, keepalive: bool, crlf: bool) -> bytes:
    """A streamed chat completion as gptlab's server sends it (plus optional extras)."""
    from gptlab.serve.schemas import chat_chunk, usage

    def event(data: Any) -> str:
        payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        return f"data: {payload}\n\n"

    rid, model, created = "chatcmpl-test", "smollm2-135m-instruct", 1700000000
    parts = [event(chat_chunk(rid, model, created, 0, {"role": "assistant", "content": ""}))]
    for i, piece in enumerate(pieces):
        parts.append(event(chat_chunk(rid, model, created, 0, {"content": piece})))
        if keepalive and i % 2 == 0:
            parts.append(": keep-alive\n\n")
    parts.append(event(chat_chunk(rid, model, created, 0, {}, finish)))
    parts.append(event(chat_chunk(rid, model, created, None, usage_=usage(9, len(pieces)))))
    parts.append(event("[DONE]"))
    text = "".join(parts)
    if crlf:
        text = text.replace("\n", "\r\n")
    return text.encode("utf-8")


def _split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _split_inside_utf8(data: bytes) -> list[bytes]:
    """Cut right after the first byte of every multi-byte character (and nowhere else)."""
    cuts = [i + 1 for i, b in enumerate(data) if b >= 0xC0]  # lead bytes of 2-4 byte characters
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _split_inside_lines(data: bytes) -> list[bytes]:
    """Cut in the middle of every JSON line, at ASCII positions (no character is split)."""
    chunks, start = [], 0
    for i in range(len(data)):
        if data[i : i + 1] == b":" and i - start > 8 and data[i - 1 : i] == b'"':
            chunks.append(data[start:i])
            start = i
    chunks.append(data[start:])
    return chunks


_SSE_PIECES = ("Bien", " sûr", ", the café", " is open ☕", ".")
_SSE_TEXT = "".join(_SSE_PIECES)


@exercise("12.1", "parse a raw server-sent-events stream")
def check_parse_sse(answer: Any) -> str | None:
    """``parse_sse(chunks)`` must return ``(text, finish_reason)`` however the bytes are cut."""
    fn = _callable(answer, "parse_sse", "12.1")
    plain = _sse_body(_SSE_PIECES, "stop", keepalive=False, crlf=False)
    cases = [
        ("one chunk per event", [e + b"\n\n" for e in plain.split(b"\n\n") if e], None),
        (
            "keep-alive comments between events",
            [_sse_body(_SSE_PIECES, "stop", keepalive=True, crlf=False)],
            "a line that starts with ':' is an SSE comment (servers and proxies send them as "
            "keep-alives): skip it",
        ),
        (
            "chunks that end in the middle of a line",
            _split_inside_lines(plain),
            "the network cuts the stream anywhere: keep the unfinished last line of a chunk in "
            "a buffer and prepend it to the next chunk",
        ),
        (
            "chunks that end in the middle of a UTF-8 character",
            _split_inside_utf8(plain),
            "'û', 'é' and '☕' take 2-3 bytes and a chunk may end between them: join the bytes "
            "(or use an incremental decoder) before you decode, never decode a chunk on its own",
        ),
        (
            "chunks of 7 bytes",
            _split_every(plain, 7),
            "with chunks cut every 7 bytes, lines and characters are split everywhere: buffer "
            "bytes until a whole line is there",
        ),
        (
            "lines that end in \\r\\n",
            _split_every(_sse_body(_SSE_PIECES, "stop", keepalive=False, crlf=True), 5),
            "SSE lines may end in '\\r\\n' as well as '\\n': strip the '\\r'",
        ),
        (
            "a reply cut by max_tokens",
            [_sse_body(("One", " two"), "length", keepalive=True, crlf=False)],
            None,
        ),
    ]
    for name, chunks, hint in cases:
        want = ("One two", "length") if name.startswith("a reply cut") else (_SSE_TEXT, "stop")
        try:
            got = fn(list(chunks))
        except NotImplementedError:
            raise
        except Exception as exc:
            return _sse_crash_hint(name, exc, hint)
        if not (isinstance(got, tuple) and len(got) == 2):
            return f"return a tuple (text, finish_reason), got {got!r}"
        if tuple(got) == want:
            continue
        text, finish = got
        if text == want[0] and finish != want[1]:
            return (
                f"with {name} the text is right but finish_reason is {finish!r}, expected "
                f"{want[1]!r}: it comes in the chunk whose delta is empty, keep it"
            )
        if isinstance(text, str) and "\ufffd" in text:
            return f"with {name} your text has '\ufffd' (a replacement character): " + (
                hint or "decode only whole characters"
            )
        if hint is None:
            return f"with {name}: expected {want!r}, got {got!r}"
        return f"with {name}: expected {want!r}, got {got!r}; {hint}"
    return None


def _sse_crash_hint(name: str, exc: Exception, hint: str | None) -> str:
    what = f"with {name} your code raised {type(exc).__name__}: {exc}"
    if isinstance(exc, json.JSONDecodeError) and "[DONE]" in (exc.doc or ""):
        return f"{what}. 'data: [DONE]' is not JSON: it marks the end of the stream"
    if isinstance(exc, IndexError):
        return (
            f"{what}. The last chunk before [DONE] carries the usage and has an empty "
            "'choices' list: loop over the choices instead of taking [0]"
        )
    if isinstance(exc, KeyError) and exc.args == ("content",):
        return (
            f"{what}. The chunk with the finish_reason has an empty delta ({{}}): use "
            "delta.get('content')"
        )
    if isinstance(exc, UnicodeDecodeError):
        return f"{what}. " + (hint or "decode whole lines, not chunks")
    return f"{what}. {hint}" if hint else what


# --- 12.2 a streaming stop-string filter ----------------------------------------------------------


def _server_steps(pieces: Sequence[str], stop: Sequence[str]) -> list[str]:
    """What gptlab's server sends after each piece, and at the end (its TextAssembler)."""
    assembler = TextAssembler(lambda ids: "".join(pieces[i] for i in ids), stop)
    out = [assembler.add(i) for i in range(len(pieces))]
    return [*out, assembler.finish()]


_STOP_CASES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("Hello", " there", ", friend"), ("\n\n",)),  # no stop string at all
    (("The answer", " is 4", ".\n", "\nUser:", " more"), ("\n\nUser:",)),  # split over pieces
    (("Count: 1,", " 2,", " 3", " END", " 4"), ("END",)),  # inside one piece
    (("a <", "b", "> <", "/", "s> tail"), ("</s>",)),  # '<' that is not the start, then one that is
    (("xx", "abba", "yy"), ("ba", "ab")),  # the earliest match, not the first in the list
    (("Wait", " for it", "\n"), ("\n\n",)),  # the stream ends while "\n" is held back
    (("Tot", "al: 10", " USD"), ("Total: 100",)),  # a long prefix that never becomes the stop
)


@exercise("12.2", "a streaming stop-string filter")
def check_stop_filter(answer: Any) -> str | None:
    """``StopFilter(stop)`` with ``add(piece)`` and ``finish()`` must send what the server sends."""
    cls = _callable(answer, "StopFilter", "12.2")
    for pieces, stop in _STOP_CASES:
        want = _server_steps(pieces, stop)
        flt = _call(cls, list(stop), what=f"StopFilter({list(stop)!r})")
        for name in ("add", "finish"):
            if not callable(getattr(flt, name, None)):
                return f"your StopFilter has no method {name}()"
        got = [_call(flt.add, p, what=f"add({p!r})") for p in pieces]
        got.append(_call(flt.finish, what="finish()"))
        if got == want:
            continue
        if not all(isinstance(g, str) for g in got):
            return f"add() and finish() must return strings, got {got!r}"
        case = f"for pieces {list(pieces)!r} and stop={list(stop)!r}"
        sent, right = "".join(got), "".join(want)
        if sent == right:
            if "".join(got[:-1]) != "".join(want[:-1]) and len("".join(got[:-1])) < len(
                "".join(want[:-1])
            ):
                return (
                    f"{case} you sent the right text in the end, but late: after each piece "
                    f"you sent {got[:-1]!r} where the server sends {want[:-1]!r}. Hold back "
                    "only the longest END of the text that is the beginning of a stop string"
                )
            return f"{case} you sent {got!r} piece by piece, the server sends {want!r}"
        if len(stop) > 1 and sent.startswith(right) and sent != right:
            return (
                f"{case} you cut too late ({sent!r}): cut at the EARLIEST stop string in "
                f"the text ({right!r}), not at the first one in the list"
            )
        for s in stop:
            if s in sent:
                return (
                    f"{case} you sent the stop string {s!r}: it arrived split over pieces, so "
                    "look for it in the text you held back plus the new piece"
                    if not any(s in p for p in pieces)
                    else f"{case} you sent the stop string {s!r}: cut the text before it"
                )
        if sent.startswith(right) and sent != right:
            return (
                f"{case} you sent {sent!r}, the server {right!r}: text after a stop string "
                "must never be sent, even in later add() calls"
            )
        if right.startswith(sent):
            if sent == "".join(want[:-1]) and want[-1]:
                return (
                    f"{case} you never sent {want[-1]!r}: finish() must return the text you "
                    "still hold back when the stream ends without a stop string"
                )
            return (
                f"{case} you sent only {sent!r}; the server sends {right!r}. Text that turns "
                "out not to be the start of a stop string must be sent after all"
            )
        return f"{case} you sent {sent!r} in all; the server sends {right!r}"
    return None


# --- 12.3 prompt tokens under the chat template ---------------------------------------------------


_CONVERSATIONS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Name a colour."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke about tokens."},
    ],
)


def _smollm2_tokenizer() -> Any:
    from gptlab.pretrained import load_pretrained

    return load_pretrained("smollm2-135m-instruct")[1]


def _server_prompt_tokens(messages: Sequence[dict[str, str]], tokenizer: Any) -> int:
    """What the server puts in ``usage.prompt_tokens``: its ChatML template's encoding."""
    from gptlab.pretrained import SMOLLM2_SYSTEM_PROMPT
    from gptlab.serve.backend import ChatMLTemplate, Message

    template = ChatMLTemplate(tokenizer, default_system=SMOLLM2_SYSTEM_PROMPT)
    return len(template.encode([Message(m["role"], m["content"]) for m in messages]))


@exercise("12.3", "count a conversation's prompt tokens")
def check_count_prompt_tokens(answer: Any, tokenizer: Any = None) -> str | None:
    """``count_prompt_tokens(messages, tokenizer)`` must equal the server's ``prompt_tokens``."""
    from gptlab.pretrained import SMOLLM2_SYSTEM_PROMPT, render_chatml

    fn = _callable(answer, "count_prompt_tokens", "12.3")
    tok = tokenizer if tokenizer is not None else _smollm2_tokenizer()
    for messages in _CONVERSATIONS:
        want = _server_prompt_tokens(messages, tok)
        got = _call(fn, [dict(m) for m in messages], tok, what=f"messages={messages!r}")
        if isinstance(got, bool) or not isinstance(got, int):
            return f"return the number of tokens as an int, got {got!r}"
        if got == want:
            continue
        case = f"for {messages!r} you count {got} tokens, the server {want}"
        content = sum(len(tok.encode_ordinary(m["content"])) for m in messages)
        no_generation = len(
            tok.encode(
                render_chatml(messages, add_generation_prompt=False), allowed_special=CHATML_MARKERS
            )
        )
        no_system = len(
            tok.encode(render_chatml(messages, default_system=None), allowed_special=CHATML_MARKERS)
        )
        as_text = len(tok.encode_ordinary(render_chatml(messages)))
        if got == content:
            return (
                f"{case}: you counted only the messages' text. The template adds role names, "
                "<|im_start|>/<|im_end|> markers and newlines around every message"
            )
        if got == no_generation:
            return (
                f"{case}: the prompt ends with '<|im_start|>assistant\\n', the place where the "
                "model starts its reply; count it too"
            )
        if got == no_system:
            return (
                f"{case}: a conversation without a system message gets SmolLM2's default one "
                f"({SMOLLM2_SYSTEM_PROMPT!r}); count it too"
            )
        if got == as_text:
            return (
                f"{case}: you encoded '<|im_start|>' and '<|im_end|>' as plain text (several "
                "tokens each); they are one special token each: pass allowed_special"
            )
        return case
    return None


# --- 12.4 a retry policy for 429 ------------------------------------------------------------------


@exercise("12.4", "retry after a 429 without a thundering herd")
def check_retry_delay(answer: Any) -> str | None:
    """``retry_delay(attempt, retry_after, rng)``: never below Retry-After, grows with the attempt
    up to a cap of 60 s (beyond Retry-After), and spread out between clients (jitter)."""
    fn = _callable(answer, "retry_delay", "12.4")

    def delays(attempt: int, retry_after: float | None, clients: int = 200) -> list[float]:
        out = []
        for seed in range(clients):
            d = _call(fn, attempt, retry_after, random.Random(seed), what=f"attempt={attempt}")
            out.append(as_number(d, f"retry_delay(attempt={attempt}, ...)"))
        return out

    for attempt in (0, 3):
        low = delays(attempt, 2.0)
        if min(low) < 2.0:
            return (
                f"with Retry-After: 2 you wait {min(low):.2f} s at attempt {attempt}: the server "
                "said when it expects to have room; retrying sooner only earns another 429"
            )
    if max(delays(1, 1.0)) - min(delays(1, 1.0)) < 0.1:
        return (
            "with Retry-After: 1, all 200 clients wait the same time and come back together "
            "(a thundering herd): add a random part on top of Retry-After"
        )
    free = {a: delays(a, None) for a in (0, 1, 4, 8, 60)}
    if any(d < 0 for ds in free.values() for d in ds):
        return "a delay is negative; wait between 0 and the backoff ceiling"
    if max(free[4]) - min(free[4]) < 0.1:
        return (
            "at attempt 4 all 200 clients wait the same time: clients that were refused together "
            "retry together and are refused together again. Draw the delay at random (jitter)"
        )
    mean = {a: sum(ds) / len(ds) for a, ds in free.items()}
    if max(free[60]) > RETRY_CAP:
        return (
            f"at attempt 60 you wait up to {max(free[60]):.3g} s: cap the backoff (at most "
            f"{RETRY_CAP:g} s beyond Retry-After), or a client that was refused for a while "
            "sleeps for ages after the server recovered"
        )
    if not mean[0] < mean[1] < mean[4]:
        return (
            "the average delay must grow with the attempt (exponential backoff: double the "
            f"ceiling each time); your means at attempts 0, 1, 4 are {mean[0]:.2f}, "
            f"{mean[1]:.2f}, {mean[4]:.2f} s"
        )
    if mean[8] < 10 * mean[1]:
        return (
            f"the delay grows too slowly (mean {mean[1]:.2f} s at attempt 1, {mean[8]:.2f} s at "
            "attempt 8): grow it exponentially (doubling), not linearly, until the cap"
        )
    if mean[0] > 2.0:
        return f"the first retry waits {mean[0]:.2f} s on average: start small (about a second)"
    return None
