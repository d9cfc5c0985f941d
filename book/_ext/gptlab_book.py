"""Sphinx extension for the GPT Lab book (loaded through ``sphinx.local_extensions`` in _config.yml).

It does three small jobs that configuration alone cannot:

1. **Offline math.** When ``_mathjax_extra/mathjax/tex-chtml.js`` exists (``book/_scripts/build_book.py``
   installs it from npm), pages load MathJax from the built site; otherwise they fall back to
   the CDN and the build says so.
2. **Exercise numbers per chapter.** Chapter numbers come from notebook file names
   (``notebooks/03_gpt_architecture.ipynb`` is chapter 3, ``notebooks/A_*.ipynb`` appendix A),
   so exercises render as "Exercise 3.1", "Exercise 3.2", ... -- the ids readers pass to
   ``gptlab.check`` -- whatever chapters exist yet.
3. **Offline Colab badges.** The badge image every notebook's first cell shows
   (``https://colab.research.google.com/assets/colab-badge.svg``, right on GitHub and Colab) is
   served from ``book/images/colab-badge.svg`` in the site, so pages make no outside request.
4. **The exercise index.** The ``exercise-index`` directive lists every exercise of every
   notebook in the table of contents, read from the notebooks at build time, so the list can
   never go stale.

The notebook-reading helpers are plain functions so that the tests use the same parser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.transforms import SphinxTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

MATHJAX_DIR = "_mathjax_extra"  # copied to the site root by html_extra_path
MATHJAX_ENTRY = "mathjax/tex-chtml.js"
CDN_NOTICE = (
    "GPT Lab: MathJax was not found in _mathjax_extra/mathjax (run book/_scripts/build_book.py "
    "with npm available to install it); formulas will load MathJax from the CDN."
)

COLAB_BADGE_URL = "https://colab.research.google.com/assets/colab-badge.svg"
LOCAL_COLAB_BADGE = "/book/images/colab-badge.svg"  # absolute = relative to the book root

# `notebooks/01_text_and_tokens` -> "1"; `notebooks/A_pretrained_weights` -> "A"
_CHAPTER_DOC = re.compile(r"^notebooks/(?:0*(?P<num>[1-9]\d*)|(?P<app>[A-Z]))_[^/]+$")
# The opening line of an exercise directive in a markdown cell, in backtick or colon fences,
# followed by its option lines (":label: ex-1-2").
_EXERCISE_OPEN = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{exercise(?:-start)?\}[ \t]*(?P<title>[^\n]*)\n"
    r"(?P<options>(?:[ \t]*:[\w-]+:[^\n]*\n?)*)",
    re.MULTILINE,
)
_SOLUTION_OPEN = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{solution(?:-start)?\}[ \t]*(?P<target>[^\n]*)\n"
    r"(?P<options>(?:[ \t]*:[\w-]+:[^\n]*\n?)*)",
    re.MULTILINE,
)
_CLASS_OPTION = re.compile(r"^[ \t]*:class:[ \t]*([^\n]*)", re.MULTILINE)
_LABEL_OPTION = re.compile(r"^[ \t]*:label:[ \t]*(\S+)", re.MULTILINE)
_HEADING = re.compile(r"^#[ \t]+(.+?)[ \t]*$", re.MULTILINE)


def chapter_of(docname: str) -> str | None:
    """The chapter number ("3") or appendix letter ("A") of a notebook document, else None."""
    match = _CHAPTER_DOC.match(docname)
    if match is None:
        return None
    return match.group("num") or match.group("app")


def _markdown_cells(path: Path) -> list[str]:
    notebook = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = cell.get("source", "")
            cells.append("".join(source) if isinstance(source, list) else source)
    return cells


def notebook_title(path: Path) -> str:
    """The first ``# heading`` of a notebook (its chapter title), or its file stem."""
    for source in _markdown_cells(path):
        match = _HEADING.search(source)
        if match:
            return match.group(1)
    return Path(path).stem


def notebook_exercises(path: Path) -> list[dict[str, str]]:
    """Every exercise directive in a notebook, in order: ``[{"label": ..., "title": ...}, ...]``.

    ``label`` is "" for an exercise without ``:label:`` (the tests reject those).
    """
    found = []
    for source in _markdown_cells(path):
        for match in _EXERCISE_OPEN.finditer(source):
            label = _LABEL_OPTION.search(match.group("options"))
            found.append(
                {"label": label.group(1) if label else "", "title": match.group("title").strip()}
            )
    return found


def notebook_solutions(path: Path) -> list[dict[str, Any]]:
    """Every solution directive in a notebook: ``[{"target": "ex-1-1", "classes": [...]}, ...]``."""
    found = []
    for source in _markdown_cells(path):
        for match in _SOLUTION_OPEN.finditer(source):
            classes = _CLASS_OPTION.search(match.group("options"))
            found.append(
                {
                    "target": match.group("target").strip(),
                    "classes": classes.group(1).split() if classes else [],
                }
            )
    return found


# -- 1. offline math -----------------------------------------------------------------------


def _use_local_mathjax(app: Sphinx, config: Config) -> None:
    root = Path(app.confdir)
    if (root / MATHJAX_DIR / MATHJAX_ENTRY).is_file():
        # mathjax_path is relative to _static/, so "../" reaches the site root.
        config.mathjax_path = f"../{MATHJAX_ENTRY}"
        extra = list(config.html_extra_path or [])
        if MATHJAX_DIR not in extra:
            config.html_extra_path = [*extra, MATHJAX_DIR]
        logger.info("GPT Lab: serving MathJax from the site (%s)", MATHJAX_DIR)
    else:
        logger.info(CDN_NOTICE)


# -- 2. exercise numbers per chapter ---------------------------------------------------------


def _number_exercises_by_chapter(app: Sphinx, env: Any) -> list[str]:
    """Renumber exercises "chapter.k" after Sphinx assigned its book-wide numbers."""
    changed = []
    for docname, by_type in env.toc_fignumbers.items():
        chapter = chapter_of(docname)
        exercises = by_type.get("exercise")
        if not exercises:
            continue
        # Sphinx numbered them in document order; keep that order, restart at 1 per chapter.
        ordered = sorted(exercises.items(), key=lambda item: item[1])
        for k, (node_id, _old) in enumerate(ordered, start=1):
            exercises[node_id] = (chapter, k) if chapter else (k,)
        changed.append(docname)
    return changed


# -- 3. offline Colab badges ------------------------------------------------------------------


class LocalColabBadge(SphinxTransform):
    """Point Colab badge images at the site's own copy (runs before images are collected)."""

    default_priority = 400

    def apply(self, **kwargs: Any) -> None:
        for image in self.document.findall(nodes.image):
            if image.get("uri") == COLAB_BADGE_URL:
                image["uri"] = LOCAL_COLAB_BADGE


# -- 4. the exercise index -------------------------------------------------------------------


class ExerciseIndex(SphinxDirective):
    """``exercise-index``: a list, per chapter, of links to every notebook exercise."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.env
        chapters = sorted(
            (doc for doc in env.found_docs if chapter_of(doc) is not None),
            key=_chapter_sort_key,
        )
        result: list[nodes.Node] = []
        for docname in chapters:
            path = Path(env.doc2path(docname))
            env.note_dependency(str(path))
            exercises = notebook_exercises(path)
            if not exercises:
                continue
            chapter = chapter_of(docname)
            title = nodes.strong()
            title += _xref("doc", docname, notebook_title(path), env.docname)
            result.append(nodes.paragraph("", "", title))
            items = nodes.bullet_list()
            for k, exercise in enumerate(exercises, start=1):
                number = f"{chapter}.{k}"
                text = f"Exercise {number}"
                if exercise["title"]:
                    text += f": {exercise['title']}"
                para = nodes.paragraph()
                if exercise["label"]:
                    # Sphinx stores label names lowercased ("ex-a-1" for ex-A-1), as :ref: does
                    para += _xref("ref", exercise["label"].lower(), text, env.docname)
                else:
                    para += nodes.Text(text)
                para += nodes.Text(" — check with ")
                para += nodes.literal(text=f'gptlab.check("{number}", ...)')
                items += nodes.list_item("", para)
            result.append(items)
        if not result:
            result.append(nodes.paragraph(text="No chapter has exercises yet."))
        return result


def _chapter_sort_key(docname: str) -> tuple[int, str]:
    chapter = chapter_of(docname) or ""
    return (0, f"{int(chapter):04d}") if chapter.isdigit() else (1, chapter)


def _xref(reftype: str, target: str, text: str, fromdoc: str) -> addnodes.pending_xref:
    if reftype == "doc":
        target = "/" + target  # absolute docname
    ref = addnodes.pending_xref(
        "",
        refdomain="std",
        reftype=reftype,
        reftarget=target,
        refexplicit=True,
        refwarn=True,
        refdoc=fromdoc,
    )
    ref += nodes.inline(text=text)
    return ref


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", _use_local_mathjax)
    # After Sphinx's own TocTreeCollector (priority 500) has assigned figure numbers.
    app.connect("env-get-updated", _number_exercises_by_chapter, priority=900)
    app.add_transform(LocalColabBadge)
    app.add_directive("exercise-index", ExerciseIndex)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
