"""Code: Python source files (the running interpreter's standard library) -> one document each."""

from __future__ import annotations

import io
import pathlib
import sysconfig
import tokenize
from collections.abc import Mapping

from gptlab.data.documents import Document, check_members

__all__ = ["convert_python_files", "stdlib_root"]


def stdlib_root() -> pathlib.Path:
    """The folder of the running interpreter's standard library (what the corpus reads)."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def convert_python_files(members: Mapping[str, bytes]) -> list[Document]:
    """One document per module: title = path, genre = top-level import name, text = source.

    Files that describe this one build (``_sysconfigdata_*.py``) are skipped, as are files whose
    declared encoding cannot be read; line endings become ``\\n``.
    """
    check_members(members)
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
