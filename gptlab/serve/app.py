"""The HTTP app: OpenAI's ``/v1`` endpoints, a health check and the chat page.

:func:`create_app` builds a FastAPI app around a :class:`~gptlab.serve.backend.Backend` (or a
function that loads one, so the port opens at once and requests get a 503 until the model is
ready). Requests for the model go through one :class:`~gptlab.serve.queue.GenerationQueue`.

Safety lives in one plain ASGI middleware, :class:`Guard`, that every request passes first:

- the API key (``Authorization: Bearer ...``) for ``/v1/*`` when one is set (401 otherwise);
- the body is read up to a limit tied to the context window (413 beyond), before the app
  parses a byte of it;
- on a loopback address only ``localhost``-style ``Host`` headers are served (a web page
  cannot reach the server through DNS rebinding), and a request whose ``Origin`` is another
  site is refused (403): the chat page is same-origin only, and no CORS header is ever sent;
- every response carries a Content-Security-Policy that lets a page load nothing but this
  server's own files.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import secrets
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptlab.serve.backend import Backend, Delta, SamplingParams
from gptlab.serve.queue import GenerationQueue, QueueClosed, QueueFull, RequestTimeout, Ticket
from gptlab.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    completion,
    completion_chunk,
    messages_of,
    model_list,
    model_object,
    new_id,
    sampling_params,
    usage,
)

__all__ = ["CONTENT_SECURITY_POLICY", "Guard", "body_limit_for", "create_app"]

STATIC = pathlib.Path(__file__).resolve().parent / "static"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LOADING_BODY_LIMIT = 64 * 1024  # before the model (and so its context window) is known


def body_limit_for(context_window: int) -> int:
    """The largest request body (bytes) for a model with this context window.

    A token is a few characters, and JSON may escape a character as ``\\uXXXX`` (6 bytes), so
    256 bytes a token plus 16 KiB for the rest of the request holds any prompt that fits.
    """
    return 16 * 1024 + 256 * context_window


# --------------------------------------------------------------------------------------------
# The guard: auth, body size, host and origin, security headers
# --------------------------------------------------------------------------------------------


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _host_name(host: str) -> str:
    """``localhost`` from ``localhost:8000``, ``::1`` from ``[::1]:8000``."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware that checks host, origin, API key and body size before the app runs."""

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        body_limit: Callable[[], int],
        loopback_only: bool,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.body_limit = body_limit
        self.loopback_only = loopback_only

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        error = self._check(scope, headers)
        if error is not None:
            await _error_response(error)(scope, receive, send_with_headers)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(receive, headers)
            if isinstance(body, ApiError):
                response = _error_response(body)
                response.headers["connection"] = "close"
                await response(scope, receive, send_with_headers)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send_with_headers)

    def _check(self, scope: dict[str, Any], headers: dict[str, str]) -> ApiError | None:
        host = headers.get("host", "")
        if self.loopback_only and _host_name(host) not in LOOPBACK_NAMES:
            return ApiError(
                400,
                f"this server listens on a loopback address and answers only requests for "
                f"localhost or 127.0.0.1, not for Host {host!r}",
                code="invalid_host",
            )
        origin = headers.get("origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != host:
            return ApiError(
                403,
                f"cross-origin requests are refused (Origin {origin!r}, Host {host!r}); use the "
                "chat page this server serves at /, or a client that is not a browser",
                code="cross_origin",
            )
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            auth = headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                token.strip().encode(), self.api_key.encode()
            ):
                return ApiError(
                    401,
                    "missing or wrong API key: send the header 'Authorization: Bearer KEY' "
                    "with the key the server was started with (--api-key or GPTLAB_API_KEY)",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return None

    async def _read_body(self, receive: Any, headers: dict[str, str]) -> bytes | ApiError:
        limit = self.body_limit()
        too_large = ApiError(
            413,
            f"the request body is larger than {limit:,} bytes, more than a prompt that fits "
            "this model's context window needs; send a shorter prompt",
            code="request_too_large",
        )
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return ApiError(400, "the client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the app the body already read, then listens for a disconnect."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


class _State:
    """The app's model, queue and loading status."""

    def __init__(self, backend: Backend | None, loader: Callable[[], Backend] | None) -> None:
        self.backend = backend
        self.loader = loader
        self.load_error: str | None = None
        self.queue: GenerationQueue | None = None
        self.created = int(time.time())

    def load(self) -> None:
        """Run the loader (in a thread); remember the backend or the error."""
        assert self.loader is not None
        try:
            backend = self.loader()
            if not isinstance(backend, Backend):
                raise TypeError(f"the loader returned {type(backend).__name__}, not a Backend")
            self.backend = backend
        except Exception as err:  # reported by every request and by /health
            self.load_error = f"{type(err).__name__}: {err}"

    def ready(self) -> tuple[Backend, GenerationQueue]:
        """The backend and queue, or an ApiError (503) while loading or after a failed load."""
        if self.load_error is not None:
            raise ApiError(
                503,
                f"the model failed to load: {self.load_error}",
                type="server_error",
                code="model_load_failed",
            )
        if self.backend is None or self.queue is None:
            raise ApiError(
                503,
                "the model is still loading; retry in a few seconds",
                type="server_error",
                code="model_loading",
                headers={"Retry-After": "2"},
            )
        return self.backend, self.queue


def create_app(
    backend: Backend | None = None,
    *,
    loader: Callable[[], Backend] | None = None,
    api_key: str | None = None,
    max_queue: int = 32,
    request_timeout: float = 120.0,
    max_body_bytes: int | None = None,
    loopback_only: bool = True,
) -> Any:
    """The ASGI app serving ``backend`` (or what ``loader`` returns, loaded in a thread).

    ``api_key`` protects ``/v1/*``; ``max_queue`` bounds the requests waiting for the model
    (429 beyond); ``request_timeout`` is each request's time limit in seconds (queue + run);
    ``max_body_bytes`` defaults to :func:`body_limit_for` the context window; with
    ``loopback_only`` only loopback ``Host`` headers are answered.
    """
    if (backend is None) == (loader is None):
        raise ValueError("pass exactly one of backend (a Backend) or loader (a function)")
    if backend is not None and not isinstance(backend, Backend):
        raise TypeError(
            f"backend must implement gptlab.serve.Backend, got {type(backend).__name__}"
        )
    if loader is not None and not callable(loader):
        raise TypeError(f"loader must be a function returning a Backend, got {loader!r}")
    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string, or None for no authentication")
    if max_body_bytes is not None and (
        isinstance(max_body_bytes, bool)
        or not isinstance(max_body_bytes, int)
        or max_body_bytes < 1
    ):
        raise ValueError(f"max_body_bytes must be an int >= 1, got {max_body_bytes!r}")
    GenerationQueue.check(max_queue=max_queue, request_timeout=request_timeout)
    state = _State(backend, loader)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.queue = GenerationQueue(max_queue=max_queue, request_timeout=request_timeout)
        if loader is not None:
            threading.Thread(target=state.load, name="gptlab-load", daemon=True).start()
        try:
            yield
        finally:
            state.queue.close()

    app = FastAPI(
        title="gptlab serve",
        docs_url=None,  # Swagger UI loads from a CDN; the page must need nothing from outside
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.serve = state
    _add_error_handlers(app)
    _add_routes(app, state)

    def body_limit() -> int:
        if max_body_bytes is not None:
            return max_body_bytes
        if state.backend is None:
            return LOADING_BODY_LIMIT
        return body_limit_for(state.backend.context_window)

    return Guard(app, api_key=api_key, body_limit=body_limit, loopback_only=loopback_only)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error", "invalid JSON")
            return _error_response(
                ApiError(400, f"the body is not valid JSON ({detail})", code="invalid_json")
            )
        param = ".".join(loc) or None
        if first.get("type") == "extra_forbidden":
            message = f"unrecognized request argument supplied: {param}"
        elif first.get("type") == "model_attributes_type" and not loc:
            message = "the body must be a JSON object (send Content-Type: application/json)"
        else:
            message = f"{param or 'body'}: {first.get('msg')}"
        return _error_response(ApiError(422, message, param=param, code=first.get("type")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if err.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(err.status_code, str(err.detail), type=kind))


def _check_model(requested: str, backend: Backend) -> None:
    if requested != backend.model_id:
        raise ApiError(
            404,
            f"the model {requested!r} does not exist on this server; it serves "
            f"{backend.model_id!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def _submit(queue: GenerationQueue, backend: Backend, prompt: list[int], params: Any) -> Ticket:
    try:
        return queue.submit(lambda cancelled: backend.stream(prompt, params, cancelled))
    except QueueFull as err:
        raise ApiError(
            429,
            str(err),
            type="rate_limit_exceeded",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except QueueClosed as err:
        raise ApiError(503, str(err), type="server_error", code="shutting_down") from None


def _api_error_of(err: Exception) -> ApiError:
    """The error object a failure during generation becomes."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, RequestTimeout):
        return ApiError(503, str(err), type="server_error", code="timeout")
    if isinstance(err, QueueClosed):
        return ApiError(503, str(err), type="server_error", code="shutting_down")
    if isinstance(err, ValueError):
        return ApiError(400, str(err))
    return ApiError(500, f"generation failed: {type(err).__name__}: {err}", type="server_error")


async def _first(events: AsyncIterator[Delta]) -> Delta | None:
    """The first delta (None if the client left), with failures turned into ApiError."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None
    except Exception as err:
        raise _api_error_of(err) from None


class _Choices:
    """Joins deltas into ``(text, finish_reason)`` per choice and counts completion tokens."""

    def __init__(self, n: int, prefix: str = "") -> None:
        self.texts = [prefix] * n
        self.finish: list[str | None] = [None] * n
        self.tokens = [0] * n

    def add(self, delta: Delta) -> None:
        self.texts[delta.index] += delta.text
        if delta.finish_reason is not None:
            self.finish[delta.index] = delta.finish_reason
            self.tokens[delta.index] = delta.completion_tokens

    @property
    def complete(self) -> bool:
        return all(f is not None for f in self.finish)

    def result(self) -> list[tuple[str, str]]:
        return [(t, f or "stop") for t, f in zip(self.texts, self.finish, strict=True)]


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _event_stream(
    first: Delta,
    events: AsyncIterator[Delta],
    start: list[dict[str, Any]],
    chunk: Callable[[Delta], list[dict[str, Any]]],
    final_usage: Callable[[dict[str, int]], dict[str, Any]] | None,
    prompt_tokens: int,
) -> StreamingResponse:
    """The SSE response: ``start`` chunks, then each delta's chunks, usage, ``[DONE]``.

    A failure after the stream started is sent as an ``error`` event (OpenAI does the same),
    and the stream ends without ``[DONE]``. A client that goes away cancels the generation.
    """

    async def body() -> AsyncIterator[str]:
        tokens: dict[int, int] = {}
        try:
            for item in start:
                yield _sse(item)
            delta: Delta | None = first
            while delta is not None:
                for item in chunk(delta):
                    yield _sse(item)
                if delta.finish_reason is not None:
                    tokens[delta.index] = delta.completion_tokens
                delta = await anext(events, None)
            if final_usage is not None:
                yield _sse(final_usage(usage(prompt_tokens, sum(tokens.values()))))
            yield "data: [DONE]\n\n"
        except Exception as err:
            yield _sse(_api_error_of(err).body())
        finally:
            await events.aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},  # proxies must not hold the stream back
    )


async def _collect(events: AsyncIterator[Delta], first: Delta, choices: _Choices) -> bool:
    """Join all deltas into ``choices``; False if the client left before the end."""
    try:
        choices.add(first)
        async for delta in events:
            choices.add(delta)
    except Exception as err:
        raise _api_error_of(err) from None
    return choices.complete


def _add_routes(app: FastAPI, state: _State) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for one; there is none

    @app.get("/health")
    async def health() -> JSONResponse:
        """Readiness: 200 once the model is loaded, 503 before (or if loading failed)."""
        queue = state.queue
        status = "error" if state.load_error else "ok" if state.backend else "loading"
        body = {
            "status": status,
            "model": state.backend.model_id if state.backend else None,
            "busy": queue.busy if queue else False,
            "waiting": queue.waiting if queue else 0,
        }
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        backend, _ = state.ready()
        return model_list(backend.model_id, state.created)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        backend, _ = state.ready()
        _check_model(model_id, backend)
        return model_object(backend.model_id, state.created)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatCompletionRequest, request: Request
    ) -> Response | dict[str, Any]:
        backend, queue = state.ready()
        _check_model(body.model, backend)
        messages = messages_of(body)
        try:
            prompt = backend.encode_chat(messages)
        except (ValueError, TypeError) as err:
            raise ApiError(400, str(err), param="messages") from None
        params = sampling_params(
            body, prompt_tokens=len(prompt), context_window=backend.context_window
        )
        events = _submit(queue, backend, prompt, params).results_until(request.is_disconnected)
        first = await _first(events)
        if first is None:
            return Response(status_code=204)  # the client left; nobody reads this
        rid = new_id("chatcmpl")
        if body.stream:
            created = int(time.time())

            def chunks(delta: Delta) -> list[dict[str, Any]]:
                out = []
                if delta.text:
                    content = {"content": delta.text}
                    out.append(chat_chunk(rid, backend.model_id, created, delta.index, content))
                if delta.finish_reason is not None:
                    reason = delta.finish_reason
                    out.append(chat_chunk(rid, backend.model_id, created, delta.index, {}, reason))
                return out

            start = [
                chat_chunk(rid, backend.model_id, created, i, {"role": "assistant", "content": ""})
                for i in range(params.n)
            ]
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _event_stream(
                first,
                events,
                start,
                chunks,
                (lambda u: chat_chunk(rid, backend.model_id, created, None, usage_=u))
                if include_usage
                else None,
                len(prompt),
            )
        choices = _Choices(params.n)
        if not await _collect(events, first, choices):
            return Response(status_code=204)
        return chat_completion(
            rid, backend.model_id, choices.result(), len(prompt), sum(choices.tokens)
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response | dict[str, Any]:
        backend, queue = state.ready()
        _check_model(body.model, backend)
        try:
            prompt = backend.encode_prompt(body.prompt)
        except (ValueError, TypeError) as err:
            raise ApiError(400, str(err), param="prompt") from None
        params: SamplingParams = sampling_params(
            body, prompt_tokens=len(prompt), context_window=backend.context_window
        )
        events = _submit(queue, backend, prompt, params).results_until(request.is_disconnected)
        first = await _first(events)
        if first is None:
            return Response(status_code=204)
        rid = new_id("cmpl")
        echo = body.prompt if body.echo else ""
        if body.stream:
            created = int(time.time())

            def chunks(delta: Delta) -> list[dict[str, Any]]:
                if not delta.text and delta.finish_reason is None:
                    return []
                reason = delta.finish_reason
                return [
                    completion_chunk(
                        rid, backend.model_id, created, delta.index, delta.text, reason
                    )
                ]

            start = (
                [completion_chunk(rid, backend.model_id, created, i, echo) for i in range(params.n)]
                if echo
                else []
            )
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _event_stream(
                first,
                events,
                start,
                chunks,
                (lambda u: completion_chunk(rid, backend.model_id, created, None, usage_=u))
                if include_usage
                else None,
                len(prompt),
            )
        choices = _Choices(params.n, echo)
        if not await _collect(events, first, choices):
            return Response(status_code=204)
        return completion(rid, backend.model_id, choices.result(), len(prompt), sum(choices.tokens))
