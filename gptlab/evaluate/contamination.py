"""Contamination: does held-out text also appear in the training data?

A held-out score measures what a model learned only if the model never saw the held-out items.
Corpora repeat themselves (ChatterBot ships 2,025 conversations of which 898 differ), so a
random split puts copies of many held-out items into training, and the "held-out" loss then
rewards memorisation. This module finds such items before any model is trained.

**Normalisation.** Text is compared after :func:`words`: Unicode NFKC, lower case, and every
character that is not a letter or a digit (punctuation, symbols, underscores, whitespace)
separates words; each CJK ideograph, kana or hangul syllable is a word of its own, because
Chinese and Japanese put no spaces between words. So ``"What is AI?"`` and ``"what is  ai"``
are the same text, and ``"你好吗"`` has three words.

**Two tests.** A held-out item is an *exact duplicate* when its normalised text equals that of a
training item. It *overlaps* when it shares at least one word n-gram (``n`` consecutive words,
8 by default as in PaLM's contamination study) with any training item; its overlap fraction is
the share of its distinct n-grams that training contains. An item shorter than ``n`` words
has no n-gram, so it overlaps (fraction 1.0) exactly when it is a duplicate.

Training n-grams are kept as a set of Python hashes of the word tuples (8 bytes each rather
than the tuple), so 10^5 items of a few hundred words fit in memory; two different n-grams
with the same 64-bit hash, which would count as a false match, are vanishingly unlikely.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ContaminationError",
    "ContaminationReport",
    "check_split",
    "find_overlap",
    "ngrams",
    "normalize",
    "words",
]

# One CJK ideograph, kana or hangul syllable is one word; other words are runs of letters and
# digits ([^\W_] is \w without the underscore).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")


def _check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    return text


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int (the n-gram length in words), got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1 word, got {n}; 8 is the usual choice")
    return n


def words(text: str) -> list[str]:
    """The words of ``text`` after the normalisation described in the module docstring.

    >>> words("What's AI? 你好")
    ['what', 's', 'ai', '你', '好']
    """
    return _WORD.findall(unicodedata.normalize("NFKC", _check_text(text)).lower())


def normalize(text: str) -> str:
    """``text`` normalised for comparison: its :func:`words` joined by single spaces."""
    return " ".join(words(text))


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of ``text`` in order (after :func:`words`); empty if it has fewer words.

    >>> ngrams("To be, or not to be", 5)
    [('to', 'be', 'or', 'not', 'to'), ('be', 'or', 'not', 'to', 'be')]
    """
    return _ngrams(words(text), _check_n(n))


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(tokens[i:] for i in range(n)), strict=False))


def _check_texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(
            f"{name} must be a list of strings (one item each), got {type(texts).__name__}"
            + ("; wrap a single text in a list" if isinstance(texts, str) else "")
        )
    for i, text in enumerate(texts):
        _check_text(text, f"{name}[{i}]")
    return list(texts)


@dataclass(frozen=True)
class ContaminationReport:
    """What :func:`find_overlap` found: which held-out items also occur in training.

    ``exact`` maps each duplicated held-out index to the index of a training item with the
    same normalised text. ``overlap`` maps each held-out index that shares at least one n-gram
    with training (or, shorter than ``n`` words, is a duplicate) to the fraction of its
    distinct n-grams found there; exact duplicates have 1.0. Held-out items with no words at
    all (only punctuation) are in neither.
    """

    n: int
    n_train: int
    n_heldout: int
    exact: dict[int, int] = field(default_factory=dict)
    overlap: dict[int, float] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True when no held-out item shares even one n-gram with training."""
        return not self.overlap

    def contaminated(self, max_fraction: float = 0.0) -> list[int]:
        """Held-out indices (sorted) that are duplicates or overlap by more than ``max_fraction``."""
        limit = _check_max_fraction(max_fraction)
        return sorted(set(self.exact) | {i for i, f in self.overlap.items() if f > limit})

    def __str__(self) -> str:
        total = max(self.n_heldout, 1)
        line = (
            f"{self.n_heldout:,} held-out items vs {self.n_train:,} training items "
            f"({self.n}-grams): {len(self.exact):,} exact duplicates "
            f"({len(self.exact) / total:.1%}), {len(self.overlap):,} overlap "
            f"({len(self.overlap) / total:.1%})"
        )
        if self.overlap:
            mean = sum(self.overlap.values()) / len(self.overlap)
            line += f", {mean:.0%} of their {self.n}-grams on average"
        return line


class ContaminationError(ValueError):
    """A split whose held-out side occurs in its training side; ``.report`` says which items."""

    def __init__(self, message: str, report: ContaminationReport) -> None:
        super().__init__(message)
        self.report = report


def _check_max_fraction(max_fraction: Any) -> float:
    if isinstance(max_fraction, bool) or not isinstance(max_fraction, (int, float)):
        raise TypeError(f"max_fraction must be a number, got {type(max_fraction).__name__}")
    if not 0.0 <= max_fraction < 1.0:
        raise ValueError(
            f"max_fraction must be in [0, 1), got {max_fraction}: it is the share of an item's "
            "n-grams that may also be in training (0 = none; exact duplicates never pass)"
        )
    return float(max_fraction)


def find_overlap(
    train_texts: Sequence[str], heldout_texts: Sequence[str], n: int = 8
) -> ContaminationReport:
    """Compare every held-out text with the training texts (see the module docstring).

    One pass over training builds a dictionary of normalised texts and a set of n-gram hashes;
    one pass over the held-out side looks each item up, so the cost is linear in the total
    number of words.
    """
    train = _check_texts(train_texts, "train_texts")
    heldout = _check_texts(heldout_texts, "heldout_texts")
    n = _check_n(n)
    whole: dict[str, int] = {}
    grams: set[int] = set()
    for i, text in enumerate(train):
        tokens = words(text)
        whole.setdefault(" ".join(tokens), i)
        grams.update(hash(g) for g in _ngrams(tokens, n))
    exact: dict[int, int] = {}
    overlap: dict[int, float] = {}
    for i, text in enumerate(heldout):
        tokens = words(text)
        if not tokens:
            continue  # nothing left to compare: it cannot carry training content
        match = whole.get(" ".join(tokens))
        if match is not None:
            exact[i] = match
            overlap[i] = 1.0
            continue
        mine = {hash(g) for g in _ngrams(tokens, n)}
        found = len(mine & grams)
        if found:
            overlap[i] = found / len(mine)
    return ContaminationReport(n, len(train), len(heldout), exact, overlap)


def check_split(
    train: Sequence[str], heldout: Sequence[str], n: int = 8, max_fraction: float = 0.0
) -> ContaminationReport:
    """Raise :class:`ContaminationError` if a held-out item leaks into training; else the report.

    An item leaks when it is an exact duplicate of a training item, or when more than
    ``max_fraction`` of its n-grams occur in training (the default 0.0 allows none). The error
    says how many leak, shows a few, and how to fix the split.
    """
    limit = _check_max_fraction(max_fraction)
    heldout = _check_texts(heldout, "heldout")
    report = find_overlap(train, heldout, n)
    bad = report.contaminated(limit)
    if not bad:
        return report
    examples = "; ".join(
        f"held-out {i} {normalize(heldout[i])[:60]!r} "
        + (
            f"= training {report.exact[i]}"
            if i in report.exact
            else f"({report.overlap[i]:.0%} of its {n}-grams in training)"
        )
        for i in bad[:3]
    )
    rule = f"over {limit:.0%} of their {n}-grams" if limit else f"at least one {n}-gram"
    raise ContaminationError(
        f"{len(bad)} of {len(heldout)} held-out items leak into training "
        f"({len(report.exact)} exact duplicates, {len(bad) - len(report.exact)} more share "
        f"{rule} with it), e.g. {examples}. Deduplicate before "
        "splitting and keep related items on one side (for dialogue: "
        "gptlab.chat.split_conversations), or drop the held-out items listed by "
        "err.report.contaminated(max_fraction)",
        report,
    )
