"""The model behind the server: a small :class:`Backend` protocol and the gptlab implementation.

The HTTP app never touches a model or a tokenizer. It asks a backend four things: turn chat
messages (or a completion prompt) into token ids, say how big the context window is, and
stream the generated text of ``n`` choices as :class:`Delta` events. Everything
model-specific (the chat template, the tokens that end a reply, how a prompt starts) lives
behind that protocol, so a Llama backend with a ChatML template plugs in with no server change:
:class:`ModelBackend` takes any model with the shared interface (``next_token_logits``,
``new_kv_cache``, ``config.block_size``), any tokenizer with ``encode``/``decode``, and a
:class:`ChatTemplate`.

Streaming and non-streaming requests run the same code (the app joins the deltas of a
non-streamed request), so the same seed gives the same text either way. Choice ``i`` samples
from a ``torch.Generator`` seeded with ``seed + i``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from gptlab.tokenizers import encode_plain

__all__ = [
    "MAX_STOP_STRINGS",
    "ROLES",
    "Backend",
    "ChatTemplate",
    "Delta",
    "ChatMLTemplate",
    "GPTLabChatTemplate",
    "Message",
    "ModelBackend",
    "SamplingParams",
    "TextAssembler",
    "load_backend",
    "resolve_model",
]

ROLES = ("system", "developer", "user", "assistant")  # developer is OpenAI's newer "system"
MAX_STOP_STRINGS = 4  # as in OpenAI's API
REFERENCE_NAMES = ("reference", "gptlab-reference")
PRETRAINED_NAMES = ("smollm2-135m-instruct",)  # gptlab.pretrained.PRETRAINED, ChatML models
SEED_MODULUS = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64)


# --------------------------------------------------------------------------------------------
# What goes in and what comes out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One chat message: ``role`` is one of :data:`ROLES`, ``content`` its text."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: the OpenAI parameters the server supports, already checked.

    ``temperature=0`` is greedy. ``stop`` strings end a choice and are not part of its text.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    n: int = 1

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("n", self.n, 1)
        _check_int("seed", self.seed, None)
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise TypeError(f"stop must be a tuple of strings, got {self.stop!r}")
        if len(self.stop) > MAX_STOP_STRINGS or any(not s for s in self.stop):
            raise ValueError(
                f"stop takes at most {MAX_STOP_STRINGS} non-empty strings, got {list(self.stop)!r}"
            )


@dataclass(frozen=True)
class Delta:
    """A piece of one choice's text. The last delta of a choice has its ``finish_reason``.

    ``finish_reason`` is ``"stop"`` (the model ended its reply or wrote a stop string),
    ``"length"`` (``max_tokens`` reached) or ``None`` (more to come). ``completion_tokens``
    counts the tokens sampled for this choice so far, the one that ended it included.
    """

    index: int
    text: str
    finish_reason: str | None
    completion_tokens: int


def _check_int(name: str, value: Any, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Backend(Protocol):
    """What the server needs from a model. Methods raise ``ValueError`` for a bad request."""

    model_id: str  # the name clients pass as "model"
    context_window: int  # prompt + completion tokens must fit in it

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """The prompt for a conversation, ending where the assistant's reply starts."""
        ...

    def encode_prompt(self, text: str) -> list[int]:
        """The prompt for a plain completion of ``text`` (never empty)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        ...

    def stream(
        self, prompt: Sequence[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[Delta]:
        """Generate ``params.n`` choices one after another, yielding text as it is settled.

        Stops early (without a final delta) as soon as ``cancelled()`` is true.
        """
        ...


class ChatTemplate(Protocol):
    """Turns chat messages into prompt ids for one model family."""

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """Prompt ids for ``messages``, ending with the tag after which the assistant speaks."""
        ...


# --------------------------------------------------------------------------------------------
# The gptlab chat format (gptlab.chat) as a template
# --------------------------------------------------------------------------------------------


class GPTLabChatTemplate:
    """The book's chat format (``SYSTEM:``/``USER:``/``BOT:`` tags, see :mod:`gptlab.chat`).

    The format holds one system prompt and then alternating user and bot turns, so the
    messages must be: any system (or developer) messages first (joined with a blank line), then
    user, assistant, user, ..., ending with a user message. Anything else is a ``ValueError``
    naming the message to change; nothing is merged or dropped silently.
    """

    def __init__(self, tokenizer: Any) -> None:
        from gptlab.chat import end_token_id

        self.tokenizer = tokenizer
        self.eos = end_token_id(tokenizer)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        from gptlab.chat import tokenize_conversation

        if not messages:
            raise ValueError("messages is empty; send at least one user message")
        systems: list[str] = []
        turns: list[str] = []
        for i, message in enumerate(messages):
            if not isinstance(message, Message):
                raise TypeError(f"messages[{i}] must be a Message, got {type(message).__name__}")
            if not message.content.strip():
                raise ValueError(f"messages[{i}] ({message.role}) has no text; write something")
            if message.role in ("system", "developer"):
                if turns:
                    raise ValueError(
                        f"messages[{i}] is a {message.role} message after the conversation "
                        "started; this model's chat format takes system messages only at the "
                        "start: move it to the front"
                    )
                systems.append(message.content.strip())
                continue
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if message.role != expected:
                raise ValueError(
                    f"messages[{i}] is a {message.role} message where a {expected} message "
                    "must come: this model's chat format alternates user and assistant "
                    "(merge consecutive messages of one role into one)"
                )
            turns.append(message.content)
        if len(turns) % 2 == 0:
            raise ValueError(
                "the last message must be the user's (the model writes the assistant's reply); "
                "got no user message after the last assistant message"
            )
        system = "\n\n".join(systems) if systems else None
        ids, _ = tokenize_conversation(turns, self.tokenizer, system)
        return ids


class ChatMLTemplate:
    """ChatML (``<|im_start|>role\ncontent<|im_end|>``), SmolLM2's chat format.

    The markers are encoded as their special ids and every message's text as plain text, so a
    user who types ``<|im_end|>`` gets those characters, not the control token. The result
    equals encoding :func:`gptlab.pretrained.render_chatml` with the markers allowed (the
    markers split the text into the same pieces), including SmolLM2's default system prompt
    when the conversation has none.
    """

    START, END = "<|im_start|>", "<|im_end|>"

    def __init__(self, tokenizer: Any, default_system: str | None = None) -> None:
        specials = getattr(tokenizer, "special_tokens", {})
        missing = [m for m in (self.START, self.END) if m not in specials]
        if missing:
            raise ValueError(
                f"this tokenizer has no ChatML markers {missing}; use another template"
            )
        self.tokenizer = tokenizer
        self.start, self.end = specials[self.START], specials[self.END]
        self.default_system = default_system

    def _plain(self, text: str) -> list[int]:
        return list(self.tokenizer.encode_ordinary(text))

    def encode(self, messages: Sequence[Message]) -> list[int]:
        if not messages:
            raise ValueError("messages is empty; send at least one user message")
        for i, message in enumerate(messages):
            if not isinstance(message, Message):
                raise TypeError(f"messages[{i}] must be a Message, got {type(message).__name__}")
        if messages[-1].role != "user":
            raise ValueError(
                f"the last message must be the user's (the model writes the reply), got "
                f"{messages[-1].role!r}"
            )
        pairs = [(m.role if m.role != "developer" else "system", m.content) for m in messages]
        if pairs[0][0] != "system" and self.default_system is not None:
            pairs.insert(0, ("system", self.default_system))
        ids: list[int] = []
        for role, content in pairs:
            ids += [self.start, *self._plain(f"{role}\n{content}"), self.end, *self._plain("\n")]
        return ids + [self.start, *self._plain("assistant\n")]


# --------------------------------------------------------------------------------------------
# Text out of tokens: UTF-8-safe, with stop strings
# --------------------------------------------------------------------------------------------


class TextAssembler:
    """Turns a growing list of token ids into settled text deltas, honouring stop strings.

    Two things make a token's text unsettled. A token may hold half of a UTF-8 character (the
    byte-level BPE splits multi-byte characters), which decodes to ``"\\ufffd"`` until the
    rest arrives; and the text may end with the beginning of a stop string, which must not be
    sent in case the rest follows. Only the last few tokens are decoded again each step (the
    window starts at the last settled token), so a token costs the same however long the reply.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str]) -> None:
        self.decode = decode
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.prefix_offset = 0  # decode from here ...
        self.read_offset = 0  # ... text of ids[prefix_offset:read_offset] has been taken
        self.pending = ""  # settled text held back: it could be the start of a stop string
        self.stopped = False  # a stop string was found; nothing more will be emitted

    def add(self, token: int) -> str:
        """Add one token; return the text that is now settled (often ``""``)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        if len(text) <= len(prefix) or text.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._release(text[len(prefix) :])

    def finish(self) -> str:
        """The text still held back (an incomplete character is flushed as it is)."""
        if self.stopped:
            return ""
        prefix = self.decode(self.ids[self.prefix_offset : self.read_offset])
        text = self.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        out = self._release(text[len(prefix) :])
        if not self.stopped:
            out, self.pending = out + self.pending, ""
        return out

    def _release(self, new: str) -> str:
        buffer = self.pending + new
        hits = [i for i in (buffer.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.pending = True, ""
            return buffer[: min(hits)]
        hold = _longest_stop_prefix(buffer, self.stop)
        self.pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]


def _longest_stop_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that begins some stop string (0 if none)."""
    return max(
        (k for stop in stops for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0
    )


# --------------------------------------------------------------------------------------------
# A backend for gptlab models
# --------------------------------------------------------------------------------------------


class ModelBackend:
    """A :class:`Backend` for any model with gptlab's generation interface.

    ``stop_token_ids`` end a reply (the first also starts an empty completion prompt, as GPT-2
    starts a document after ``<|endoftext|>``); ``chat_template`` encodes conversations.
    Generation goes through :func:`gptlab.sampling.stream` with a KV cache.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        chat_template: ChatTemplate,
        stop_token_ids: Sequence[int],
    ) -> None:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError(f"model_id must be a non-empty string, got {model_id!r}")
        block_size = getattr(getattr(model, "config", None), "block_size", None)
        if not callable(getattr(model, "next_token_logits", None)) or not isinstance(
            block_size, int
        ):
            raise TypeError(
                f"model must have next_token_logits and config.block_size (a gptlab GPT or "
                f"Llama), got {type(model).__name__}"
            )
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"tokenizer must have a decode method, got {type(tokenizer).__name__}")
        if not callable(getattr(chat_template, "encode", None)):
            raise TypeError(
                f"chat_template must have an encode(messages) method, got "
                f"{type(chat_template).__name__}"
            )
        stop_ids = tuple(stop_token_ids)
        vocab = model.config.vocab_size
        if not stop_ids or not all(isinstance(t, int) and 0 <= t < vocab for t in stop_ids):
            raise ValueError(
                f"stop_token_ids must be at least one token id in [0, {vocab}), got {stop_ids!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.context_window = block_size
        self.chat_template = chat_template
        self.stop_token_ids = stop_ids
        self.device = next(model.parameters()).device

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        """Prompt ids of ``messages`` in this model's chat format."""
        return self.chat_template.encode(messages)

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt ids of ``text``; an empty text starts a fresh document (the first stop id)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a string, got {type(text).__name__}")
        return encode_plain(self.tokenizer, text) or [self.stop_token_ids[0]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``."""
        return self.tokenizer.decode(list(ids))

    def stream(
        self, prompt: Sequence[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[Delta]:
        """Generate the choices one after another (see :meth:`Backend.stream`)."""
        from gptlab.sampling import stream

        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams, got {type(params).__name__}")
        if not prompt:
            raise ValueError("the prompt is empty; it needs at least one token")
        room = self.context_window - len(prompt)
        if params.max_tokens > room:
            raise ValueError(
                f"the prompt is {len(prompt)} tokens and max_tokens is {params.max_tokens}: "
                f"together more than the context window of {self.context_window} tokens; "
                f"lower max_tokens to at most {room} or shorten the prompt"
            )
        idx = torch.tensor([list(prompt)], dtype=torch.long, device=self.device)
        for index in range(params.n):
            generator = torch.Generator(device=self.device)
            generator.manual_seed((params.seed + index) % SEED_MODULUS)
            tokens = stream(
                self.model,
                idx,
                params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p if params.top_p < 1 else None,
                generator=generator,
            )
            assembler = TextAssembler(self.decode, params.stop)
            count, finish, tail = 0, "length", ""
            for token in tokens:
                if cancelled():
                    return
                count += 1
                if token in self.stop_token_ids:
                    finish = "stop"
                    break
                text = assembler.add(token)
                if assembler.stopped:
                    finish, tail = "stop", text
                    break
                if text:
                    yield Delta(index, text, None, count)
            yield Delta(index, tail + assembler.finish(), finish, count)


# --------------------------------------------------------------------------------------------
# Loading a backend by name or checkpoint folder
# --------------------------------------------------------------------------------------------


def resolve_model(model: str | os.PathLike[str]) -> str | pathlib.Path:
    """Check ``model`` names something :func:`load_backend` can load, without loading it.

    Returns ``"reference"`` for the shipped model or the checkpoint folder as a path; raises
    ``ValueError`` naming the choices otherwise (so a typo fails before the server starts).
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a folder path, got {type(model).__name__}")
    if str(model) in REFERENCE_NAMES:
        return "reference"
    if str(model) in PRETRAINED_NAMES:
        return str(model)
    path = pathlib.Path(model)
    if not (path / "meta.json").is_file():
        names = ", ".join((*REFERENCE_NAMES, *PRETRAINED_NAMES))
        raise ValueError(
            f"model {str(model)!r} is neither a known name ({names}) nor a "
            "checkpoint folder with a meta.json; pass --model reference or the out_dir of a "
            "'gptlab train' run"
        )
    return path


def load_backend(model: str | os.PathLike[str], device: str | None = None) -> ModelBackend:
    """A backend for ``model``: ``"reference"`` (the book's shipped model) or a checkpoint folder.

    A checkpoint folder is one written by ``gptlab train`` (``meta.json`` with the model config
    and tokenizer); its folder name becomes the model id. ``device``: ``None`` is the CPU,
    ``"auto"`` the best one this machine has.
    """
    from gptlab.chat import end_token_id

    if device is not None and not isinstance(device, str):
        raise TypeError(f"device must be None or a string such as 'cpu', got {device!r}")
    source = resolve_model(model)
    if source == "reference":
        from gptlab.reference import load_reference_model

        net, tokenizer = load_reference_model(device)
        model_id = "gptlab-reference"
    elif source in PRETRAINED_NAMES:
        from gptlab.pretrained import SMOLLM2_SYSTEM_PROMPT, load_pretrained
        from gptlab.utils import get_device

        target = get_device(None if device == "auto" else device) if device else None
        net, tokenizer = load_pretrained(str(source), device=target)
        template = ChatMLTemplate(tokenizer, default_system=SMOLLM2_SYSTEM_PROMPT)
        return ModelBackend(
            net,
            tokenizer,
            model_id=str(source),
            chat_template=template,
            stop_token_ids=[template.end, *_eos_ids(tokenizer)],
        )
    else:
        from gptlab.train import load_model, load_tokenizer
        from gptlab.utils import get_device

        path = pathlib.Path(source)
        target = get_device(None if device == "auto" else device) if device else None
        net, tokenizer = load_model(path, device=target).eval(), load_tokenizer(path)
        model_id = path.resolve().name
    return ModelBackend(
        net,
        tokenizer,
        model_id=model_id,
        chat_template=GPTLabChatTemplate(tokenizer),
        stop_token_ids=[end_token_id(tokenizer)],
    )


def _eos_ids(tokenizer: Any) -> list[int]:
    """The end-of-text id of a tokenizer that has one (SmolLM2: ``<|endoftext|>``)."""
    specials = getattr(tokenizer, "special_tokens", {})
    return [specials["<|endoftext|>"]] if "<|endoftext|>" in specials else []
