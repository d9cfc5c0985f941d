"""What a corpus is made of: :class:`Document` and :class:`Corpus` (no I/O here).

Every other module of :mod:`gptlab.data` builds on these two, so they sit at the bottom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Corpus", "Document", "check_members", "join_documents"]


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


def join_documents(documents: Sequence[Document]) -> str:
    """Each document's text ends with one newline; a blank line separates documents."""
    return "\n".join(doc.text for doc in documents)


def check_members(members: object) -> None:
    """A converter's input must be ``{member name: bytes}``, as the archive readers return it."""
    if not isinstance(members, Mapping):
        raise TypeError(
            f"members must be a mapping {{name: bytes}}, got {type(members).__name__}; pass what "
            "read_archive_members or read_local_files returns"
        )
    for name, content in members.items():
        if not isinstance(name, str) or not isinstance(content, bytes):
            raise TypeError(
                f"members must map str names to bytes, got {type(name).__name__} -> "
                f"{type(content).__name__}; encode text with .encode('utf-8') first"
            )
