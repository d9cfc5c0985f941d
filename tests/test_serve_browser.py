"""The chat page of ``gptlab serve`` in headless Chromium (Python playwright, system Chromium).

A reader types a message, watches the reply stream in, sends a second turn, and presses Stop
in the middle of a third. The server runs in a thread around the reference model, slowed to
about 25 tokens a second (:class:`test_serve.SlowBackend`) so that streaming and stopping can
be seen. The page may only talk to its own origin: every request it makes is recorded and
checked. Chromium comes from apt (``apt-get install -y chromium``); where it is missing the
test skips and says so. Playwright's own browser download is never used.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs the playwright package"
)
pytest.importorskip("fastapi", reason="gptlab serve needs fastapi: pip install fastapi uvicorn")

from test_serve import SlowBackend, health, running_server, wait_until  # noqa: E402

from gptlab.serve.app import create_app  # noqa: E402
from gptlab.serve.backend import load_backend  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def page_url() -> Iterator[tuple[str, SlowBackend]]:
    slow = SlowBackend(load_backend("reference"), delay=0.04)
    with running_server(create_app(slow, request_timeout=60)) as url:
        yield url, slow


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: `apt-get install -y chromium` (dev.sh and .ci/run do this "
    "when run as root) to run the chat page in a browser",
)
def test_chat_page_streams_two_turns_and_stops(page_url: tuple[str, Any]) -> None:
    url, slow = page_url
    requests: list[str] = []
    console_errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.goto(url + "/")
            expect = sync_api.expect
            # The CSP forbids eval, so waits use locators (Playwright's isolated world).
            expect(page.locator("#model")).to_contain_text("gptlab-reference")
            page.click("#settings summary")  # open the settings
            page.fill("#max-tokens", "12")
            page.fill("#system", "You are a herald.")

            def say(text: str) -> Any:
                page.fill("#prompt", text)
                page.press("#prompt", "Enter")
                return page.locator(".msg.assistant").last

            # Turn 1: the reply streams in (seen part-way), then finishes.
            bubble = say("Good morrow, herald.")
            expect(bubble).to_have_attribute("data-state", "streaming")
            expect(bubble).not_to_have_text("")
            partial = bubble.text_content()
            expect(bubble).to_have_attribute("data-state", "done")
            first = bubble.text_content()
            assert first and first.startswith(partial) and len(first) > len(partial)

            # Turn 2: the history is sent along (the prompt grows by the first exchange).
            runs_before = len(slow.runs)
            bubble = say("What news from the king?")
            expect(bubble).to_have_attribute("data-state", "done")
            assert len(slow.runs) == runs_before + 1
            assert len(slow.runs[-1]) > len(slow.runs[-2]) + 5
            assert bubble.text_content()

            # Turn 3: press Stop while it streams; the server stops generating.
            page.fill("#max-tokens", "40")
            bubble = say("Tell me a long tale.")
            expect(bubble).not_to_have_text("")
            page.click("#stop")
            expect(bubble).to_have_attribute("data-state", "stopped")
            assert wait_until(lambda: not health(url)["busy"], 5)
            assert slow.steps < 12 + 12 + 40  # the third reply did not run to its end
            expect(page.locator(".msg.user")).to_have_count(3)
            expect(page.locator("#send")).to_be_enabled()
            expect(page.locator("#stop")).to_be_disabled()
        finally:
            browser.close()
    assert all(r.startswith(url + "/") for r in requests), requests  # same origin only
    assert console_errors == []
