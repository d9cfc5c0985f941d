"""The OpenAI wire format: request bodies (pydantic, strict), response objects, error objects.

Requests are checked in two steps, and the status tells a client which one failed. The
*schema* (right JSON types, known fields, required fields present) is pydantic's job, in strict
mode so ``"0.7"`` is not quietly taken for ``0.7``; a failure is a 422. The *values*
(temperature in range, a known role, a prompt that fits the context window) are checked by
:func:`sampling_params` and the backend; a failure is a 400 whose ``param`` names the field.

Responses are plain dicts in OpenAI's shapes (``chat.completion``, ``chat.completion.chunk``,
``text_completion``, ``list`` of ``model``), so the official ``openai`` client parses them.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from gptlab.serve.backend import MAX_STOP_STRINGS, Message, SamplingParams

__all__ = [
    "MAX_N",
    "ApiError",
    "ChatCompletionRequest",
    "CompletionRequest",
    "chat_chunk",
    "chat_completion",
    "completion",
    "completion_chunk",
    "error_body",
    "messages_of",
    "model_list",
    "new_id",
    "sampling_params",
    "usage",
]

MAX_N = 8  # choices per request: each is generated in turn, so a big n holds the queue


class ApiError(Exception):
    """An error to send as OpenAI's error object with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    """A ``{"type": "text", "text": ...}`` content part (the only kind a text model reads)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """A message as OpenAI sends it; ``content`` may be a string or a list of text parts."""

    role: str
    content: str | list[TextPart]
    name: str | None = None


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: bool = False


class _SamplingFields(_Strict):
    """The fields both endpoints share."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ChatCompletionRequest(_SamplingFields):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None


class CompletionRequest(_SamplingFields):
    """Body of ``POST /v1/completions`` (one prompt string)."""

    prompt: str
    echo: bool | None = None


def messages_of(request: ChatCompletionRequest) -> list[Message]:
    """The request's messages as backend :class:`Message` objects (text parts joined)."""
    out = []
    for i, message in enumerate(request.messages):
        content = message.content
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        try:
            out.append(Message(message.role, text))
        except ValueError as err:
            raise ApiError(400, f"messages[{i}]: {err}", param=f"messages.{i}.role") from None
    return out


def _unsupported(name: str, value: Any, neutral: Any) -> None:
    if value is not None and value != neutral:
        raise ApiError(
            400,
            f"{name}={value!r} is not supported by this server; leave it out (or {neutral!r})",
            param=name,
            code="unsupported_parameter",
        )


def sampling_params(
    request: _SamplingFields, *, prompt_tokens: int, context_window: int
) -> SamplingParams:
    """Check the request's sampling values and fill in defaults; raise :class:`ApiError` (400).

    ``max_tokens`` defaults to the room left in the context window; a prompt that fills the
    window, or a ``max_tokens`` that does not fit after the prompt, is refused, never cropped.
    """
    _unsupported("presence_penalty", request.presence_penalty, 0)
    _unsupported("frequency_penalty", request.frequency_penalty, 0)
    if isinstance(request, ChatCompletionRequest):
        _unsupported("logprobs", request.logprobs, False)
    room = context_window - prompt_tokens
    if room < 1:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens, which leaves no room for a reply in this "
            f"model's context window of {context_window} tokens; shorten the prompt (drop old "
            "messages) to fewer tokens",
            param="messages" if isinstance(request, ChatCompletionRequest) else "prompt",
            code="context_length_exceeded",
        )
    max_tokens = _max_tokens(request)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"max_tokens must be >= 1, got {max_tokens}", param="max_tokens")
    if max_tokens is not None and max_tokens > room:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}: together more "
            f"than this model's context window of {context_window} tokens; lower max_tokens to "
            f"at most {room} or shorten the prompt",
            param="max_tokens",
            code="context_length_exceeded",
        )
    temperature = 1.0 if request.temperature is None else request.temperature
    if not 0 <= temperature <= 2:
        raise ApiError(
            400, f"temperature must be in [0, 2], got {temperature}", param="temperature"
        )
    top_p = 1.0 if request.top_p is None else request.top_p
    if not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    n = 1 if request.n is None else request.n
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"n must be in [1, {MAX_N}], got {n}", param="n")
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
        raise ApiError(
            400,
            f"stop takes at most {MAX_STOP_STRINGS} non-empty strings, got {list(stop)!r}",
            param="stop",
        )
    seed = secrets.randbits(63) if request.seed is None else request.seed
    return SamplingParams(
        max_tokens=room if max_tokens is None else max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        stop=stop,
        seed=seed,
        n=n,
    )


def _max_tokens(request: _SamplingFields) -> int | None:
    newer = getattr(request, "max_completion_tokens", None)
    if newer is not None and request.max_tokens is not None and newer != request.max_tokens:
        raise ApiError(
            400,
            f"max_tokens ({request.max_tokens}) and max_completion_tokens ({newer}) differ; "
            "send only one of them",
            param="max_completion_tokens",
        )
    return request.max_tokens if newer is None else newer


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-3f2a...``."""
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def model_list(model_id: str, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one model this server holds."""
    return {"object": "list", "data": [model_object(model_id, created)]}


def model_object(model_id: str, created: int) -> dict[str, Any]:
    """One ``model`` object."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "gptlab"}


def chat_completion(
    id: str,
    model: str,
    choices: list[tuple[str, str]],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A ``chat.completion`` from ``(text, finish_reason)`` per choice."""
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(
    id: str,
    model: str,
    created: int,
    index: int | None,
    delta: dict[str, str] | None = None,
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``index=None`` gives the last chunk, with usage only."""
    choices = (
        []
        if index is None
        else [
            {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
        ]
    )
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def completion(
    id: str,
    model: str,
    choices: list[tuple[str, str]],
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    """A ``text_completion`` from ``(text, finish_reason)`` per choice."""
    return {
        "id": id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(
    id: str,
    model: str,
    created: int,
    index: int | None,
    text: str = "",
    finish_reason: str | None = None,
    usage_: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk; ``index=None`` gives the usage-only last chunk."""
    choices = (
        []
        if index is None
        else [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}]
    )
    chunk: dict[str, Any] = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk
