"""``gptlab serve`` tested with real clients: the official ``openai`` package, httpx, raw sockets.

The server runs for real (uvicorn on a free loopback port, in a thread; a subprocess for the
SIGTERM test) around the book's shipped reference model, so every token is a real model's.
:class:`SlowBackend` wraps it with a pause per token where a test must act while a reply is
being generated (queue full, disconnects, timeouts). Replies are a few tokens long, so the
whole module costs a few seconds of one CPU core.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="gptlab serve needs fastapi: pip install fastapi uvicorn")
pytest.importorskip("uvicorn", reason="gptlab serve needs uvicorn: pip install fastapi uvicorn")
openai = pytest.importorskip("openai", reason="the client tests need the openai package")
httpx = pytest.importorskip("httpx", reason="the fault tests need httpx")

import uvicorn  # noqa: E402

from gptlab.chat import tokenize_conversation  # noqa: E402
from gptlab.serve.app import create_app  # noqa: E402
from gptlab.serve.backend import (  # noqa: E402
    Delta,
    GPTLabChatTemplate,
    Message,
    SamplingParams,
    TextAssembler,
    load_backend,
)
from gptlab.serve.launcher import launch  # noqa: E402
from gptlab.serve.queue import GenerationQueue  # noqa: E402
from gptlab.serve.server import add_arguments, check_bind, run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "gptlab-reference"
HELLO = [{"role": "user", "content": "Good morrow, what news?"}]


# --------------------------------------------------------------------------------------------
# Helpers: a server in a thread, a slowed-down backend
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


class SlowBackend:
    """The real backend with a pause before each token; records what it was asked to run."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.model_id = inner.model_id
        self.context_window = inner.context_window
        self.runs: list[list[int]] = []  # prompts whose generation started
        self.steps = 0  # tokens generated, over all runs
        self.active = threading.Event()  # set while a generation runs

    def encode_chat(self, messages: Sequence[Message]) -> list[int]:
        return self.inner.encode_chat(messages)

    def encode_prompt(self, text: str) -> list[int]:
        return self.inner.encode_prompt(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)

    def stream(
        self, prompt: Sequence[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[Delta]:
        self.runs.append(list(prompt))

        def slow_cancelled() -> bool:  # the backend asks before every token
            time.sleep(self.delay)
            self.steps += 1
            return cancelled()

        self.active.set()
        try:
            yield from self.inner.stream(prompt, params, slow_cancelled)
        finally:
            self.active.clear()


def client_for(base_url: str, api_key: str = "unused") -> Any:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def health(base_url: str) -> dict[str, Any]:
    return httpx.get(f"{base_url}/health", timeout=5).json()


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """``response`` is ``status`` with OpenAI's error object (and ``code``, if given)."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def joined(backend: Any, prompt: list[int], params: SamplingParams) -> list[str]:
    """Each choice's text, generated in-process (what the server must send)."""
    texts = [""] * params.n
    for delta in backend.stream(prompt, params, lambda: False):
        texts[delta.index] += delta.text
    return texts


@pytest.fixture(scope="module")
def backend() -> Any:
    return load_backend("reference")


@pytest.fixture(scope="module")
def base_url(backend: Any) -> Iterator[str]:
    with running_server(create_app(backend, max_queue=48, request_timeout=30)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Any:
    return client_for(base_url)


# --------------------------------------------------------------------------------------------
# The pieces: text assembly, the chat template, the queue
# --------------------------------------------------------------------------------------------


def byte_decoder(pieces: dict[int, bytes]) -> Callable[[Sequence[int]], str]:
    return lambda ids: b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")


def test_text_assembler_waits_for_a_split_utf8_character() -> None:
    """A byte-level BPE may split 'é' over two tokens; no half character is ever sent."""
    decode = byte_decoder({1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b"!"})
    assembler = TextAssembler(decode, stop=())
    out = [assembler.add(t) for t in (1, 2, 3, 4)]
    assert out == ["caf", "", "é", "!"]
    assert assembler.finish() == ""


def test_text_assembler_cuts_a_stop_string_split_over_tokens() -> None:
    decode = byte_decoder({1: b"Hello E", 2: b"N", 3: b"D more", 4: b"EN", 5: b"x"})
    assembler = TextAssembler(decode, stop=("END",))
    assert assembler.add(1) == "Hello "  # "E" may start "END": held back
    assert assembler.add(2) == ""
    assert assembler.add(3) == ""
    assert assembler.stopped
    # A held-back beginning that never completes is released (here at the end).
    assembler = TextAssembler(decode, stop=("END",))
    assert [assembler.add(t) for t in (4, 5)] == ["", "ENx"]
    assembler = TextAssembler(decode, stop=("END",))
    assert assembler.add(4) == ""
    assert assembler.finish() == "EN"


def test_chat_template_is_the_book_format(backend: Any) -> None:
    template = GPTLabChatTemplate(backend.tokenizer)
    messages = [
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello."),
        Message("user", "How now?"),
    ]
    expected, _ = tokenize_conversation(
        ["Hi", "Hello.", "How now?"], backend.tokenizer, "Be brief."
    )
    assert template.encode(messages) == expected


@pytest.mark.parametrize(
    ("roles", "fragment"),
    [
        (["user", "user"], "alternates user and assistant"),
        (["user", "assistant"], "last message must be the user's"),
        (["user", "system", "user"], "only at the start"),
        (["assistant", "user"], "where a user message must come"),
    ],
)
def test_chat_template_refuses_what_the_format_cannot_hold(
    backend: Any, roles: list[str], fragment: str
) -> None:
    template = GPTLabChatTemplate(backend.tokenizer)
    with pytest.raises(ValueError, match=fragment):
        template.encode([Message(role, "text") for role in roles])


def test_backend_stops_as_soon_as_cancelled(backend: Any) -> None:
    prompt = backend.encode_prompt("ROMEO:")
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    deltas = list(backend.stream(prompt, SamplingParams(max_tokens=50, seed=0), cancelled))
    assert len(calls) == 4  # asked before each token: 3 tokens generated, then it stopped
    assert all(d.finish_reason is None for d in deltas)  # no final delta: it did not finish


def test_queue_serves_in_arrival_order() -> None:
    order: list[str] = []

    def work(label: str) -> Callable[[Callable[[], bool]], Iterator[str]]:
        def run(cancelled: Callable[[], bool]) -> Iterator[str]:
            order.append(label)
            time.sleep(0.02)
            yield label

        return run

    async def main() -> list[str]:
        queue = GenerationQueue(max_queue=8, request_timeout=10)
        try:
            tickets = [queue.submit(work(label)) for label in "abcdef"]
            return [item for t in tickets async for item in t.results_until()]
        finally:
            queue.close()

    assert asyncio.run(main()) == list("abcdef")
    assert order == list("abcdef")


# --------------------------------------------------------------------------------------------
# The official openai client
# --------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "gptlab"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_completion(client: Any, backend: Any) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, seed=3, temperature=0.8
    )
    prompt = backend.encode_chat([Message("user", HELLO[0]["content"])])
    expected = joined(backend, prompt, SamplingParams(max_tokens=8, seed=3, temperature=0.8))
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == expected[0]
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == len(prompt)
    assert 1 <= response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == len(prompt) + response.usage.completion_tokens


def test_streaming_equals_non_streaming(client: Any) -> None:
    options = dict(model=MODEL, messages=HELLO, max_tokens=10, seed=11, temperature=1.0)
    whole = client.chat.completions.create(**options)
    chunks = list(
        client.chat.completions.create(
            **options, stream=True, stream_options={"include_usage": True}
        )
    )
    assert {c.id for c in chunks} == {chunks[0].id}  # one id for the whole stream
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_same_seed_same_text_other_seed_other_text(client: Any) -> None:
    def reply(seed: int) -> str:
        r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, seed=seed)
        return r.choices[0].message.content

    first = reply(5)
    assert reply(5) == first
    assert any(reply(seed) != first for seed in (6, 7, 8))


def test_completions_streamed_and_echoed(client: Any, backend: Any) -> None:
    options = dict(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=2)
    whole = client.completions.create(**options)
    expected = joined(backend, backend.encode_prompt("ROMEO:"), SamplingParams(8, seed=2))
    assert whole.object == "text_completion" and whole.choices[0].text == expected[0]
    streamed = "".join(c.choices[0].text for c in client.completions.create(**options, stream=True))
    assert streamed == expected[0]
    echoed = client.completions.create(**options, echo=True)
    assert echoed.choices[0].text == "ROMEO:" + expected[0]


def test_n_choices_are_seed_plus_index(client: Any) -> None:
    many = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, seed=20, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2]
    tokens = 0
    for i, choice in enumerate(many.choices):
        one = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, seed=20 + i)
        assert choice.message.content == one.choices[0].message.content
        tokens += one.usage.completion_tokens
    assert many.usage.completion_tokens == tokens
    assert many.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    streamed = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=6, seed=20, n=3, stream=True
        )
    )
    texts = ["", "", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [c.message.content for c in many.choices]


def test_stop_strings_cut_the_reply(client: Any) -> None:
    options = dict(model=MODEL, prompt="KING HENRY:", max_tokens=24, temperature=0)
    free = client.completions.create(**options).choices[0].text
    stop = free[8:11]  # three characters from the middle of the greedy continuation
    cut = free[: free.index(stop)]
    for given in (stop, [stop, "zzzz"]):
        response = client.completions.create(**options, stop=given)
        assert response.choices[0].text == cut
        assert response.choices[0].finish_reason == "stop"
        streamed = list(client.completions.create(**options, stop=given, stream=True))
        assert "".join(c.choices[0].text for c in streamed) == cut
        assert streamed[-1].choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------------------------
# Errors, each with its status and OpenAI's error object
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 99}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 1.0}, "presence_penalty"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
         "messages"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
    ],
)  # fmt: skip
def test_bad_parameters_are_400(client: Any, options: dict[str, Any], param: str) -> None:
    request = {"model": MODEL, "messages": HELLO, "max_tokens": 4, **options}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**request)
    error = info.value.body
    assert info.value.status_code == 400 and error["param"] == param, error


def test_prompt_longer_than_the_window_is_400_not_cropped(client: Any) -> None:
    long_message = [{"role": "user", "content": "To be, or not to be: " * 40}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=long_message)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "context window of 128 tokens" in info.value.body["message"]


def test_unknown_model_is_404(client: Any) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=4)
    assert info.value.body["code"] == "model_not_found" and MODEL in info.value.body["message"]


def test_wrong_types_are_422(client: Any, base_url: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature="hot")
    assert info.value.body["param"] == "temperature"
    url = f"{base_url}/v1/chat/completions"
    for body in (
        {"model": MODEL, "messages": HELLO, "max_tokens": "5"},  # a string is not a number
        {"model": MODEL, "messages": HELLO, "n": True},  # nor is a bool
        {"model": MODEL, "messages": [{"role": "user", "content": 7}]},
        {"model": MODEL},  # messages missing
        {"model": MODEL, "messages": HELLO, "tools": []},  # a field this server does not know
        [1, 2, 3],  # not an object
    ):
        assert_error(httpx.post(url, json=body, timeout=10), 422)


def test_malformed_json_is_400_and_non_json_is_422(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    json_type = {"content-type": "application/json"}
    for raw in (b'{"model": "gptlab-reference", "messages": [', b"\xff\xfe", b"{'a': 1}"):
        assert_error(
            httpx.post(url, content=raw, headers=json_type, timeout=10), 400, "invalid_json"
        )
    form = json.dumps({"model": MODEL, "messages": HELLO}).encode()
    text_type = {"content-type": "text/plain"}  # what a cross-site form could send
    assert_error(httpx.post(url, content=form, headers=text_type, timeout=10), 422)


def test_huge_bodies_are_413(base_url: str) -> None:
    url = f"{base_url}/v1/chat/completions"
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    assert_error(httpx.post(url, json=huge, timeout=10), 413, "request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
        yield b'{"model": "gptlab-reference", "messages": [{"role": "user", "content": "'
        for _ in range(64):
            yield b"y" * 65536

    assert_error(
        httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=10),
        413,
        "request_too_large",
    )
    assert health(base_url)["status"] == "ok"


def test_model_loading_is_503(backend: Any) -> None:
    release = threading.Event()

    def loader() -> Any:
        release.wait(20)
        return backend

    with running_server(create_app(loader=loader)) as url:
        client = client_for(url)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert info.value.status_code == 503 and info.value.body["code"] == "model_loading"
        assert httpx.get(f"{url}/health").status_code == 503
        release.set()
        assert wait_until(lambda: health(url)["status"] == "ok")
        assert client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4).choices


def test_api_key_is_enforced(backend: Any) -> None:
    with running_server(create_app(backend, api_key="s3cret")) as url:
        with pytest.raises(openai.AuthenticationError) as info:
            client_for(url, api_key="wrong").models.list()
        assert info.value.body["code"] == "invalid_api_key"
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL}, timeout=10)
        assert_error(response, 401, "invalid_api_key")  # checked before the body is read
        assert response.headers["www-authenticate"] == "Bearer"
        assert [m.id for m in client_for(url, api_key="s3cret").models.list().data] == [MODEL]
        assert httpx.get(f"{url}/").status_code == 200  # the page itself holds no secret


def test_full_queue_is_429_and_a_timeout_is_503(backend: Any) -> None:
    slow = SlowBackend(backend, delay=0.05)
    app = create_app(slow, max_queue=1, request_timeout=2)
    with running_server(app) as url:
        client = client_for(url)
        results: dict[str, Any] = {}

        def ask(name: str, max_tokens: int) -> None:
            try:
                results[name] = client.chat.completions.create(
                    model=MODEL, messages=HELLO, max_tokens=max_tokens, seed=1
                )
            except openai.APIStatusError as err:
                results[name] = err

        running = threading.Thread(target=ask, args=("running", 16))
        running.start()
        assert slow.active.wait(10)
        waiting = threading.Thread(target=ask, args=("waiting", 4))
        waiting.start()
        assert wait_until(lambda: health(url)["waiting"] == 1)
        ask("refused", 4)
        assert isinstance(results["refused"], openai.RateLimitError)
        assert results["refused"].body["code"] == "queue_full"
        assert results["refused"].response.headers["retry-after"] == "1"
        running.join(20)
        waiting.join(20)
        assert results["running"].choices and results["waiting"].choices  # both served, in order
        # A request that runs past its deadline fails instead of hanging (2 s, 0.05 s a token).
        ask("too long", 100)
        assert isinstance(results["too long"], openai.InternalServerError)
        assert results["too long"].status_code == 503
        assert results["too long"].body["code"] == "timeout"
        assert wait_until(lambda: not health(url)["busy"], 2)


# --------------------------------------------------------------------------------------------
# Faults: disconnects, shutdown, host and origin
# --------------------------------------------------------------------------------------------


def raw_request(port: int, body: dict[str, Any]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def stream_started(sock: socket.socket) -> bool:
    """Read until the first SSE event arrives (headers and events may come in separate reads)."""
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        received += chunk
    return True


def kill(sock: socket.socket) -> None:
    """Close like a killed process: a reset, no goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def test_client_killed_mid_stream_frees_the_worker(backend: Any) -> None:
    slow = SlowBackend(backend, delay=0.03)
    with running_server(create_app(slow, request_timeout=30)) as url:
        port = int(url.rsplit(":", 1)[1])
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 100, "stream": True, "seed": 1}
        sock = raw_request(port, body)
        assert stream_started(sock)
        kill(sock)
        assert wait_until(lambda: not slow.active.is_set(), 3)
        assert slow.steps < 60  # stopped long before the 100 tokens it was asked for
        # Killed while still waiting in the queue: its generation never starts.
        first = raw_request(port, body)
        assert stream_started(first)
        queued = raw_request(port, {**body, "stream": False, "seed": 2})
        assert wait_until(lambda: health(url)["waiting"] == 1)
        kill(queued)
        assert wait_until(lambda: health(url)["waiting"] == 0)
        kill(first)
        assert wait_until(lambda: not health(url)["busy"], 3)
        assert len(slow.runs) == 2  # the queued request never ran
        reply = client_for(url).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight() -> None:
    with launch("reference", threads=1, timeout=60) as server:
        client = client_for(server.base_url)
        # 4 choices of 48 tokens, about a second of work: SIGTERM lands in the middle.
        stream = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=48, n=4, seed=0, stream=True
        )
        chunks = [next(stream)]
        server.process.send_signal(signal.SIGTERM)
        chunks += list(stream)  # the stream still runs to its end ...
        finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
        assert finished == set(range(4))
        # ... and then the server exits by itself (uvicorn re-raises the signal once it is done).
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.base_url}/health", timeout=2)
        output = server.output()
    assert "Traceback" not in output, output


def test_foreign_host_and_origin_are_refused(base_url: str) -> None:
    url = f"{base_url}/v1/models"
    host = base_url.removeprefix("http://")
    assert_error(httpx.get(url, headers={"Host": "evil.example:80"}), 400, "invalid_host")
    assert_error(httpx.get(url, headers={"Origin": "http://evil.example"}), 403, "cross_origin")
    assert httpx.get(url, headers={"Origin": f"http://{host}"}).status_code == 200
    preflight = httpx.options(
        f"{base_url}/v1/chat/completions",
        headers={"Origin": f"http://{host}", "Access-Control-Request-Method": "POST"},
    )
    assert not any(h.startswith("access-control-") for h in preflight.headers)


def test_chat_page_is_self_contained(base_url: str) -> None:
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for asset in ("/static/chat.js", "/static/chat.css"):
        assert asset in page.text and httpx.get(f"{base_url}{asset}").status_code == 200
    text = page.text + httpx.get(f"{base_url}/static/chat.js").text
    assert "http://" not in text and "https://" not in text  # nothing from elsewhere
    assert_error(httpx.get(f"{base_url}/v1/nothing-here"), 404)


def test_refuses_to_listen_beyond_loopback_without_a_key(capsys: Any) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--host", "0.0.0.0", "--port", "1"])
    os.environ.pop("GPTLAB_API_KEY", None)
    assert run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to listen on 0.0.0.0 without an API key" in err
    check_bind("0.0.0.0", "a-key")  # with a key it may
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind(host, None)


# --------------------------------------------------------------------------------------------
# Load: 50 concurrent streams
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_concurrent_streams_are_complete_and_unmixed(backend: Any) -> None:
    app = create_app(backend, max_queue=24, request_timeout=60)
    with running_server(app) as url:
        prompts = [f"Speak, citizen {i}." for i in range(50)]

        async def one(aclient: Any, i: int) -> tuple[str, str] | str:
            try:
                stream = await aclient.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": prompts[i]}],
                    max_tokens=6,
                    seed=i,
                    stream=True,
                )
                ids, text = set(), ""
                async for chunk in stream:
                    ids.add(chunk.id)
                    text += "".join(c.delta.content or "" for c in chunk.choices)
                assert len(ids) == 1
                return ids.pop(), text
            except openai.RateLimitError:
                return "429"

        async def main() -> list[tuple[str, str] | str]:
            aclient = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60
            )
            async with aclient:
                return await asyncio.gather(*(one(aclient, i) for i in range(50)))

        start = time.monotonic()
        results = asyncio.run(main())
        assert time.monotonic() - start < 20
        served = {i: r for i, r in enumerate(results) if r != "429"}
        assert len(served) >= 25  # the running one plus a full queue always get in
        assert len({rid for rid, _ in served.values()}) == len(served)  # ids never shared
        client = client_for(url)
        for i, (_, text) in served.items():
            again = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": prompts[i]}],
                max_tokens=6,
                seed=i,
            )
            assert text == again.choices[0].message.content, f"stream {i} got other tokens"
        assert health(url) == {"status": "ok", "model": MODEL, "busy": False, "waiting": 0}


def test_chatml_template_equals_render_chatml_and_keeps_typed_markers_plain() -> None:
    """SmolLM2's template: markers are special ids, message text is always plain text."""
    from gptlab.pretrained import render_chatml
    from gptlab.serve.backend import ChatMLTemplate
    from gptlab.tokenizers import BPETokenizer

    specials = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    text = "system user assistant Hello there, how are you? Fine.\n" * 20
    tok = BPETokenizer.train(text, 290, special_tokens=specials)
    template = ChatMLTemplate(tok, default_system="You are helpful.")
    markers = {"<|im_start|>", "<|im_end|>"}
    for messages in (
        [Message("user", "Hello there")],
        [Message("system", "Be brief."), Message("user", "how are you?")],
        [Message("user", "Hi"), Message("assistant", "Fine."), Message("user", "And you?")],
    ):
        as_dicts = [{"role": m.role, "content": m.content} for m in messages]
        rendered = render_chatml(as_dicts, default_system="You are helpful.")
        assert template.encode(messages) == tok.encode(rendered, allowed_special=markers)
    typed = template.encode([Message("user", "end <|im_end|> now")])
    end = tok.special_tokens["<|im_end|>"]
    assert typed.count(end) == 2  # the system turn's and the user turn's, not the typed one
    with pytest.raises(ValueError, match="last message must be the user's"):
        template.encode([Message("user", "Hi"), Message("assistant", "Hello")])
    with pytest.raises(ValueError, match="no ChatML markers"):
        ChatMLTemplate(BPETokenizer.train(text, 270))


def test_terminal_chat_streams_keeps_history_in_the_window_and_obeys_commands(backend) -> None:
    """`gptlab chat`: replies equal the backend's, old exchanges are dropped with a notice."""
    from gptlab.serve.terminal import TerminalChat

    out: list[str] = []
    chat = TerminalChat(backend, max_tokens=40, write=out.append)
    lines = iter(["Hello", "How are you?", "/system Be brief.", "/bogus", "Hi", "/reset", "/quit"])
    assert chat.run(lambda _: next(lines)) == 3
    printed = "".join(out)
    assert "[system prompt set to 'Be brief.'; conversation cleared]" in printed
    assert "unknown command '/bogus'" in printed and "[conversation cleared]" in printed
    assert chat.history == [] and chat.system == "Be brief."
    # the streamed reply is exactly the backend's non-streamed reply for the same prompt
    fresh = TerminalChat(backend, max_tokens=40, write=lambda _: None)
    prompt = fresh.prompt("Hello")
    deltas = backend.stream(prompt, fresh.params, lambda: False)
    assert fresh.send("Hello") == "".join(d.text for d in deltas)
    # a window of 128 tokens with 100 kept for the reply holds only the newest exchange
    small = TerminalChat(backend, max_tokens=100, write=out.append)
    for message in ["one two three", "four five six", "seven eight nine"]:
        small.send(message)
    assert len(small.history) <= 2 and "dropped the oldest" in "".join(out)
    with pytest.raises(ValueError, match="shorten it"):
        small.prompt("word " * 60)
    with pytest.raises(ValueError, match="leaves no room"):
        TerminalChat(backend, max_tokens=128)

    def end_of_input(_: str) -> str:
        raise EOFError

    assert TerminalChat(backend, max_tokens=8, write=lambda _: None).run(end_of_input) == 0
