"""The built book in a real browser: headless Chromium opens the pages from disk, offline.

Chromium runs with every host name unresolvable (``--host-resolver-rules``) and writes a
NetLog; a request that a page starts for an ``http(s)`` URL would be in it. The tests check
what a reader sees: typeset formulas (MathJax served by the site, no raw ``$$``), collapsed
solutions, a Colab button pointing at the repository, a working search. Screenshots of the
landing page and a chapter land in ``_build/screenshots/``.

Chromium comes from apt (``apt-get install -y chromium``; dev.sh and .ci/run install it when run
as root). Where it is missing these tests skip and say so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_book import BOOK, BRANCH, CHAPTERS, REPO, ROOT, html, site, visible_text

__all__ = ["html", "site"]  # session fixtures shared with tests/test_book.py (one build)

pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SCREENSHOTS = ROOT / "_build" / "screenshots"


@dataclass(frozen=True)
class Loaded:
    dom: str
    requests: list[str]  # http(s) URLs the page itself asked for


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "Chromium is not installed: `apt-get install -y chromium` (dev.sh and .ci/run do this "
        "when run as root) to run the browser checks"
    )


def _run_browser(browser: str, url: str, *args: str, netlog: Path | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="gptlab-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing can leave the machine
            "--virtual-time-budget=15000",
            *([f"--log-net-log={netlog}"] if netlog else []),
            *args,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"Chromium failed on {url}:\n{proc.stderr[-2000:]}"
    return proc.stdout


def _page_requests(netlog: Path) -> list[str]:
    """http(s) requests started by the page (Chromium's own background requests excluded)."""
    log = json.loads(netlog.read_text(encoding="utf-8"))
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        url = params.get("url", "")
        # Requests a page makes carry its origin ("null" for file://); the browser's own
        # update/time/account pings carry "not an origin".
        if (
            event["type"] == start
            and url.startswith("http")
            and params.get("initiator") != ("not an origin")
        ):
            urls.append(url)
    return urls


@pytest.fixture(scope="session")
def load(chromium: str, html: Path) -> Callable[[str], Loaded]:
    cache: dict[str, Loaded] = {}

    def _load(page: str) -> Loaded:
        if page not in cache:
            path, _, query = page.partition("?")
            url = (html / path).as_uri() + (f"?{query}" if query else "")
            with tempfile.TemporaryDirectory(prefix="gptlab-netlog-") as tmp:
                netlog = Path(tmp) / "netlog.json"
                dom = _run_browser(chromium, url, "--dump-dom", netlog=netlog)
                cache[page] = Loaded(dom, _page_requests(netlog))
        return cache[page]

    return _load


def _first_chapter() -> str:
    if not CHAPTERS:
        pytest.skip("no chapter notebook is in _toc.yml yet")
    return CHAPTERS[0]


def _chapter_with_exercises() -> str:
    for docname in CHAPTERS:
        if BOOK.notebook_exercises(ROOT / f"{docname}.ipynb"):
            return docname
    pytest.skip("no chapter in _toc.yml has exercises yet")


# -- tests -------------------------------------------------------------------------------------


def test_formulas_are_typeset_offline(site: object, load: Callable[[str], Loaded]) -> None:
    if not site.mathjax_local:
        pytest.skip(
            "MathJax is not installed locally (npm was unavailable), so pages use the CDN, "
            "which this offline browser cannot reach"
        )
    loaded = load("book/notation.html")
    assert loaded.dom.count("<mjx-container") >= 10, "MathJax did not typeset the formulas"
    text = visible_text(loaded.dom)
    assert "$$" not in text and "\\frac" not in text, "raw TeX is left on the page"


@pytest.mark.parametrize("page", ["index.html", "book/intro.html", "book/notation.html"])
def test_pages_make_no_request_leaving_the_machine(
    load: Callable[[str], Loaded], page: str
) -> None:
    assert load(page).requests == []


def test_chapter_makes_no_request_leaving_the_machine(load: Callable[[str], Loaded]) -> None:
    assert load(f"{_first_chapter()}.html").requests == []


def test_colab_link_points_at_the_repository(load: Callable[[str], Loaded]) -> None:
    docname = _first_chapter()
    dom = load(f"{docname}.html").dom
    expected = f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{docname}.ipynb"
    colab = set(re.findall(r'href="(https://colab\.research\.google\.com/[^"]*)"', dom))
    assert colab == {expected}, f"Colab links on {docname}: {colab}"


def test_solutions_are_collapsed(load: Callable[[str], Loaded]) -> None:
    docname = _chapter_with_exercises()
    dom = load(f"{docname}.html").dom
    solutions = re.findall(r'<div class="(solution [^"]*)"', dom)
    assert solutions, f"no solution on {docname}"
    for classes in solutions:
        assert {"dropdown", "toggle-hidden"} <= set(classes.split()), (
            f"a solution on {docname} is shown expanded ({classes})"
        )
    assert "<details open" not in dom


def test_search_finds_a_page(load: Callable[[str], Loaded]) -> None:
    dom = load("search.html?q=perplexity").dom
    results = re.findall(r'<li[^>]*>\s*<a href="([^"]+)"', dom.split('id="search-results"', 1)[-1])
    assert any("notation" in href for href in results), f"search results: {results[:10]}"


@pytest.mark.parametrize("name", ["landing", "chapter"])
def test_screenshots(chromium: str, html: Path, name: str) -> None:
    page = "book/intro.html" if name == "landing" else f"{_first_chapter()}.html"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / f"{name}.png"
    out.unlink(missing_ok=True)
    _run_browser(chromium, (html / page).as_uri(), f"--screenshot={out}", "--window-size=1280,900")
    assert out.is_file() and out.stat().st_size > 10_000, f"no screenshot of {page}"
