"""Each chapter-12 checker accepts a right answer and rejects the usual wrong ones with a useful hint.

The reference answers in gptlab.exercises.ch12 are themselves checked against the server: the
SSE parser against a real streamed response, the stop filter against the server's
TextAssembler, the prompt-token count against the backend's ChatML template.
"""

from __future__ import annotations

import json
import random

import pytest

from gptlab.exercises import NotSolved, ch12, check, registered


def _hint(checker, answer, *args) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer, *args)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_12_exercises_are_registered():
    assert [k for k in registered() if k.startswith("12.")] == ["12.1", "12.2", "12.3", "12.4"]


def test_checkers_reject_non_callables_and_stubs(capsys):
    for checker in (ch12.check_parse_sse, ch12.check_stop_filter, ch12.check_retry_delay):
        assert "pass your function itself" in _hint(checker, 42)

    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("12.1", "12.2", "12.4"):
        assert check(exercise_id, stub) is False
        assert "NotImplementedError" in capsys.readouterr().out


# 12.1 parse raw SSE --------------------------------------------------------------------------------


def test_reference_parser_reads_a_real_streamed_response():
    from fastapi.testclient import TestClient

    from gptlab.serve.app import create_app
    from gptlab.serve.backend import load_backend

    backend = load_backend("reference")
    body = {
        "model": backend.model_id,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 12,
    }
    with TestClient(create_app(backend, loopback_only=False)) as client:
        whole = client.post("/v1/chat/completions", json={**body, "seed": 3}).json()
        raw = client.post(
            "/v1/chat/completions",
            json={**body, "seed": 3, "stream": True, "stream_options": {"include_usage": True}},
        ).content
    want = (whole["choices"][0]["message"]["content"], whole["choices"][0]["finish_reason"])
    for size in (1, 3, 64, len(raw)):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert ch12.parse_sse(chunks) == want


def _naive_lines(chunks):  # decodes and splits each chunk on its own
    text, finish = "", None
    for chunk in chunks:
        for line in chunk.decode("utf-8").split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    text += c["delta"].get("content") or ""
                    finish = c["finish_reason"] or finish
    return text, finish


def _no_comments(chunks):  # buffers, but parses every non-blank line as data
    buffer, text, finish = b"", "", None
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode().rstrip("\r")
            if not line or line == "data: [DONE]":
                continue
            for c in json.loads(line.removeprefix("data: "))["choices"]:
                text += c["delta"].get("content") or ""
                finish = c["finish_reason"] or finish
    return text, finish


def _decode_each_chunk(chunks):  # buffers text, but decodes each chunk separately
    buffer, text, finish = "", "", None
    for chunk in chunks:
        buffer += chunk.decode("utf-8", errors="replace")
        *lines, buffer = buffer.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    text += c["delta"].get("content") or ""
                    finish = c["finish_reason"] or finish
    return text, finish


def _done_as_json(chunks):
    data = b"".join(chunks).decode()
    text = ""
    for line in data.split("\n"):
        if line.startswith("data: "):
            for c in json.loads(line[6:])["choices"]:
                text += c["delta"].get("content") or ""
    return text, "stop"


def _first_choice(chunks):
    data = b"".join(chunks).decode()
    text = ""
    for line in data.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text, "stop"


def _content_key(chunks):
    data = b"".join(chunks).decode()
    text = ""
    for line in data.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:])["choices"]:
                text += c["delta"]["content"]
    return text, "stop"


def test_sse_checker_accepts_the_reference():
    assert ch12.check_parse_sse(ch12.parse_sse) is None


@pytest.mark.parametrize(
    ("wrong", "phrase"),
    [
        (_naive_lines, "middle of a line"),
        (_no_comments, "comment"),
        (_decode_each_chunk, "never decode a chunk on its own"),
        (_done_as_json, "[DONE]' is not JSON"),
        (_first_choice, "empty 'choices' list"),
        (_content_key, "empty delta"),
    ],
)
def test_sse_checker_names_the_mistake(wrong, phrase):
    assert phrase in _hint(ch12.check_parse_sse, wrong)


# 12.2 the stop filter -----------------------------------------------------------------------------


def test_reference_stop_filter_sends_what_the_server_sends():
    for pieces, stop in ch12._STOP_CASES:
        ref = ch12.StopFilter(stop)
        got = [ref.add(p) for p in pieces] + [ref.finish()]
        assert got == ch12._server_steps(pieces, stop)


class _PerPiece(ch12.StopFilter):  # looks for the stop string inside each piece only
    def add(self, piece):
        if self.stopped:
            return ""
        hits = [i for i in (piece.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            return piece[: min(hits)]
        return piece


class _HoldsTooMuch(ch12.StopFilter):  # always keeps the last len(stop) - 1 characters
    def add(self, piece):
        if self.stopped:
            return ""
        text = self.held + piece
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        keep = max(len(s) for s in self.stop) - 1
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep] if keep else text


class _NoFlush(ch12.StopFilter):
    def finish(self):
        return ""


class _FirstInList(ch12.StopFilter):  # cuts at the first stop string of the list that occurs
    def add(self, piece):
        if self.stopped:
            return ""
        text = self.held + piece
        for s in self.stop:
            if s in text:
                self.stopped, self.held = True, ""
                return text[: text.find(s)]
        return super().add(piece)


def test_stop_checker_accepts_the_reference():
    assert ch12.check_stop_filter(ch12.StopFilter) is None


@pytest.mark.parametrize(
    ("wrong", "phrase"),
    [
        (_PerPiece, "split over pieces"),
        (_HoldsTooMuch, "late"),
        (_NoFlush, "finish() must return"),
        (_FirstInList, "EARLIEST"),
    ],
)
def test_stop_checker_names_the_mistake(wrong, phrase):
    assert phrase in _hint(ch12.check_stop_filter, wrong)


# 12.3 prompt tokens -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    pytest.importorskip("gguf")
    return ch12._smollm2_tokenizer()


def test_prompt_token_checker_accepts_the_reference_and_matches_the_backend(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert ch12.check_count_prompt_tokens(ch12.count_prompt_tokens, tok) is None
    # the 37 tokens the chapter's first request reports as usage.prompt_tokens
    question = [{"role": "user", "content": "What is the capital of France?"}]
    assert ch12.count_prompt_tokens(question, tok) == 37


def _content_only(messages, tok):
    return sum(len(tok.encode_ordinary(m["content"])) for m in messages)


def _no_generation_prompt(messages, tok):
    from gptlab.pretrained import render_chatml

    text = render_chatml(messages, add_generation_prompt=False)
    return len(tok.encode(text, allowed_special=ch12.CHATML_MARKERS))


def _no_default_system(messages, tok):
    from gptlab.pretrained import render_chatml

    text = render_chatml(messages, default_system=None)
    return len(tok.encode(text, allowed_special=ch12.CHATML_MARKERS))


def _markers_as_text(messages, tok):
    from gptlab.pretrained import render_chatml

    return len(tok.encode_ordinary(render_chatml(messages)))


@pytest.mark.parametrize(
    ("wrong", "phrase"),
    [
        (_content_only, "only the messages' text"),
        (_no_generation_prompt, "<|im_start|>assistant"),
        (_no_default_system, "default one"),
        (_markers_as_text, "allowed_special"),
    ],
)
def test_prompt_token_checker_names_the_mistake(smollm2_tokenizer, wrong, phrase):
    assert phrase in _hint(ch12.check_count_prompt_tokens, wrong, smollm2_tokenizer)


# 12.4 retry delays --------------------------------------------------------------------------------


def test_retry_checker_accepts_the_reference_and_variants():
    assert ch12.check_retry_delay(ch12.retry_delay) is None

    def equal_jitter(attempt, retry_after, rng):  # half fixed, half random: also fine
        ceiling = min(60.0, 0.5 * 2 ** min(attempt, 10))
        return max(retry_after or 0.0, ceiling / 2 + rng.uniform(0, ceiling / 2)) + rng.random()

    assert ch12.check_retry_delay(equal_jitter) is None


@pytest.mark.parametrize(
    ("wrong", "phrase"),
    [
        (lambda a, ra, rng: rng.uniform(0, min(60, 0.5 * 2 ** min(a, 10))), "earns another 429"),
        (lambda a, ra, rng: (ra or 0) + min(60, 0.5 * 2 ** min(a, 10)), "thundering herd"),
        (lambda a, ra, rng: max(ra or 0, min(60, 0.5 * 2 ** min(a, 10))), "thundering herd"),
        (lambda a, ra, rng: (ra or 0) + rng.uniform(0, 0.5 * 2.0**a), "cap the backoff"),
        (lambda a, ra, rng: (ra or 0) + rng.uniform(0, 0.5 * (a + 1)), "too slowly"),
        (lambda a, ra, rng: (ra or 0) + rng.uniform(0, 1), "grow with the attempt"),
    ],
)
def test_retry_checker_names_the_mistake(wrong, phrase):
    assert phrase in _hint(ch12.check_retry_delay, wrong)


def test_reference_retry_delay_is_reproducible_with_a_seeded_rng():
    a = [ch12.retry_delay(3, 1.0, random.Random(5)) for _ in range(2)]
    assert a[0] == a[1] and 1.0 <= a[0] <= 5.0
