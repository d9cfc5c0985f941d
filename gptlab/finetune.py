"""Fine-tuning a pretrained GPT to classify text: a new head, last-token pooling, freezing.

A language model ends in ``lm_head``, which scores every vocabulary entry as the next token. To
classify a passage (here: which genre of Shakespeare play it comes from) we keep the trunk,
the embeddings and Transformer blocks that turn tokens into contextual vectors, and put a small
new layer on top that maps one vector to ``n_classes`` scores.

Which vector? In a causal model position ``t`` has attended to tokens ``0..t`` only, so the
**last real token** is the one position whose state has seen the whole passage. Batches of
passages of different lengths are **right-padded**: padding goes after the real tokens, so no
real token ever attends to a pad (the causal mask hides everything to its right), positions
stay ``0, 1, ...`` as in pretraining, and no attention mask is needed at all. We only have to
read the state at index ``length - 1`` instead of ``-1``. (Left padding would put the pads
*before* the text: every real token would attend to them and get shifted positions, so it needs
an attention mask and position ids, which GPT-2-style models were not trained with.)

The module also builds the data: plays cut into token passages labelled by genre, split **by
play** so that no play appears in both training and test data (a passage from *Hamlet* in the
test set must not be "recognised" from other passages of *Hamlet* seen in training).
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gptlab.data import Document, split_documents
from gptlab.model import GPT
from gptlab.tokenizers import encode_plain
from gptlab.train import clip_gradients, configure_optimizer
from gptlab.utils import seed_everything

__all__ = [
    "ClassifierHistory",
    "GPTClassifier",
    "PassageDataset",
    "accuracy",
    "build_genre_datasets",
    "build_verse_prose_datasets",
    "check_disjoint",
    "confusion_matrix",
    "count_parameters",
    "document_folds",
    "final_hidden_states",
    "freeze",
    "majority_baseline",
    "make_passages",
    "pad_batch",
    "passage_loader",
    "plot_confusion_matrix",
    "pool_last_token",
    "predict",
    "train_classifier",
    "verse_or_prose",
    "verse_prose_passages",
]


# --------------------------------------------------------------------------------------------
# Small validators
# --------------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}{hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}{hint}")


def _as_label_tensor(values: Any, name: str) -> torch.Tensor:
    """1-D LongTensor of class ids from a tensor or sequence; logits (N, K) become argmax ids."""
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(list(values))
    if t.dim() == 2 and t.is_floating_point():
        t = t.argmax(dim=-1)  # (N, K) scores -> (N,) predicted class ids
    if t.dim() != 1:
        raise ValueError(
            f"{name} must be 1-D (one class id per example), got shape {tuple(t.shape)}"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; pass at least one example")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class ids, got dtype {t.dtype}")
    return t.long().cpu()


# --------------------------------------------------------------------------------------------
# Hidden states, padding and pooling
# --------------------------------------------------------------------------------------------


def final_hidden_states(gpt: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The trunk's output ``(B, T, n_embd)``: embeddings, every block, final LayerNorm; no lm_head.

    This is what ``gpt.forward`` computes just before ``lm_head`` (so
    ``gpt.lm_head(final_hidden_states(gpt, idx))`` equals ``gpt(idx)[0]``), written out from the
    model's public submodules so that a classifier can stop one layer earlier.
    """
    if not isinstance(gpt, GPT):
        raise TypeError(f"gpt must be a gptlab GPT, got {type(gpt).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(
            f"idx must be a 2-D (batch, time) LongTensor of token ids, got {shape}; "
            "for one passage use idx[None]"
        )
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"idx must hold integer token ids, got {idx.dtype}; use idx.long()")
    B, T = idx.shape
    if T == 0 or B == 0:
        raise ValueError(f"idx has shape {(B, T)}; pass at least one token of one passage")
    cfg = gpt.config
    if idx.shape[1] > cfg.block_size:
        raise ValueError(
            f"passages are {T} tokens long but the model's block_size is {cfg.block_size}; "
            f"use passages of at most {cfg.block_size} tokens"
        )
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= cfg.vocab_size:
        raise ValueError(
            f"token id {lo if lo < 0 else hi} is outside [0, {cfg.vocab_size}); encode the "
            "passages with the tokenizer this model was trained with (and a valid pad_id)"
        )
    tr = gpt.transformer
    pos = torch.arange(T, device=idx.device)  # (T,): right padding keeps positions 0, 1, ...
    x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C)
    for block in tr.h:
        x = block(x)  # (B, T, C); each block applies its causal mask itself
    return tr.ln_f(x)  # (B, T, C)


def pad_batch(
    sequences: Sequence[Sequence[int] | torch.Tensor], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token sequences into ``idx`` ``(B, T_max)`` and return their ``lengths`` ``(B,)``.

    Right, not left: with a causal model the real tokens then never see a pad, so the state of
    the last real token is exactly what the model computes for the passage on its own.
    """
    if isinstance(sequences, torch.Tensor) or not isinstance(sequences, Sequence):
        raise TypeError(
            "sequences must be a list of token-id lists or 1-D tensors, got "
            f"{type(sequences).__name__}"
        )
    if len(sequences) == 0:
        raise ValueError("sequences is empty; pass at least one passage")
    _check_int(pad_id, "pad_id", 0)
    rows = []
    for i, seq in enumerate(sequences):
        t = seq if isinstance(seq, torch.Tensor) else torch.as_tensor(list(seq), dtype=torch.long)
        if t.dim() != 1:
            raise ValueError(f"sequence {i} must be 1-D, got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"sequence {i} is empty; every passage needs at least one token")
        if t.is_floating_point() or t.dtype == torch.bool:
            raise TypeError(f"sequence {i} must hold integer token ids, got dtype {t.dtype}")
        rows.append(t.long())
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)  # (B,)
    idx = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)  # (B, T_max)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = r  # real tokens first, pads after them
    return idx, lengths


def pool_last_token(hidden: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The state of each sequence's last real token: ``hidden[b, lengths[b] - 1]``, ``(B, C)``.

    ``lengths=None`` means no padding: every sequence ends at position ``T - 1``.
    """
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise ValueError(f"hidden must be a (B, T, C) tensor, got {shape}")
    B, T, _ = hidden.shape
    if lengths is None:
        return hidden[:, -1, :]  # (B, C)
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.shape != (B,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(
            f"lengths must be a ({B},) integer tensor (one length per sequence), got "
            f"shape {tuple(lengths.shape)} and dtype {lengths.dtype}"
        )
    if int(lengths.min()) < 1 or int(lengths.max()) > T:
        raise ValueError(
            f"lengths must lie in [1, {T}] (the padded length), got values from "
            f"{int(lengths.min())} to {int(lengths.max())}"
        )
    rows = torch.arange(B, device=hidden.device)
    return hidden[rows, lengths.to(hidden.device) - 1]  # (B, C)


# --------------------------------------------------------------------------------------------
# The classifier and freezing
# --------------------------------------------------------------------------------------------


class GPTClassifier(nn.Module):
    """A GPT trunk with a new classification head on the last real token's final hidden state.

    The language-model head of ``gpt`` is not used any more (it is tied to the token embedding,
    so it costs no parameters of its own). ``head`` maps ``n_embd`` features to ``n_classes``
    scores. The classifier wraps ``gpt`` itself, it does not copy it: fine-tuning changes that
    model's weights. ``seed`` makes the head's initialisation reproducible.
    """

    def __init__(
        self,
        gpt: GPT,
        n_classes: int,
        *,
        label_names: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(
                f"gpt must be a gptlab GPT, got {type(gpt).__name__}; load one with "
                "gptlab.load_reference_model() or build GPT(GPTConfig(...))"
            )
        _check_int(n_classes, "n_classes", 2, "; a classifier needs at least two classes")
        if label_names is not None:
            label_names = tuple(label_names)
            if len(label_names) != n_classes or not all(isinstance(n, str) for n in label_names):
                raise ValueError(
                    f"label_names must be {n_classes} strings (one per class), got {label_names!r}"
                )
        self.gpt = gpt
        self.n_classes = n_classes
        self.label_names = label_names
        self.head = nn.Linear(gpt.config.n_embd, n_classes)
        param = next(gpt.parameters())
        self.head.to(device=param.device, dtype=param.dtype)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # GPT-2's init for a Linear layer, drawn from our own generator
            weight = torch.randn(self.head.weight.shape, generator=gen) * 0.02
            self.head.weight.copy_(weight)
            self.head.bias.zero_()

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores (logits) ``(B, n_classes)`` for right-padded ``idx`` ``(B, T)``."""
        hidden = final_hidden_states(self.gpt, idx)  # (B, T, C)
        pooled = pool_last_token(hidden, lengths)  # (B, C)
        return self.head(pooled)  # (B, n_classes)


def freeze(model: GPTClassifier, trainable_blocks: int | None) -> int:
    """Freeze all but the top ``trainable_blocks`` blocks, the final LayerNorm and the head.

    ``trainable_blocks=0`` trains only ``ln_f`` and the head (a "linear probe" plus the norm);
    ``n_layer`` trains every block but keeps the embeddings fixed; ``None`` unfreezes
    everything (full fine-tuning). Returns the number of trainable parameters.
    """
    if not isinstance(model, GPTClassifier):
        raise TypeError(
            f"model must be a GPTClassifier, got {type(model).__name__}; wrap your GPT first: "
            "GPTClassifier(gpt, n_classes)"
        )
    n_layer = model.gpt.config.n_layer
    if trainable_blocks is not None:
        if isinstance(trainable_blocks, bool) or not isinstance(trainable_blocks, int):
            raise TypeError(
                f"trainable_blocks must be an int or None, got {type(trainable_blocks).__name__}"
            )
        if not 0 <= trainable_blocks <= n_layer:
            raise ValueError(
                f"trainable_blocks must be between 0 and n_layer={n_layer}, got "
                f"{trainable_blocks}; use None to fine-tune every parameter"
            )
    if trainable_blocks is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return count_parameters(model, trainable_only=True)
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = [*model.gpt.transformer.h[n_layer - trainable_blocks :]]
    trainable += [model.gpt.transformer.ln_f, model.head]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return count_parameters(model, trainable_only=True)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (a tied tensor counted once); only trainable ones if asked."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Data: passages labelled by genre, split by play
# --------------------------------------------------------------------------------------------


class PassageDataset(Dataset):
    """Token passages with an integer label each, and the title of the document they came from.

    ``dataset[i]`` is ``(ids, label)``: a 1-D LongTensor and an int. ``label_names[label]`` is
    the label's name, ``titles[i]`` the passage's document (used to prove a split by document).
    """

    def __init__(
        self,
        passages: Sequence[torch.Tensor],
        labels: Sequence[int] | torch.Tensor,
        titles: Sequence[str],
        label_names: Sequence[str],
    ) -> None:
        self.label_names = tuple(label_names)
        if len(self.label_names) < 2:
            raise ValueError(
                f"need at least 2 label names, got {self.label_names!r}; a classifier needs "
                "two or more classes"
            )
        self.passages = [torch.as_tensor(p, dtype=torch.long) for p in passages]
        self.labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        self.titles = list(titles)
        if not (len(self.passages) == len(self.labels) == len(self.titles)):
            raise ValueError(
                f"passages ({len(self.passages)}), labels ({len(self.labels)}) and titles "
                f"({len(self.titles)}) must have the same length"
            )
        if len(self.passages) == 0:
            raise ValueError("the dataset is empty; give it at least one passage")
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.label_names):
            raise ValueError(
                f"labels must lie in [0, {len(self.label_names)}) (one per label name), got "
                f"{int(self.labels.min())}..{int(self.labels.max())}"
            )
        for i, p in enumerate(self.passages):
            if p.dim() != 1 or p.numel() == 0:
                raise ValueError(f"passage {i} must be a non-empty 1-D token sequence")

    def __len__(self) -> int:
        return len(self.passages)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.passages[index], int(self.labels[index])

    def counts(self) -> dict[str, int]:
        """Passages per label name, in label order."""
        tally = Counter(self.labels.tolist())
        return {name: tally.get(i, 0) for i, name in enumerate(self.label_names)}

    def documents(self) -> list[str]:
        """The distinct document titles, sorted."""
        return sorted(set(self.titles))


def _passage_from(text: str, start: int, tokenizer: Any, passage_tokens: int) -> list[int]:
    """Encode text from ``start`` until it yields ``passage_tokens`` tokens (or the text ends)."""
    n_chars = 8 * passage_tokens  # a BPE token is rarely longer than 8 characters
    while True:
        encode = functools.partial(encode_plain, tokenizer)  # specials stay text
        ids = list(encode(text[start : start + n_chars]))
        if len(ids) > passage_tokens or start + n_chars >= len(text):
            return ids[:passage_tokens]
        n_chars *= 2


def make_passages(
    documents: Sequence[Document],
    tokenizer: Any,
    *,
    label_names: Sequence[str] | None = None,
    passage_tokens: int = 64,
    passages_per_document: int = 10,
    min_tokens: int | None = None,
    seed: int = 0,
) -> PassageDataset:
    """Cut each document into ``passages_per_document`` token passages labelled by its genre.

    Each document is divided into equal stretches and one passage starts at a random line
    start in the first half of each stretch, so the passages spread over the whole play and do
    not overlap as long as half a stretch is longer than a passage (true for plays of ~100,000
    characters and up to a few dozen passages each).
    A passage is ``passage_tokens`` tokens long; with ``min_tokens`` its length is drawn
    uniformly from ``[min_tokens, passage_tokens]`` instead, to train on variable lengths.
    ``label_names`` fixes the label order (default: the sorted genres present). Seeded.
    """
    documents = list(documents)
    if not documents:
        raise ValueError("documents is empty; pass e.g. load_corpus('shakespeare').documents")
    if not all(isinstance(d, Document) for d in documents):
        raise TypeError("documents must be gptlab.data.Document objects (title, genre, text)")
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(
            f"tokenizer must have an .encode(text) method, got {type(tokenizer).__name__}"
        )
    _check_int(passage_tokens, "passage_tokens", 1)
    _check_int(passages_per_document, "passages_per_document", 1)
    if min_tokens is not None:
        _check_int(min_tokens, "min_tokens", 1)
        if min_tokens > passage_tokens:
            raise ValueError(
                f"min_tokens ({min_tokens}) must not exceed passage_tokens ({passage_tokens})"
            )
    _check_int(seed, "seed", 0)
    names = (
        tuple(sorted({d.genre for d in documents})) if label_names is None else tuple(label_names)
    )
    if len(names) < 2:
        raise ValueError(
            f"the documents have only the genre(s) {list(names)}; pass label_names with every "
            "class the classifier knows, e.g. label_names=('comedy', 'history', 'tragedy')"
        )
    unknown = sorted({d.genre for d in documents} - set(names))
    if unknown:
        raise ValueError(f"genres {unknown} are not in label_names {list(names)}; add them")

    rng = random.Random(seed)
    passages, labels, titles = [], [], []
    for doc in documents:
        text = doc.text
        stretch = len(text) / passages_per_document
        for k in range(passages_per_document):
            lo = int(k * stretch)
            start = lo + rng.randrange(max(1, int(stretch) // 2))  # the first half of the stretch
            line = text.find("\n", start, int((k + 1) * stretch))
            start = line + 1 if line != -1 else start  # begin at a line start when there is one
            length = (
                passage_tokens if min_tokens is None else rng.randint(min_tokens, passage_tokens)
            )
            ids = _passage_from(text, start, tokenizer, length)
            if ids:
                passages.append(torch.tensor(ids, dtype=torch.long))
                labels.append(names.index(doc.genre))
                titles.append(doc.title)
    if not passages:
        raise ValueError("no passage could be cut: every document's text is empty")
    return PassageDataset(passages, labels, titles, names)


def check_disjoint(train: PassageDataset, test: PassageDataset) -> None:
    """Raise ``ValueError`` if a document has passages in both ``train`` and ``test``."""
    shared = sorted(set(train.titles) & set(test.titles))
    if shared:
        raise ValueError(
            f"{len(shared)} document(s) appear in both train and test, e.g. {shared[:3]}: the test "
            "accuracy would reward recognising a play, not its genre; split the documents "
            "first (split_documents) and cut passages from each side"
        )


def build_genre_datasets(
    documents: Sequence[Document],
    tokenizer: Any,
    *,
    test_fraction: float = 0.2,
    passage_tokens: int = 64,
    train_passages_per_document: int = 10,
    test_passages_per_document: int = 10,
    min_tokens: int | None = None,
    seed: int = 0,
) -> tuple[PassageDataset, PassageDataset]:
    """Split whole documents into train/test (stratified by genre), then cut passages from each.

    Every genre gets at least one test document, and no document is on both sides (checked).
    """
    train_docs, test_docs = split_documents(documents, test_fraction, seed=seed, stratify=True)
    names = tuple(sorted({d.genre for d in documents}))
    if len(names) < 2:
        raise ValueError(f"the documents have only the genre(s) {list(names)}; need at least 2")
    common = dict(label_names=names, passage_tokens=passage_tokens, min_tokens=min_tokens)
    train = make_passages(
        train_docs,
        tokenizer,
        passages_per_document=train_passages_per_document,
        seed=seed,
        **common,
    )
    test = make_passages(
        test_docs,
        tokenizer,
        passages_per_document=test_passages_per_document,
        seed=seed + 1,
        **common,
    )
    check_disjoint(train, test)
    return train, test


VERSE_PROSE = ("prose", "verse")


def verse_or_prose(text: str, *, min_lines: int = 3, prose_share: float = 0.25) -> str | None:
    """Label a passage of a play ``"verse"``, ``"prose"`` or ``None`` (too short or unclear).

    In the corpus's plays a verse line always starts with a capital letter, while prose is
    wrapped at about 50 characters, so many of its lines continue a sentence in lower case. The
    rule looks at the spoken lines (not the speaker headings that end with ``:``, and not the
    first and last lines, which a passage may cut in the middle): none starting in lower case is
    verse; at least ``prose_share`` of them is prose; anything in between is left out. Prose
    whose lines all happen to start with a capital is labelled verse: the label is a heuristic,
    checked by eye on the passages, not an editor's annotation.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    _check_int(min_lines, "min_lines", 1)
    if isinstance(prose_share, bool) or not isinstance(prose_share, (int, float)):
        raise TypeError(f"prose_share must be a number in (0, 1], got {prose_share!r}")
    if not 0 < prose_share <= 1:
        raise ValueError(f"prose_share must be in (0, 1], got {prose_share}; try 0.25")
    lines = [
        line.strip()
        for line in text.split("\n")[1:-1]
        if line.strip() and not line.rstrip().endswith(":")
    ]
    if len(lines) < min_lines:
        return None
    lower = sum(line[0].islower() for line in lines) / len(lines)
    if lower == 0:
        return "verse"
    return "prose" if lower >= prose_share else None


def verse_prose_passages(
    documents: Sequence[Document],
    tokenizer: Any,
    *,
    passage_tokens: int = 64,
    passages_per_document: int = 48,
    seed: int = 0,
) -> PassageDataset:
    """Cut passages as :func:`make_passages` does, label them with :func:`verse_or_prose`, drop
    the unclear ones and subsample the larger class (seeded) to the size of the smaller one.
    Labels: 0 = prose, 1 = verse."""
    if not callable(getattr(tokenizer, "decode", None)):
        raise TypeError(
            f"tokenizer must have .encode and .decode (the label is read from the decoded "
            f"passage), got {type(tokenizer).__name__}"
        )
    cut = make_passages(
        documents,
        tokenizer,
        label_names=sorted({d.genre for d in documents} | {"_"}),  # any >= 2 names will do
        passage_tokens=passage_tokens,
        passages_per_document=passages_per_document,
        seed=seed,
    )
    found: dict[str, list[int]] = {name: [] for name in VERSE_PROSE}
    for i, ids in enumerate(cut.passages):
        label = verse_or_prose(tokenizer.decode(ids.tolist()))  # genre labels are not used
        if label is not None:
            found[label].append(i)
    n = min(len(found["prose"]), len(found["verse"]))
    if n == 0:
        raise ValueError(
            f"the documents gave {len(found['prose'])} prose and {len(found['verse'])} verse "
            "passages; both are needed: pass more documents or more passages_per_document"
        )
    rng = random.Random(seed)
    keep = sorted(
        [(i, 0) for i in rng.sample(found["prose"], n)]
        + [(i, 1) for i in rng.sample(found["verse"], n)]
    )
    return PassageDataset(
        [cut.passages[i] for i, _ in keep],
        [label for _, label in keep],
        [cut.titles[i] for i, _ in keep],
        VERSE_PROSE,
    )


def build_verse_prose_datasets(
    documents: Sequence[Document],
    tokenizer: Any,
    *,
    test_fraction: float = 0.2,
    passage_tokens: int = 64,
    passages_per_document: int = 48,
    seed: int = 0,
) -> tuple[PassageDataset, PassageDataset]:
    """An easy task beside genre: is a passage verse or prose? Split by play, balanced.

    The plays are split exactly as :func:`build_genre_datasets` splits them (same ``seed``,
    stratified by genre). Each side's plays are cut into ``passages_per_document`` passages,
    labelled with :func:`verse_or_prose` (unclear ones are dropped), and the larger class is
    subsampled (seeded) to the size of the smaller one, so chance and the majority baseline are
    both 50%. Labels: 0 = prose, 1 = verse.
    """
    train_docs, test_docs = split_documents(documents, test_fraction, seed=seed, stratify=True)
    common = dict(passage_tokens=passage_tokens, passages_per_document=passages_per_document)
    train = verse_prose_passages(train_docs, tokenizer, seed=seed, **common)
    test = verse_prose_passages(test_docs, tokenizer, seed=seed + 1, **common)
    check_disjoint(train, test)
    return train, test


def document_folds(
    documents: Sequence[Document], k: int = 5, *, seed: int = 0
) -> list[tuple[list[Document], list[Document]]]:
    """``k`` train/test splits of whole documents in which every document is tested exactly once.

    Stratified by genre: each genre's documents are shuffled (seeded) and dealt to the folds in
    turn, so every fold's test side holds about ``1/k`` of each genre. Cross-validation like this
    tests a classifier on every play instead of one draw of a few plays. Each side keeps the
    input order; returns ``[(train, test), ...]``, one pair per fold.
    """
    documents = list(documents)
    if not all(isinstance(d, Document) for d in documents):
        raise TypeError("documents must be gptlab.data.Document objects (title, genre, text)")
    _check_int(k, "k", 2, "; cross-validation needs at least two folds")
    _check_int(seed, "seed", 0)
    if len(documents) < k:
        raise ValueError(f"{len(documents)} documents cannot fill {k} folds; lower k")
    fold_of: dict[int, int] = {}
    rng = random.Random(seed)
    turn = 0
    for genre in sorted({d.genre for d in documents}):
        members = [i for i, d in enumerate(documents) if d.genre == genre]
        rng.shuffle(members)
        for i in members:
            fold_of[i] = turn % k
            turn += 1
    return [
        (
            [d for i, d in enumerate(documents) if fold_of[i] != f],
            [d for i, d in enumerate(documents) if fold_of[i] == f],
        )
        for f in range(k)
    ]


def passage_loader(
    dataset: PassageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    pad_id: int = 0,
) -> DataLoader:
    """Batches ``(idx (B, T), lengths (B,), labels (B,))``, right-padded; seeded shuffling."""
    if not isinstance(dataset, PassageDataset):
        raise TypeError(f"dataset must be a PassageDataset, got {type(dataset).__name__}")
    _check_int(batch_size, "batch_size", 1)

    def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, ...]:
        idx, lengths = pad_batch([ids for ids, _ in batch], pad_id=pad_id)
        return idx, lengths, torch.tensor([label for _, label in batch], dtype=torch.long)

    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate
    )


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to the labels. ``predictions`` may be logits ``(N, K)``."""
    pred = _as_label_tensor(predictions, "predictions")
    true = _as_label_tensor(labels, "labels")
    if pred.shape != true.shape:
        raise ValueError(
            f"predictions ({pred.numel()}) and labels ({true.numel()}) must have one entry per "
            "example each"
        )
    return (pred == true).float().mean().item()


def confusion_matrix(predictions: Any, labels: Any, n_classes: int) -> torch.Tensor:
    """``(n_classes, n_classes)`` counts: row = true class, column = predicted class."""
    _check_int(n_classes, "n_classes", 2, "; a classifier needs at least two classes")
    pred = _as_label_tensor(predictions, "predictions")
    true = _as_label_tensor(labels, "labels")
    if pred.shape != true.shape:
        raise ValueError(
            f"predictions ({pred.numel()}) and labels ({true.numel()}) must have one entry per "
            "example each"
        )
    for name, t in (("predictions", pred), ("labels", true)):
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            raise ValueError(
                f"{name} must be class ids in [0, {n_classes}), got values from {int(t.min())} "
                f"to {int(t.max())}; is n_classes right?"
            )
    flat = true * n_classes + pred  # one bin per (true, predicted) pair
    return torch.bincount(flat, minlength=n_classes * n_classes).view(n_classes, n_classes)


def majority_baseline(train_labels: Any, test_labels: Any) -> float:
    """Test accuracy of always answering the most common training label: the bar to beat."""
    train = _as_label_tensor(train_labels, "train_labels")
    test = _as_label_tensor(test_labels, "test_labels")
    majority = Counter(train.tolist()).most_common(1)[0][0]
    return (test == majority).float().mean().item()


def plot_confusion_matrix(
    matrix: torch.Tensor, label_names: Sequence[str], ax: Any = None, *, title: str | None = None
) -> Any:
    """Draw a confusion matrix with its counts; rows are true labels. Returns the Axes."""
    from gptlab.plotting import _new_axes

    m = torch.as_tensor(matrix)
    k = len(label_names)
    if m.shape != (k, k):
        raise ValueError(
            f"matrix must be ({k}, {k}) for {k} label names, got shape {tuple(m.shape)}"
        )
    ax = _new_axes(ax, (4.5, 4))
    ax.imshow(m.numpy(), cmap="Blues", vmin=0)
    for i in range(k):
        for j in range(k):
            dark = m[i, j] > m.max() / 2
            ax.text(j, i, int(m[i, j]), ha="center", va="center", color="w" if dark else "k")
    ax.set_xticks(range(k), label_names)
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted genre")
    ax.set_ylabel("true genre")
    ax.set_title(title or "Confusion matrix (passages)")
    return ax


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class ClassifierHistory:
    """One entry per epoch: mean training loss, training accuracy (on the batches as they were
    trained), test accuracy after the epoch; ``step_loss`` has one entry per optimizer step."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    trainable_parameters: int = 0
    seconds: float = 0.0

    @property
    def final_test_accuracy(self) -> float:
        if not self.test_accuracy:
            raise ValueError("no test accuracy was recorded; pass test data to train_classifier")
        return self.test_accuracy[-1]


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(
    model: GPTClassifier, dataset: PassageDataset, *, batch_size: int = 64, pad_id: int = 0
) -> torch.Tensor:
    """Predicted class ids ``(N,)`` for every passage of ``dataset``, in order (eval mode)."""
    if not isinstance(model, GPTClassifier):
        raise TypeError(f"model must be a GPTClassifier, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    device = _model_device(model)
    out = []
    for idx, lengths, _ in passage_loader(dataset, batch_size, pad_id=pad_id):
        out.append(model(idx.to(device), lengths.to(device)).argmax(dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out)


def train_classifier(
    model: GPTClassifier,
    train_data: PassageDataset,
    test_data: PassageDataset | None = None,
    *,
    epochs: int = 2,
    batch_size: int = 16,
    lr: float = 3e-4,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    pad_id: int = 0,
    verbose: bool = False,
    on_epoch: Callable[[int, ClassifierHistory], bool | None] | None = None,
) -> ClassifierHistory:
    """Fine-tune ``model`` with AdamW and cross-entropy; returns a :class:`ClassifierHistory`.

    Only parameters with ``requires_grad`` (see :func:`freeze`) are optimised. The run is
    seeded (shuffling, dropout). With ``verbose`` one line per epoch is printed.
    ``on_epoch(epoch, history)`` is called after each epoch (after the test accuracy is
    recorded); when it returns ``True`` training stops early, e.g. once the training accuracy
    reaches 100%. It may also read the model, e.g. to store each epoch's test predictions.
    """
    if not isinstance(model, GPTClassifier):
        raise TypeError(
            f"model must be a GPTClassifier, got {type(model).__name__}; wrap a GPT with "
            "GPTClassifier(gpt, n_classes)"
        )
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if data is None and name == "test_data":
            continue
        if not isinstance(data, PassageDataset):
            raise TypeError(f"{name} must be a PassageDataset, got {type(data).__name__}")
        if len(data.label_names) != model.n_classes:
            raise ValueError(
                f"{name} has {len(data.label_names)} labels but the model has n_classes="
                f"{model.n_classes}; build GPTClassifier(gpt, {len(data.label_names)})"
            )
    _check_int(epochs, "epochs", 1)
    _check_int(batch_size, "batch_size", 1)
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(
            f"on_epoch must be a function (epoch, history) -> bool, got {type(on_epoch).__name__}"
        )
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}; try 1e-4 to 1e-3")
    if count_parameters(model, trainable_only=True) == 0:
        raise ValueError(
            "the model has no trainable parameters; call freeze(model, trainable_blocks=k) "
            "with k >= 0 (the head always stays trainable) or None"
        )
    seed_everything(seed)
    device = _model_device(model)
    optimizer = configure_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    loader = passage_loader(train_data, batch_size, shuffle=True, seed=seed, pad_id=pad_id)
    history = ClassifierHistory(trainable_parameters=count_parameters(model, trainable_only=True))
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for idx, lengths, labels in loader:
            idx, lengths, labels = idx.to(device), lengths.to(device), labels.to(device)
            logits = model(idx, lengths)  # (B, n_classes)
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became {loss.item()} in epoch {epoch}; lower lr (now {lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm is not None:
                clip_gradients(model, max_norm=max_grad_norm)
            optimizer.step()
            history.step_loss.append(loss.item())
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(dim=-1) == labels).sum())
            seen += len(labels)
        history.train_loss.append(total_loss / seen)
        history.train_accuracy.append(correct / seen)
        line = f"epoch {epoch}: train loss {total_loss / seen:.3f}, train acc {correct / seen:.3f}"
        if test_data is not None:
            preds = predict(model, test_data, pad_id=pad_id)
            history.test_accuracy.append(accuracy(preds, test_data.labels))
            line += f", test acc {history.test_accuracy[-1]:.3f}"
        if verbose:
            print(line)
        if on_epoch is not None and on_epoch(epoch, history):
            break
    history.seconds = time.perf_counter() - start
    return history
