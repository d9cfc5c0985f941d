"""The rendered book: built once per test session exactly as the README builds it, then inspected.

The build (``book/_scripts/build_book.py``: MathJax from npm when possible, then
``jupyter-book build --all -W -n --keep-going .``) must finish with zero warnings; the HTML
must keep the promises the book makes to readers: numbered exercises with collapsed solutions,
a Colab button on every chapter, offline formulas, and no stray output (warnings, local paths,
progress bars) copied from a notebook into a page.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read _config.yml / _toc.yml")
pytest.importorskip(
    "jupyter_book", reason="the book extras are not installed: pip install -e '.[book]'"
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
REPO = CONFIG["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
BRANCH = CONFIG["repository"].get("branch", "main")

pytestmark = pytest.mark.slow


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # one module object, so the build cache is shared per session
    spec.loader.exec_module(module)
    return module


BUILD = _load("gptlab_build_book", ROOT / "book" / "_scripts" / "build_book.py")
BOOK = _load("gptlab_book", ROOT / "book" / "_ext" / "gptlab_book.py")


def _toc_files(node: object) -> list[str]:
    if isinstance(node, dict):
        return [
            f
            for key, value in node.items()
            for f in ([value] if key in ("file", "root") else _toc_files(value))
        ]
    if isinstance(node, list):
        return [f for item in node for f in _toc_files(item)]
    return []


TOC_FILES = [f.removesuffix(".ipynb").removesuffix(".md") for f in _toc_files(TOC)]
CHAPTERS = [f for f in TOC_FILES if BOOK.chapter_of(f)]


@pytest.fixture(scope="session")
def site() -> object:
    """The built book (one build per session, shared with tests/test_browser.py)."""
    return BUILD.build_site_once(ROOT)


@pytest.fixture(scope="session")
def html(site: object) -> Path:
    if site.returncode != 0:
        pytest.fail(f"the book did not build; log in _build/build.log:\n{site.log[-3000:]}")
    return site.html_dir


def _page(html: Path, docname: str) -> str:
    return (html / f"{docname}.html").read_text(encoding="utf-8")


class _VisibleText(HTMLParser):
    """The text a reader sees: everything outside <script>, <style> and <head>."""

    SKIP = {"script", "style", "head", "noscript"}

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if not self.depth:
            self.parts.append(data)


def visible_text(page: str) -> str:
    parser = _VisibleText()
    parser.feed(page)
    return "".join(parser.parts)


class _Resources(HTMLParser):
    """URLs a page loads by itself: scripts, stylesheets, icons, images, frames, media."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio", "embed") and a.get("src"):
            self.urls.append(a["src"])
        if (
            tag == "link"
            and a.get("href")
            and not {"canonical", "alternate", "next", "prev"} & set((a.get("rel") or "").split())
        ):
            self.urls.append(a["href"])


def loaded_urls(page: str) -> list[str]:
    parser = _Resources()
    parser.feed(page)
    return parser.urls


def is_external(url: str) -> bool:
    return url.startswith(("http://", "https://", "//"))


# -- the build -------------------------------------------------------------------------------


def test_book_builds_with_zero_warnings(site: object) -> None:
    problems = [
        line for line in site.log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line)
    ]
    assert site.returncode == 0 and not problems, "\n".join(problems) or site.log[-3000:]


def test_every_toc_page_is_built(html: Path) -> None:
    missing = [doc for doc in TOC_FILES if not (html / f"{doc}.html").is_file()]
    assert not missing, f"pages in _toc.yml without HTML: {missing}"
    assert (html / "index.html").is_file()
    assert (html / "searchindex.js").is_file() and (html / "search.html").is_file()


def test_landing_page_has_learning_path_and_prerequisites(html: Path) -> None:
    text = visible_text(_page(html, "book/intro"))
    for heading in (
        "What you will build",
        "Prerequisites",
        "Learning path",
        "How to use this book",
    ):
        assert heading in text


def test_logo_and_favicon_are_served(html: Path) -> None:
    page = _page(html, "book/intro")
    icons = re.findall(r'<link rel="icon" href="([^"]+)"', page)
    assert icons, "no favicon link"
    assert all((html / "book" / icon).resolve().is_file() for icon in icons), icons
    logos = re.findall(r'<img src="([^"]+)" class="logo__image', page)
    assert logos and all((html / "book" / logo).resolve().is_file() for logo in logos), logos


# -- chapters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("docname", CHAPTERS)
def test_chapter_has_colab_launch_button(html: Path, docname: str) -> None:
    url = f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/{docname}.ipynb"
    assert f'href="{url}"' in _page(html, docname), f"no Colab launch button to {url}"


@pytest.mark.parametrize("docname", CHAPTERS)
def test_exercises_are_numbered_by_chapter_with_collapsed_solutions(
    html: Path, docname: str
) -> None:
    page = _page(html, docname)
    chapter = BOOK.chapter_of(docname)
    exercises = BOOK.notebook_exercises(ROOT / f"{docname}.ipynb")
    numbers = re.findall(r'<span class="caption-number">Exercise ([\w.]+) </span>', page)
    assert numbers == [f"{chapter}.{k}" for k in range(1, len(exercises) + 1)]
    solutions = re.findall(r'<div class="solution ([^"]*)"', page)
    assert len(solutions) == len(exercises)
    assert all("dropdown" in classes.split() for classes in solutions), solutions


def test_exercise_index_lists_every_exercise(html: Path) -> None:
    page = _page(html, "book/exercises")
    text = visible_text(page)
    for docname in CHAPTERS:
        chapter = BOOK.chapter_of(docname)
        for k, exercise in enumerate(BOOK.notebook_exercises(ROOT / f"{docname}.ipynb"), 1):
            link = f'href="../{docname}.html#{exercise["label"]}"'
            assert link in page, f"book/exercises.html has no link to {docname} {exercise['label']}"
            assert f'gptlab.check("{chapter}.{k}", ...)' in text


# -- reading experience ------------------------------------------------------------------------

STRAY = {
    "a warning": re.compile(r"\b\w*Warning\b:"),
    "a local path": re.compile(r"(?<![\w.])/(?:tmp|root|home|work)/|site-packages|file://"),
    "a progress bar": re.compile(r"\d+%\|| \d+(?:\.\d+)?(?:it|s)/(?:s|it)\]"),
    "an object address": re.compile(r"object at 0x[0-9a-fA-F]+"),
    "raw display math": re.compile(r"\$\$"),
}


def _content_pages(html: Path) -> list[Path]:
    skip = {"search.html", "genindex.html"}
    return sorted(
        p for p in html.rglob("*.html") if p.name not in skip and "_static" not in p.parts
    )


def test_no_stray_output_in_pages(html: Path) -> None:
    found = []
    for path in _content_pages(html):
        page = path.read_text(encoding="utf-8")
        text = visible_text(page)
        for what, pattern in STRAY.items():
            for match in pattern.finditer(text):
                context = text[max(0, match.start() - 60) : match.end() + 60].replace("\n", " ")
                found.append(f"{path.relative_to(html)}: {what}: ...{context}...")
        if 'class="output stderr"' in page:
            found.append(f"{path.relative_to(html)}: a cell writes to stderr (shown on the page)")
    assert not found, "\n".join(found[:30])


def test_pages_load_nothing_from_outside(site: object, html: Path) -> None:
    cdn_mathjax = "https://cdn.jsdelivr.net/npm/mathjax"
    found = []
    for path in _content_pages(html):
        for url in loaded_urls(path.read_text(encoding="utf-8")):
            if not is_external(url):
                continue
            if not site.mathjax_local and url.startswith(cdn_mathjax):
                continue  # the documented fallback when npm could not install MathJax
            found.append(f"{path.relative_to(html)}: {url}")
    assert not found, "\n".join(found[:30])
    if not site.mathjax_local:
        pytest.skip("MathJax is not installed locally (no npm): pages use the CDN fallback")
    assert (html / "mathjax" / "tex-chtml.js").is_file()
    page = _page(html, "book/notation")
    assert 'src="../_static/../mathjax/tex-chtml.js' in page
