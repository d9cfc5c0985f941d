"""Translations: gettext catalogues (``.po``) -> (English, translation) pairs as documents."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gptlab.data.documents import Document, check_members

__all__ = ["PoEntry", "convert_django_po", "parse_po"]


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


def convert_django_po(members: Mapping[str, bytes]) -> list[Document]:
    """``django/<app>/locale/<lang>/LC_MESSAGES/django.po`` -> one document per English string.

    Genre is the language code, turns are ``(English, translation)``. Plural, fuzzy, obsolete
    and untranslated entries are skipped, and each English string is kept once per language
    (its first translation in path order, ``django/conf`` before ``django/contrib/...``), so
    a split by document never puts the same source sentence on both sides.
    """
    check_members(members)
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
