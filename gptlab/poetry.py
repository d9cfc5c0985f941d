"""Classical Chinese poems: a corpus of Tang poems, and a checker of their strict form.

A 近体诗 (regulated poem) has rules a program can check, so a model's poems can be scored:

* **lines** — 4 lines (绝句) or 8 (律诗);
* **chars** — every line has 5 (五言) or 7 (七言) Han characters;
* **punctuation** — odd lines end with ``，``, even lines with ``。`` (``？`` and ``！`` are
  accepted at any line end, ``；`` at an even line that is not the last);
* **rhyme** — the last characters of the even lines rhyme (the first line may rhyme too);
* **tones** — the 平仄 pattern matches one of the four standard ones, at positions 2, 4 and 6
  only: "一三五不论，二四六分明".

**Rhyme, approximated in modern Mandarin.** Tang poets rhymed by the 平水韵 groups of Middle
Chinese, which modern pronunciation only approximates. We group pinyin finals as the modern
中华新韵 does (ang/iang/uang together, an/ian/uan/üan, en/in/un/ün, eng/ing/ong/iong, ...) with
two merges the old groups make: 支 (zhi, chi, shi, ri, zi, ci, si) rhymes with 齐 (i, er), and ü
rhymes both with i and with u (平水韵 鱼/虞). Two characters rhyme when they share a group and a
tone class (平 = modern tones 1, 2; 仄 = 3, 4). Every reading pypinyin knows counts (斜 rhymes
with 家 through its old reading xia), plus a short table of readings Mandarin lost (簪 zen).
Rhymes that modern finals split (灰韵: 回 hui, 来 lai) are missed.

**Tones, and the 入声 limitation.** A character is 平 in modern tones 1 and 2, 仄 in 3 and 4,
read in the context of its line (pypinyin's phrase dictionary). Middle Chinese had a fourth,
"entering" tone (入声, short syllables ending in -p, -t, -k), which counts as 仄 and which
Mandarin spread over all four tones: those read today in tone 1 or 2 (国 guó, 白 bái, 一 yī)
would be misread as 平. :data:`RUSHENG` lists 123 common ones, read as 仄; rarer ones are
still misclassified. 27 characters with a level and an oblique reading (看, 望, 为,
长, ...) match either tone.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptlab.constraints import HAN_CLASS, is_han
from gptlab.data.documents import Document, check_members
from gptlab.evaluate.contamination import check_split, find_overlap, normalize

__all__ = [
    "RULES",
    "RUSHENG",
    "Poem",
    "PoemReport",
    "check_poem",
    "convert_tang_poems",
    "form_pass_rates",
    "poem_form",
    "rhyme_keys",
    "split_poems",
    "tang_poems_from_members",
    "to_simplified",
    "tone_pattern",
]

RULES = ("lines", "chars", "punctuation", "rhyme", "tones")

#: Marks that end a line (句) of a poem. ``、`` and ``：`` end a line too, so that the data's
#: rare lines ending in them are counted (and fail the punctuation rule).
LINE_END_MARKS = "，。？！；：、"
_ODD_ENDS = "，？！"
_EVEN_ENDS = "。？！；"
_LAST_ENDS = "。？！"
_CLEAN_TEXT = re.compile(f"[{HAN_CLASS}{LINE_END_MARKS}]*")
_HALF_TO_FULL = str.maketrans({",": "，", ".": "。", "?": "？", "!": "！", ";": "；", ":": "："})

#: Common 入声 characters that modern Mandarin reads in tone 1 or 2; they count as 仄.
RUSHENG = frozenset(
    "一七八十拾不白石国竹独发出别急节福合学习食德觉屋读直实识席昔惜息夕歇湿失织黑说缺接滴笛敌杰"
    "结折泽则极集及击积得隔阁格菊局族足薄博伯泊佛杀插压鸭答达拔察烛逐熟叔俗毒突忽活滑昨捉曲"
    "酌浊郭割鸽哭屈橘决绝穴舌蝶叠贴协侠狭峡夹劫截洁捷额宅摘拍伏服幅揖吉疾籍"
)
#: Characters read 平 or 仄 with the same meaning in verse: they match either tone.
#: Besides same-meaning pairs (看 听 望 过 忘 醒 叹 胜) these are common characters whose two
#: meanings differ in tone (为 wéi/wèi, 长 cháng/zhǎng, 骑 qí/jì, ...): read out of context,
#: pypinyin often picks the wrong one, which was the most frequent cause of a failed 平仄 check
#: on the Tang corpus.
_EITHER = frozenset("看听望过忘醒叹胜为相教长将分骑思兴应重间中论量更令传行")
#: Rhyme readings modern Mandarin lost: 簪 belongs to the 侵 group (modern zān, old *tsim).
_OLD_RHYMES: dict[str, tuple[str, ...]] = {"簪": ("zen1",)}

_RHYME_GROUPS: dict[str, tuple[str, ...]] = {
    "a": ("麻",),
    "ia": ("麻",),
    "ua": ("麻",),
    "o": ("波",),
    "uo": ("波",),
    "e": ("波",),
    "io": ("波",),
    "ie": ("皆",),
    "ve": ("皆",),
    "ai": ("开",),
    "uai": ("开",),
    "ei": ("微",),
    "uei": ("微",),
    "ao": ("豪",),
    "iao": ("豪",),
    "ou": ("尤",),
    "iou": ("尤",),
    "an": ("寒",),
    "ian": ("寒",),
    "uan": ("寒",),
    "van": ("寒",),
    "en": ("文",),
    "in": ("文",),
    "uen": ("文",),
    "vn": ("文",),
    "ang": ("唐",),
    "iang": ("唐",),
    "uang": ("唐",),
    "eng": ("庚",),
    "ing": ("庚",),
    "ueng": ("庚",),
    "ong": ("庚",),
    "iong": ("庚",),
    "i": ("齐",),
    "er": ("齐",),
    "v": ("齐", "姑"),
    "u": ("姑",),
}

# The four line types of a 五言 poem (平 = level, 仄 = oblique); 七言 lines prefix the opposite
# of a line's first two tones. A poem cycles a -> b -> c -> d; 首句入韵 swaps its first line for
# the rhyming type with the same start (a -> d, c -> b).
_LINE_TYPES = {"a": "仄仄平平仄", "b": "平平仄仄平", "c": "平平平仄仄", "d": "仄仄仄平平"}
_CYCLE = "abcd"
_FLIP = str.maketrans("平仄", "仄平")


# --------------------------------------------------------------------------------------------
# Optional dependencies: opencc and pypinyin
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _opencc() -> Any:
    try:
        import opencc
    except ImportError:
        raise ImportError(
            "converting traditional to simplified characters needs opencc: "
            "pip install 'opencc==1.4.2'"
        ) from None
    return opencc.OpenCC("t2s")


@functools.lru_cache(maxsize=1)
def _pypinyin() -> Any:
    try:
        import pypinyin
    except ImportError:
        raise ImportError(
            "reading tones and rhymes needs pypinyin: pip install 'pypinyin==0.55.0'"
        ) from None
    return pypinyin


def to_simplified(text: str) -> str:
    """``text`` in simplified characters (OpenCC's ``t2s``: 舉頭望明月 -> 举头望明月)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _opencc().convert(text)


# --------------------------------------------------------------------------------------------
# Lines
# --------------------------------------------------------------------------------------------


def _parse_lines(text: str) -> list[tuple[str, str]]:
    """``text`` as ``(body, mark)`` lines: a line ends at a mark of :data:`LINE_END_MARKS` (its
    ``mark``) or at a newline or the end of the text (``mark`` empty). Spaces are dropped and
    half-width punctuation is read as full-width."""
    lines: list[tuple[str, str]] = []
    body: list[str] = []
    for char in text.translate(_HALF_TO_FULL):
        if char in LINE_END_MARKS:
            lines.append(("".join(body), char))
            body = []
        elif char == "\n":
            if body:
                lines.append(("".join(body), ""))
            body = []
        elif not char.isspace():
            body.append(char)
    if body:
        lines.append(("".join(body), ""))
    return lines


def _form_of(n_lines: int, lengths: set[int]) -> str | None:
    if n_lines not in (4, 8) or len(lengths) != 1 or not lengths <= {5, 7}:
        return None
    return ("五言" if 5 in lengths else "七言") + ("绝句" if n_lines == 4 else "律诗")


def poem_form(lines: Sequence[str]) -> str | None:
    """ "五言绝句", "七言律诗", ... from line count and length alone; None for any other shape."""
    bodies = [body for body, _ in _parse_lines("\n".join(_check_lines(lines)))]
    if not all(all(map(is_han, b)) for b in bodies):
        return None
    return _form_of(len(bodies), {len(b) for b in bodies})


def _check_lines(lines: Any) -> list[str]:
    if isinstance(lines, str) or not isinstance(lines, Sequence):
        raise TypeError(f"lines must be a list of str, got {type(lines).__name__}")
    for k, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"lines[{k}] must be a str, got {type(line).__name__}")
    return list(lines)


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poem:
    """One poem in simplified characters. ``lines`` are its 句, each with its closing mark
    (``"床前明月光，"``); ``source_id`` is the record's id in its collection."""

    title: str
    author: str
    lines: tuple[str, ...]
    collection: str
    source_id: str

    @property
    def text(self) -> str:
        """The poem with one couplet (two lines) per line of text, no title."""
        return "\n".join("".join(self.lines[k : k + 2]) for k in range(0, len(self.lines), 2))

    @property
    def form(self) -> str | None:
        """ "五言绝句" etc. by shape (see :func:`poem_form`), None for other poems."""
        return poem_form(self.lines)


def _poem_or_none(record: Any, where: str, collection: str) -> Poem | None:
    """The record as a :class:`Poem`, or None if its text is missing, garbled or annotated."""
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a {type(record).__name__}, not a poem object")
    paragraphs = record.get("paragraphs")
    if not isinstance(paragraphs, list) or not all(isinstance(p, str) for p in paragraphs):
        raise ValueError(f"{where} has no 'paragraphs' list of strings; is this a poem file?")
    if not paragraphs or any(not p.strip() for p in paragraphs):
        return None  # empty poem or empty lines: text is missing
    text = to_simplified("".join(p.strip() for p in paragraphs)).translate(_HALF_TO_FULL)
    # Anything but Han characters and line marks is damage or an editor's note: □ for a lost
    # character, [襟] for a restored one, （一作…） for a variant reading, quotes, digits.
    if not _CLEAN_TEXT.fullmatch(text):
        return None
    lines = _parse_lines(text)
    if not lines or any(not body or not mark for body, mark in lines):
        return None  # a line with no character (，，) or text after the last mark
    title = record.get("title")
    author = record.get("author")
    return Poem(
        title=to_simplified(title.strip()) if isinstance(title, str) else "",
        author=to_simplified(author.strip())
        if isinstance(author, str) and author.strip()
        else "佚名",
        lines=tuple(body + mark for body, mark in lines),
        collection=collection,
        source_id=str(record.get("id") or where),
    )


def tang_poems_from_members(members: Mapping[str, bytes]) -> list[Poem]:
    """The poems of chinese-poetry's JSON files (``{member name: bytes}``), cleaned.

    Each member is a JSON list of ``{"author", "title", "paragraphs", "id"}`` objects in
    traditional characters (``package/dist/quantangshi/poet.tang.*.json``). Poems are converted
    to simplified characters (OpenCC ``t2s``) with full-width punctuation; poems whose text is
    missing or damaged (empty lines, □, bracketed notes or variants, any character that is
    neither Han nor a line mark) are dropped, as is every poem whose normalised text repeats
    an earlier one (members are read in name order). ``collection`` is the member's folder
    (``quantangshi``); ``source_id`` the record's ``id``.
    """
    check_members(members)
    poems: list[Poem] = []
    seen: set[str] = set()
    for name in sorted(members):
        try:
            records = json.loads(members[name].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"member {name!r} is not UTF-8 JSON: {exc}") from None
        if not isinstance(records, list):
            raise ValueError(
                f"member {name!r} holds a {type(records).__name__}, not a list of poems; pass "
                "the poet.tang.*.json members"
            )
        parts = name.split("/")
        collection = parts[-2] if len(parts) > 1 else ""
        for k, record in enumerate(records):
            poem = _poem_or_none(record, f"{name}[{k}]", collection)
            if poem is None:
                continue
            key = normalize(poem.text)
            if key not in seen:
                seen.add(key)
                poems.append(poem)
    return poems


def convert_tang_poems(members: Mapping[str, bytes]) -> list[Document]:
    """Corpus-registry converter: :func:`tang_poems_from_members` as documents.

    ``title`` is ``author《title》``, ``genre`` the form (``"五言绝句"``, ...; ``"其他"`` for any
    other shape), ``text`` the poem (one couplet per line) ending with a newline.
    """
    return [
        Document(title=f"{p.author}《{p.title}》", genre=p.form or "其他", text=p.text + "\n")
        for p in tang_poems_from_members(members)
    ]


def split_poems(
    poems: Sequence[Poem], val_fraction: float, seed: int, by: str = "author", n: int = 8
) -> tuple[list[Poem], list[Poem]]:
    """Split ``poems`` into (train, val) so that no poet and no poem text is on both sides.

    ``by="author"`` puts all of a poet's poems on one side: authors are shuffled with ``seed``
    and moved to validation while they fit in ``val_fraction`` of the poems (so validation holds
    at most that share). ``by="poem"`` splits poems individually. Then every validation poem
    that shares a character ``n``-gram with training (the same poem under another name, a
    quoted couplet) is dropped, and :func:`~gptlab.evaluate.contamination.check_split` proves
    the result clean.
    """
    if isinstance(poems, str) or not isinstance(poems, Sequence) or not poems:
        raise ValueError("poems must be a non-empty list of Poem; load them first")
    for k, poem in enumerate(poems):
        if not isinstance(poem, Poem):
            raise TypeError(f"poems[{k}] is a {type(poem).__name__}, not a Poem")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a number, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}; 0.1 is usual")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if by not in ("author", "poem"):
        raise ValueError(f"by must be 'author' or 'poem', got {by!r}")
    key = (lambda p: p.author) if by == "author" else (lambda p: p.source_id + "\0" + p.text)
    groups: dict[str, list[int]] = {}
    for k, poem in enumerate(poems):
        groups.setdefault(key(poem), []).append(k)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    target = round(val_fraction * len(poems))
    val_ids: set[int] = set()
    for name in names:
        if len(val_ids) + len(groups[name]) <= target:
            val_ids.update(groups[name])
    if not val_ids:
        raise ValueError(
            f"no {by} fits in val_fraction={val_fraction} of {len(poems)} poems (every group is "
            "larger); raise val_fraction or split by='poem'"
        )
    train = [p for k, p in enumerate(poems) if k not in val_ids]
    val = [p for k, p in enumerate(poems) if k in val_ids]
    train_texts = [p.text for p in train]
    leaked = set(find_overlap(train_texts, [p.text for p in val], n).contaminated())
    val = [p for k, p in enumerate(val) if k not in leaked]
    if not val:
        raise ValueError("every validation poem overlaps training; use more poems")
    check_split(train_texts, [p.text for p in val], n)
    return train, val


# --------------------------------------------------------------------------------------------
# Tones and rhymes
# --------------------------------------------------------------------------------------------


def _tone_class(char: str, reading: str | None) -> str:
    """'平', '仄', or '*' (either / unknown) for ``char`` read as ``reading`` (e.g. 'guang1')."""
    if char in _EITHER:
        return "*"
    if char in RUSHENG:
        return "仄"
    tone = reading[-1] if reading and reading[-1].isdigit() else ""
    return {"1": "平", "2": "平", "3": "仄", "4": "仄"}.get(tone, "*")


def tone_pattern(line: str) -> str:
    """The 平仄 of each character of ``line`` (``*``: either tone, or not known).

    >>> tone_pattern("国破山河在")  # doctest: +SKIP
    '仄仄平平仄'
    """
    if not isinstance(line, str):
        raise TypeError(f"line must be a str, got {type(line).__name__}")
    if not line:
        return ""
    pp = _pypinyin()
    readings = pp.pinyin(line, style=pp.Style.TONE3, neutral_tone_with_five=True)
    if len(readings) != len(line):  # non-Han runs come back whole: read character by character
        readings = [
            pp.pinyin(c, style=pp.Style.TONE3, neutral_tone_with_five=True)[0] for c in line
        ]
    return "".join(
        _tone_class(c, r[0]) if is_han(c) else "*" for c, r in zip(line, readings, strict=True)
    )


@functools.lru_cache(maxsize=65536)
def rhyme_keys(char: str) -> frozenset[str]:
    """The rhymes ``char`` can take, as ``group + tone class`` keys such as ``"唐平"``.

    One key per rhyme group of each of its readings (see the module docstring); empty for a
    character that is not Han. Two characters rhyme when their keys intersect.
    """
    if not isinstance(char, str) or len(char) != 1:
        raise ValueError(f"rhyme_keys expects one character, got {char!r}")
    if not is_han(char):
        return frozenset()
    pp = _pypinyin()
    from pypinyin.contrib.tone_convert import to_finals

    readings = pp.pinyin(char, style=pp.Style.TONE3, heteronym=True, neutral_tone_with_five=True)
    keys: set[str] = set()
    for reading in [*readings[0], *_OLD_RHYMES.get(char, ())]:
        tone = _tone_class(char, reading)
        # zhi/chi/shi/ri/zi/ci/si have the final "i" too, so 支 falls in 齐 as intended.
        for group in _RHYME_GROUPS.get(to_finals(reading, strict=True), ()):
            keys.update(group + t for t in (("平", "仄") if tone == "*" else (tone,)))
    return frozenset(keys)


# --------------------------------------------------------------------------------------------
# The form checker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoemReport:
    """What :func:`check_poem` found. ``checks`` maps each rule of :data:`RULES` to pass/fail;
    ``problems`` says in words what failed. ``rhyme`` is the shared rhyme (``"唐平"``: the 唐
    group, level tone) and ``pattern`` the standard 平仄 pattern that fits best."""

    lines: tuple[str, ...]
    marks: tuple[str, ...]
    form: str | None
    checks: dict[str, bool]
    problems: tuple[str, ...]
    rhyme: str | None = None
    first_line_rhymes: bool = False
    pattern: str | None = None
    tones: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the poem passes every rule."""
        return all(self.checks.values())


def _patterns(n_lines: int, length: int) -> dict[str, tuple[str, ...]]:
    """The four standard 平仄 patterns for a poem of this shape, by name."""
    out: dict[str, tuple[str, ...]] = {}
    for start, rhymed in (("a", "d"), ("c", "b")):
        k = _CYCLE.index(start)
        base = [_LINE_TYPES[_CYCLE[(k + i) % 4]] for i in range(n_lines)]
        if length == 7:
            base = [line[:2].translate(_FLIP) + line for line in base]
        for first_rhymes in (False, True):
            lines = list(base)
            if first_rhymes:
                line = _LINE_TYPES[rhymed]
                lines[0] = line[:2].translate(_FLIP) + line if length == 7 else line
            name = ("平起" if lines[0][1] == "平" else "仄起") + (
                "首句入韵" if first_rhymes else "首句不入韵"
            )
            out[name] = tuple(lines)
    return out


def _tone_mismatches(tones: Sequence[str], pattern: Sequence[str]) -> list[tuple[int, int]]:
    """(line, position), both from 1, where a checked position (2, 4, 6) breaks ``pattern``."""
    return [
        (i + 1, pos)
        for i, (got, want) in enumerate(zip(tones, pattern, strict=True))
        for pos in (2, 4, 6)
        if pos <= len(want) and got[pos - 1] != "*" and got[pos - 1] != want[pos - 1]
    ]


def check_poem(poem: str | Sequence[str] | Poem) -> PoemReport:
    """Check a poem against the rules of a 绝句 / 律诗 (see the module docstring).

    ``poem`` is text (lines end at punctuation or newlines), a list of lines, or a
    :class:`Poem`. Every rule is checked and reported even when an earlier one fails, except
    ``tones``, which needs the shape of a 绝句 or 律诗 and fails without it.
    """
    if isinstance(poem, Poem):
        text = "\n".join(poem.lines)
    elif isinstance(poem, str):
        text = poem
    else:
        text = "\n".join(_check_lines(poem))
    parsed = _parse_lines(text)
    bodies = tuple(body for body, _ in parsed)
    marks = tuple(mark for _, mark in parsed)
    problems: list[str] = []
    checks: dict[str, bool] = {}

    n = len(bodies)
    checks["lines"] = n in (4, 8)
    if not checks["lines"]:
        problems.append(f"{n} lines: a 绝句 has 4, a 律诗 8")

    lengths = {len(b) for b in bodies}
    non_han = [(i + 1, c) for i, b in enumerate(bodies) for c in b if not is_han(c)]
    checks["chars"] = bool(bodies) and not non_han and len(lengths) == 1 and lengths <= {5, 7}
    if non_han:
        problems.append(f"line {non_han[0][0]} holds {non_han[0][1]!r}, not a Han character")
    if bodies and (len(lengths) != 1 or not lengths <= {5, 7}):
        counts = "/".join(str(len(b)) for b in bodies)
        problems.append(f"characters per line {counts}: every line must have 5, or every 7")
    form = _form_of(n, lengths) if checks["lines"] and checks["chars"] else None

    bad_marks = []
    for i, mark in enumerate(marks):
        allowed = _ODD_ENDS if i % 2 == 0 else (_LAST_ENDS if i == n - 1 else _EVEN_ENDS)
        if mark not in allowed or not mark:
            bad_marks.append(
                f"line {i + 1} ends with {mark or 'no mark'!r}, expected {allowed[0]!r}"
            )
    checks["punctuation"] = bool(marks) and not bad_marks
    problems.extend(bad_marks[:2])

    rhyme, first_rhymes = None, False
    ends = [b[-1] if b else "" for b in bodies]
    even_ends = ends[1::2]
    if len(even_ends) >= 2 and all(even_ends):
        common = frozenset.intersection(*(rhyme_keys(c) for c in even_ends))
        if common:
            rhyme = min(common, key=lambda k: (k[-1] != "平", k))  # prefer a level-tone rhyme
            first_rhymes = bool(ends[0]) and rhyme in rhyme_keys(ends[0])
    checks["rhyme"] = rhyme is not None
    if rhyme is None:
        problems.append(
            f"the even lines' last characters {''.join(even_ends)!r} do not rhyme"
            if len(even_ends) >= 2
            else "fewer than two even lines: nothing to rhyme"
        )

    tones = tuple(tone_pattern(b) if all(map(is_han, b)) else "*" * len(b) for b in bodies)
    pattern = None
    if form is None:
        checks["tones"] = False
        problems.append("tonal pattern not checked: it needs 4 or 8 lines of 5 or 7 characters")
    else:
        candidates = _patterns(n, len(bodies[0]))
        scored = sorted(
            candidates,
            key=lambda name: (
                len(_tone_mismatches(tones, candidates[name])),
                ("不入韵" not in name) != first_rhymes,  # prefer the name fitting line 1
                name,
            ),
        )
        pattern = scored[0]
        wrong = _tone_mismatches(tones, candidates[pattern])
        checks["tones"] = not wrong
        if wrong:
            where = ", ".join(f"line {i} position {p}" for i, p in wrong[:4])
            problems.append(f"平仄 breaks {pattern} at {where}")
    return PoemReport(
        lines=bodies,
        marks=marks,
        form=form,
        checks=checks,
        problems=tuple(problems),
        rhyme=rhyme,
        first_line_rhymes=first_rhymes,
        pattern=pattern,
        tones=tones,
    )


def form_pass_rates(poems: Sequence[str | Sequence[str] | Poem]) -> dict[str, float]:
    """The share of ``poems`` passing each rule of :data:`RULES`, and ``"ok"`` (all of them)."""
    if isinstance(poems, str) or not isinstance(poems, Sequence) or not poems:
        raise ValueError(
            "poems must be a non-empty list of poems (texts, line lists or Poem objects); "
            "wrap a single poem in a list"
        )
    reports = [check_poem(p) for p in poems]
    rates = {rule: sum(r.checks[rule] for r in reports) / len(reports) for rule in RULES}
    rates["ok"] = sum(r.ok for r in reports) / len(reports)
    return rates
