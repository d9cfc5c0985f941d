"""Turning a language model into a chatbot: a dialogue format, a prompt-masked loss, a chat loop.

A pretrained GPT only continues text. To make it *answer*, we fine-tune it on conversations
written in one fixed format, so that at chat time we can write the user's message in that
format, end with the marker that says "the bot speaks now", and let the model continue.

**The format.** The reference tokenizer's vocabulary is fixed (adding a token would change the
embedding matrix), and :class:`gptlab.tokenizers.BPETokenizer` has no way to register new
special tokens after training. So the roles are plain-text tags in the style of the plays the
model was pretrained on (``ROMEO:`` on its own line, then the speech), and the end of every bot
reply (and of the system prompt) is the one special token the tokenizer already has,
``<|endoftext|>``::

    SYSTEM:
    You are a helpful chatbot.<|endoftext|>USER:
    What is AI?

    BOT:
    Artificial Intelligence is the branch of engineering ...<|endoftext|>USER:
    ...

Each piece (tag, message, end marker) is encoded on its own and the ids are concatenated, so
a tag always becomes the same tokens wherever it sits, and every token knows whether it
belongs to the prompt or to the reply. That only works if the pieces meet where the
pre-tokenizer splits anyway. Whitespace is the trap: GPT-2's pattern encodes ``"\n\n"`` on
its own as one token, but ``"\n\nBOT"`` as ``"\n"``, ``"\n"``, ``"BOT"``. So the blank line
after a user message is part of the bot's tag (``"\n\nBOT:\n"``), messages are stripped of
surrounding whitespace, and then encoding the whole formatted string gives exactly the same ids
(``tests/test_chat.py`` checks it). Message text is encoded with special tokens *disabled*, so
a user who types ``<|endoftext|>`` cannot end the bot's turn for it.

**The loss.** :func:`build_example` marks every target that predicts a prompt token (system
prompt, tags, user messages) with ``-100``, the ``ignore_index`` of
:meth:`gptlab.model.GPT.forward`: the model is graded only on the replies it must learn to
write, and on the ``<|endoftext|>`` that ends them.

**ChatML.** The same functions speak ChatML, the template of SmolLM2 and many other chat models
(``template="chatml"``): each message is ``<|im_start|>{role}\n{content}<|im_end|>\n``, the
markers are special tokens, and the model learns the assistant's content and its ``<|im_end|>``.
With ``system=None`` the conversation starts with SmolLM2's default system prompt, as its chat
template does (:func:`gptlab.pretrained.render_chatml`).

**The split.** :func:`split_conversations` deduplicates a dialogue corpus, keeps
conversations that share a prompt or a passage on one side, and checks that no held-out
exchange occurs in training, so a held-out reply loss measures replies the model never saw.

**The chat loop.** :class:`ChatSession` keeps the conversation as the exact token ids the
model read and wrote. Before each reply it drops the oldest exchanges until the prompt plus
the reply budget fits in ``block_size``; the system prompt always stays.
"""

from __future__ import annotations

import math
import os
import pathlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from gptlab.llama import Llama
from gptlab.model import GPT
from gptlab.sampling import generate
from gptlab.tokenizers import encode_plain
from gptlab.train import History, clip_gradients, configure_optimizer, lr_at

__all__ = [
    "BOT_TAG",
    "CHAT_MODEL_DIR",
    "CHATML_END",
    "CHATML_START",
    "END_OF_TEXT",
    "IGNORE_INDEX",
    "SYSTEM_TAG",
    "TEMPLATES",
    "USER_TAG",
    "ChatDataset",
    "ChatSession",
    "ChatTurn",
    "LengthGroupedBatches",
    "build_example",
    "chat_loader",
    "chat_loop",
    "collate_chat",
    "conversation_segments",
    "end_token_id",
    "evaluate_chat",
    "exchange_texts",
    "finetune_chat",
    "format_conversation",
    "load_chat_model",
    "split_conversations",
    "tokenize_conversation",
]

SYSTEM_TAG = "SYSTEM:\n"
USER_TAG = "USER:\n"
BOT_TAG = "\n\nBOT:\n"  # the blank line that ends a user message belongs to the bot's tag
END_OF_TEXT = "<|endoftext|>"  # ends every bot reply (and the system prompt)
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"  # ChatML's markers (special tokens)
#: The chat formats: the book's plain-text tags, and ChatML (SmolLM2's template).
TEMPLATES = ("gptlab", "chatml")
IGNORE_INDEX = -100  # targets with this value add nothing to the loss (F.cross_entropy default)
#: Chapter 8's chatbot as ``recipes/chat_model.py`` ships it (the reference model's layout).
CHAT_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "chat_model"


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}{hint}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}{hint}")


def _check_turns(turns: Any, *, allow_open: bool) -> list[str]:
    """Turns as a list of stripped, non-empty strings: user, bot, user, bot, ..."""
    if isinstance(turns, str):
        raise TypeError(
            "turns must be a list of messages (user, bot, user, ...), got one string; "
            f"wrap it: [{turns[:30]!r}]"
        )
    if not isinstance(turns, Sequence):
        raise TypeError(
            f"turns must be a list of strings (user, bot, user, ...), got {type(turns).__name__}"
        )
    if len(turns) == 0:
        raise ValueError("turns is empty; pass at least one user message, e.g. ['Hello!']")
    out = []
    for i, turn in enumerate(turns):
        role = "user" if i % 2 == 0 else "bot"
        if not isinstance(turn, str):
            raise TypeError(f"turn {i} ({role}) must be a string, got {type(turn).__name__}")
        text = turn.strip()
        if not text:
            raise ValueError(
                f"turn {i} ({role}) is empty or only whitespace; every message needs some text"
            )
        out.append(text)
    if not allow_open and len(out) % 2 == 1:
        raise ValueError(
            f"the conversation has {len(out)} turns and ends with a user message, so there is no "
            "reply to learn from; drop the last turn (turns[:-1]) or add the bot's reply"
        )
    return out


def _check_system(system: Any) -> str | None:
    if system is None:
        return None
    if not isinstance(system, str):
        raise TypeError(f"system must be a string or None, got {type(system).__name__}")
    text = system.strip()
    if not text:
        raise ValueError("system is empty; pass None for no system prompt")
    return text


def _check_template(template: Any) -> str:
    if template not in TEMPLATES:
        raise ValueError(
            f"template must be one of {TEMPLATES} (the book's format or ChatML), got {template!r}"
        )
    return template


def _special_id(tokenizer: Any, marker: str, hint: str) -> int:
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        raise TypeError(
            f"tokenizer must have an encode method (a gptlab BPETokenizer or a tiktoken "
            f"encoding), got {type(tokenizer).__name__}"
        )
    try:
        ids = encode(marker, allowed_special={marker})
    except (TypeError, ValueError, KeyError):
        ids = None
    if not isinstance(ids, list) or len(ids) != 1:
        raise TypeError(
            f"the chat format needs the special token {marker}, which "
            f"{type(tokenizer).__name__} does not have; {hint}"
        )
    return int(ids[0])


def end_token_id(tokenizer: Any, template: str = "gptlab") -> int:
    """The id of the token that ends every bot reply: ``<|endoftext|>`` in the book's format,
    ``<|im_end|>`` in ChatML.

    Works with a gptlab :class:`~gptlab.tokenizers.BPETokenizer` and a tiktoken encoding. A
    tokenizer without that special token (e.g. a CharTokenizer) cannot mark the end of a reply.
    """
    if _check_template(template) == "chatml":
        _special_id(tokenizer, CHATML_START, "ChatML needs a tokenizer such as SmolLM2's")
        return _special_id(tokenizer, CHATML_END, "ChatML needs a tokenizer such as SmolLM2's")
    return _special_id(
        tokenizer,
        END_OF_TEXT,
        "use a BPE tokenizer trained with it (BPETokenizer.train(..., "
        "special_tokens=('<|endoftext|>',)) or the GPT-2 tokenizer)",
    )


# --------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTurn:
    """One piece of a formatted conversation: its text, whether the model learns to write it, and
    whether it is a marker (a special token) rather than text. Only the format's own pieces are
    markers: a message that happens to read ``<|endoftext|>`` is encoded as text."""

    text: str
    is_response: bool
    special: bool = False


def conversation_segments(
    turns: Sequence[str],
    system: str | None = None,
    *,
    add_generation_prompt: bool = True,
    template: str = "gptlab",
) -> list[ChatTurn]:
    """The pieces of a formatted conversation, each marked prompt or response.

    ``turns`` alternate user, bot, user, ...; the bot's messages (and the end marker after
    each) are the response pieces. If the last turn is the user's and ``add_generation_prompt``
    is true, the pieces end with the bot's tag, ready for the model to write the reply. In
    ChatML (``template="chatml"``) ``system=None`` means SmolLM2's default system prompt.
    """
    texts = _check_turns(turns, allow_open=True)
    if _check_template(template) == "chatml":
        return _chatml_segments(texts, system, add_generation_prompt)
    pieces = _system_segments(_check_system(system))
    for i, text in enumerate(texts):
        if i % 2 == 0:  # user
            pieces += [ChatTurn(USER_TAG, False), ChatTurn(text, False)]
            if i == len(texts) - 1 and add_generation_prompt:
                pieces.append(ChatTurn(BOT_TAG, False))
        else:  # bot: the tag is given, the reply and its end marker are learned
            pieces += [ChatTurn(BOT_TAG, False), ChatTurn(text, True)]
            pieces += [ChatTurn(END_OF_TEXT, True, special=True)]
    return pieces


def _chatml_segments(
    texts: list[str], system: str | None, add_generation_prompt: bool
) -> list[ChatTurn]:
    from gptlab.pretrained import SMOLLM2_SYSTEM_PROMPT

    def message(role: str, text: str, learn: bool) -> list[ChatTurn]:
        return [
            ChatTurn(CHATML_START, False, special=True),
            ChatTurn(f"{role}\n", False),
            ChatTurn(text, learn),
            ChatTurn(CHATML_END, learn, special=True),  # the model learns to end its own turns
            ChatTurn("\n", False),
        ]

    system = SMOLLM2_SYSTEM_PROMPT if system is None else _check_system(system)
    pieces = message("system", system, False)
    for i, text in enumerate(texts):
        pieces += message("user" if i % 2 == 0 else "assistant", text, i % 2 == 1)
    if len(texts) % 2 == 1 and add_generation_prompt:
        pieces += [ChatTurn(CHATML_START, False, special=True), ChatTurn("assistant\n", False)]
    return pieces


def _system_segments(system: str | None) -> list[ChatTurn]:
    if system is None:
        return []
    return [
        ChatTurn(SYSTEM_TAG, False),
        ChatTurn(system, False),
        ChatTurn(END_OF_TEXT, False, special=True),
    ]


def _encode_segments(
    pieces: list[ChatTurn], tokenizer: Any, template: str = "gptlab"
) -> tuple[list[int], list[bool]]:
    end_token_id(tokenizer, template)  # a clear error if the tokenizer lacks the markers
    markers = (END_OF_TEXT,) if template == "gptlab" else (CHATML_START, CHATML_END)
    special = {m: _special_id(tokenizer, m, "") for m in markers}
    ids: list[int] = []
    is_response: list[bool] = []
    for piece in pieces:
        # message text is encoded with special tokens disabled, so a typed marker stays text
        piece_ids = [special[piece.text]] if piece.special else encode_plain(tokenizer, piece.text)
        ids += piece_ids
        is_response += [piece.is_response] * len(piece_ids)
    return ids, is_response


def format_conversation(
    turns: Sequence[str], system: str | None = None, *, template: str = "gptlab"
) -> str:
    """The conversation as one string in the chat format (see the module docstring).

    Turns alternate user, bot, user, ...; a conversation that ends with the user's message ends
    with ``"\\n\\nBOT:\\n"`` (ChatML: ``"<|im_start|>assistant\\n"``), the prompt from which
    the model writes its reply.

    >>> format_conversation(["Hi", "Hello!"])
    'USER:\\nHi\\n\\nBOT:\\nHello!<|endoftext|>'
    """
    return "".join(p.text for p in conversation_segments(turns, system, template=template))


def tokenize_conversation(
    turns: Sequence[str], tokenizer: Any, system: str | None = None, *, template: str = "gptlab"
) -> tuple[list[int], list[bool]]:
    """Token ids of the formatted conversation and, per token, whether it is part of a reply.

    Each piece is encoded on its own (tags and separators always give the same ids; message
    text with special tokens disabled; ``<|endoftext|>`` as its special id). For stripped
    messages this equals ``tokenizer.encode(format_conversation(turns, system))``.
    """
    pieces = conversation_segments(turns, system, template=template)
    return _encode_segments(pieces, tokenizer, template)


def _exchanges(texts: list[str]) -> list[list[str]]:
    """Group turns into exchanges: [user, bot] pairs (the last may be a lone user message)."""
    return [texts[i : i + 2] for i in range(0, len(texts), 2)]


def build_example(
    turns: Sequence[str],
    tokenizer: Any,
    block_size: int,
    *,
    system: str | None = None,
    mask_prompt: bool = True,
    template: str = "gptlab",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training example: ``(input_ids, targets)``, two LongTensors of the same length.

    ``targets[t]`` is the token after ``input_ids[t]``, or ``-100`` (ignored by the loss) when
    ``mask_prompt`` is true and that next token belongs to the prompt: the system prompt, a
    tag or a user message. Only the bot's replies and their end marker are learned.
    With ``mask_prompt=False`` every next token counts, as in pretraining.

    At most ``block_size`` positions are kept: the oldest exchanges are dropped first (the
    system prompt stays); if the last exchange alone is still too long, its end is cut off.
    Raises ``ValueError`` if not a single reply token would remain.
    """
    _check_int("block_size", block_size, 2)
    if not isinstance(mask_prompt, bool):
        raise TypeError(f"mask_prompt must be True or False, got {mask_prompt!r}")
    texts = _check_turns(turns, allow_open=False)
    exchanges = _exchanges(texts)
    first = 0
    while True:
        kept = [t for ex in exchanges[first:] for t in ex]
        ids, is_response = tokenize_conversation(kept, tokenizer, system, template=template)
        if len(ids) - 1 <= block_size or first == len(exchanges) - 1:
            break
        first += 1  # too long: drop the oldest exchange and try again
    ids, is_response = ids[: block_size + 1], is_response[: block_size + 1]
    targets = torch.tensor(ids[1:], dtype=torch.long)  # next token at every position
    if mask_prompt:
        learn = torch.tensor(is_response[1:], dtype=torch.bool)
        targets = targets.masked_fill(~learn, IGNORE_INDEX)
    if bool((targets == IGNORE_INDEX).all()):
        n_prompt = is_response.index(True) if True in is_response else len(is_response)
        raise ValueError(
            f"the prompt of the last exchange takes {n_prompt} tokens, so nothing of the reply "
            f"fits in block_size={block_size}; shorten the user message or the system prompt, "
            "or use a larger block_size"
        )
    return torch.tensor(ids[:-1], dtype=torch.long), targets


# --------------------------------------------------------------------------------------------
# Splitting conversations without leaks
# --------------------------------------------------------------------------------------------


def exchange_texts(turns: Sequence[str]) -> list[str]:
    """Each answered exchange of a conversation as one text, ``"user message\\nreply"``.

    These are the units chapter 9's held-out reply loss grades (an unanswered last message is
    not graded, so it is left out), and the units :func:`split_conversations` checks for leaks.
    """
    texts = _check_turns(turns, allow_open=True)
    return [f"{user}\n{reply}" for user, reply in zip(texts[0::2], texts[1::2], strict=False)]


def _check_documents(documents: Any) -> list[Any]:
    if isinstance(documents, str) or not isinstance(documents, Sequence):
        raise TypeError(
            "documents must be a list of dialogue documents, e.g. "
            f"load_corpus('chatterbot').documents, got {type(documents).__name__}"
        )
    for i, doc in enumerate(documents):
        turns, genre = getattr(doc, "turns", None), getattr(doc, "genre", None)
        if not isinstance(genre, str) or not isinstance(turns, Sequence) or len(turns) < 2:
            raise TypeError(
                f"documents[{i}] must be a gptlab.data.Document with a topic (genre) and at least "
                f"two turns, got {doc!r}; pass load_corpus('chatterbot').documents"
            )
        _check_turns(turns, allow_open=True)
    if len(documents) < 2:
        raise ValueError(f"need at least 2 conversations to split, got {len(documents)}")
    return list(documents)


def _connected_groups(keys: list[list[Any]]) -> list[list[int]]:
    """Items that share a key, directly or through others, as groups (union-find).

    Groups are ordered by their first item and list their items in order.
    """
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving keeps the trees flat
            i = parent[i]
        return i

    owner: dict[Any, int] = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            if key in owner:
                parent[root(i)] = root(owner[key])
            else:
                owner[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(keys)):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def _draw(sizes: list[int], target: int, rng: random.Random) -> list[int]:
    """Indices of units, drawn in a seeded order, whose sizes add up to at most ``target``."""
    chosen, taken = [], 0
    for unit in rng.sample(range(len(sizes)), len(sizes)):
        if taken + sizes[unit] <= target:
            chosen.append(unit)
            taken += sizes[unit]
    return chosen


def _draw_groups(
    groups: list[list[int]],
    topics: list[str],
    val_fraction: float,
    rng: random.Random,
    whole_topics: bool,
) -> list[int]:
    """Indices of the groups to hold out, about ``val_fraction`` of the items in all.

    With ``whole_topics`` the groups (whole topics) are drawn against the total; otherwise
    within each topic, a group counting under its most common topic (ties: first in a-z).
    """
    if whole_topics:
        return _draw([len(g) for g in groups], round(sum(map(len, groups)) * val_fraction), rng)
    by_topic: dict[str, list[int]] = {}
    for g, group in enumerate(groups):
        genres = [topics[i] for i in group]
        by_topic.setdefault(min(genres, key=lambda t: (-genres.count(t), t)), []).append(g)
    held = []
    for topic in sorted(by_topic):
        mine = by_topic[topic]
        sizes = [len(groups[g]) for g in mine]
        held += [mine[k] for k in _draw(sizes, round(sum(sizes) * val_fraction), rng)]
    return held


def _check_split_options(val_fraction: Any, seed: Any, by: Any, n: Any) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a number, got {type(val_fraction).__name__}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), e.g. 0.1, got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _check_int("n", n, 1, "; 8 words is the usual n-gram length")
    if by not in ("conversation", "topic"):
        raise ValueError(f"by must be 'conversation' or 'topic', got {by!r}")


def split_conversations(
    documents: Sequence[Any],
    val_fraction: float = 0.1,
    seed: int = 0,
    *,
    by: str = "conversation",
    n: int = 8,
) -> tuple[list[Any], list[Any]]:
    """Split dialogue documents into (train, held-out) so that no held-out exchange is in training.

    A random split of ChatterBot puts copies of most held-out conversations into training
    (2,025 conversations, 898 distinct), and a held-out loss on them measures memory. So:

    1. **Deduplicate**: conversations whose turns are equal after
       :func:`gptlab.evaluate.contamination.normalize` (case, punctuation, spacing) count
       once; the first is kept.
    2. **Group**: two conversations belong together when they share a user message (the same
       prompt with another answer teaches the answer's wording) or when one of their exchanges
       (:func:`exchange_texts`) shares a word ``n``-gram with one of the other's; groups are
       the connected components, and a group is never cut.
    3. **Split** whole groups, drawn in an order seeded by ``seed`` and skipped when they
       would take the held-out side past ``round(val_fraction * distinct)`` conversations.
       ``by="conversation"`` draws within each topic (``genre``; a group counts under its
       most common topic), so every topic large enough is held out in proportion;
       ``by="topic"`` holds out whole topics, to measure replies on subjects never trained on:
       no topic is on both sides, so topics that share a group are drawn together.
    4. **Check**: :func:`gptlab.evaluate.contamination.check_split` on the exchanges of both
       sides with the same ``n`` raises ``ContaminationError`` if any held-out exchange is a
       duplicate of, or shares an ``n``-gram with, a training exchange.

    Returns the two lists of documents, each in input order.
    """
    from gptlab.evaluate.contamination import check_split, ngrams, normalize

    documents = _check_documents(documents)
    _check_split_options(val_fraction, seed, by, n)
    seen: set[tuple[str, ...]] = set()
    distinct = []
    for doc in documents:
        key = tuple(map(normalize, doc.turns))
        if key not in seen:
            seen.add(key)
            distinct.append(doc)
    exchanges = [exchange_texts(d.turns) for d in distinct]
    keys = [  # conversations that share any of these keys end up in one group
        [("user", normalize(user)) for user in list(d.turns)[0:-1:2]]
        + [("exchange", normalize(text)) for text in texts]
        + [("gram", gram) for text in texts for gram in ngrams(text, n)]
        + ([("topic", d.genre)] if by == "topic" else [])  # a whole topic is one group
        for d, texts in zip(distinct, exchanges, strict=True)
    ]
    groups = _connected_groups(keys)
    rng = random.Random(seed)
    held = _draw_groups(groups, [d.genre for d in distinct], val_fraction, rng, by == "topic")
    held_items = {i for g in held for i in groups[g]}
    if not held_items or len(held_items) == len(distinct):
        raise ValueError(
            f"by={by!r} with val_fraction={val_fraction} leaves one side empty: the "
            f"{len(distinct)} distinct conversations form {len(groups)} groups that may not be "
            "cut, too few or too large to split; raise val_fraction, or use by='conversation'"
        )
    train = [d for i, d in enumerate(distinct) if i not in held_items]
    heldout = [d for i, d in enumerate(distinct) if i in held_items]
    check_split(
        [t for i, texts in enumerate(exchanges) if i not in held_items for t in texts],
        [t for i, texts in enumerate(exchanges) if i in held_items for t in texts],
        n=n,
    )
    return train, heldout


# --------------------------------------------------------------------------------------------
# Dataset, padding, loader
# --------------------------------------------------------------------------------------------


class ChatDataset(Dataset):
    """Conversations turned into ``(input_ids, targets)`` examples with :func:`build_example`.

    A conversation that ends with an unanswered user message loses that message (there is no
    reply to learn). Conversations whose prompt alone fills ``block_size`` are skipped; their
    number is in ``n_skipped``.
    """

    def __init__(
        self,
        conversations: Iterable[Sequence[str]],
        tokenizer: Any,
        block_size: int,
        *,
        system: str | None = None,
        mask_prompt: bool = True,
        template: str = "gptlab",
    ) -> None:
        _check_int("block_size", block_size, 2)
        self.pad_id = end_token_id(tokenizer, template)  # pads sit after the text: any id works
        self.template = template
        self.block_size = block_size
        self.mask_prompt = mask_prompt
        self.examples: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.n_skipped = 0
        for i, turns in enumerate(conversations):
            if isinstance(turns, str) or not isinstance(turns, Sequence):
                raise TypeError(
                    f"conversation {i} must be a list of turns (strings), got "
                    f"{type(turns).__name__}; pass e.g. corpus.conversations"
                )
            turns = list(turns)[: len(turns) // 2 * 2]  # drop an unanswered last message
            if not turns:
                self.n_skipped += 1
                continue
            try:
                example = build_example(
                    turns,
                    tokenizer,
                    block_size,
                    system=system,
                    mask_prompt=mask_prompt,
                    template=template,
                )
            except ValueError as err:
                if "nothing of the reply fits" not in str(err):
                    raise ValueError(f"conversation {i}: {err}") from None
                self.n_skipped += 1
                continue
            self.examples.append(example)
        if not self.examples:
            raise ValueError(
                "no conversation gave a training example; pass conversations with at least one "
                "user message and one reply, or raise block_size"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.examples[index]

    def num_target_tokens(self) -> int:
        """How many targets count in the loss (not ``-100``), over the whole dataset."""
        return sum(int((y != IGNORE_INDEX).sum()) for _, y in self.examples)


def collate_chat(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad examples of different lengths into ``(x, y)``, both ``(B, T_max)``.

    Inputs are padded with ``pad_id`` and targets with ``-100``: the pads come *after* the real
    tokens, so the causal mask already hides them from every real position, and their targets
    add nothing to the loss. (Use the end-of-text id as ``pad_id``.)
    """
    if len(batch) == 0:
        raise ValueError("collate_chat got an empty batch; pass at least one (input, target) pair")
    _check_int("pad_id", pad_id, 0)
    T = max(x.numel() for x, _ in batch)
    xs = torch.full((len(batch), T), pad_id, dtype=torch.long)
    ys = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        if x.shape != y.shape or x.dim() != 1:
            raise ValueError(
                f"example {i}: input and target must be 1-D and of equal length, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        xs[i, : x.numel()] = x
        ys[i, : y.numel()] = y
    return xs, ys


class LengthGroupedBatches(Sampler[list[int]]):
    """Batches of indices of similar length, in random order: less padding, same randomness.

    Each pass shuffles all indices, cuts them into groups of ``batch_size * group_batches``,
    sorts each group by length, cuts it into batches and shuffles the batches. A batch costs as
    much as its longest example times its size, so with random batches one long conversation
    makes fifteen short ones pay for its padding; grouping removes most of that waste.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, *, seed: int = 0, group_batches: int = 8
    ) -> None:
        _check_int("batch_size", batch_size, 1)
        _check_int("group_batches", group_batches, 1)
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group = batch_size * group_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.group):
            group = sorted(order[start : start + self.group], key=lambda i: self.lengths[i])
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]


def chat_loader(
    dataset: ChatDataset,
    batch_size: int,
    pad_id: int,
    *,
    shuffle: bool = True,
    group_by_length: bool = True,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader of right-padded ``(x, y)`` batches (see :func:`collate_chat`).

    ``shuffle`` draws a new order every pass from a generator seeded with ``seed``; with
    ``group_by_length`` (the default) the batches hold examples of similar length
    (:class:`LengthGroupedBatches`). Without shuffling the order is the dataset's.
    """
    _check_int("batch_size", batch_size, 1)
    _check_int("pad_id", pad_id, 0)

    def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        return collate_chat(batch, pad_id)

    if shuffle and group_by_length:
        lengths = [x.numel() for x, _ in dataset]
        sampler = LengthGroupedBatches(lengths, batch_size, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
    )


# --------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_chat(model: nn.Module, dataset: ChatDataset, *, batch_size: int = 32) -> float:
    """Mean loss per target token over the whole dataset (every token weighs the same).

    ``model.forward`` averages over the targets of one batch; here the sums are added up over
    all batches first, so a short batch does not count as much as a long one.
    """
    _check_int("batch_size", batch_size, 1)
    if not isinstance(dataset, ChatDataset):
        raise TypeError(f"dataset must be a ChatDataset, got {type(dataset).__name__}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(dataset), batch_size):
            x, y = collate_chat(dataset.examples[start : start + batch_size], pad_id=0)
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(
                logits.flatten(0, 1).float(),
                y.flatten(),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += float(loss)
            count += int((y != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / count


def finetune_chat(
    model: nn.Module,
    train_set: ChatDataset,
    val_set: ChatDataset | None = None,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    min_lr: float | None = None,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    eval_interval: int = 0,
    seed: int = 0,
    log_interval: int = 0,
    log: Callable[[str], None] = print,
) -> History:
    """Fine-tune ``model`` on ``train_set`` for ``steps`` AdamW steps; return a :class:`History`.

    Only parameters with ``requires_grad`` are trained (so the same loop trains a full model or
    a LoRA model). The learning rate warms up for ``warmup_steps`` and then follows a cosine to
    ``min_lr`` (default ``lr / 10``). With ``val_set``, the per-token loss on it is recorded
    before training, every ``eval_interval`` steps (0 = only at the end) and after the last
    step. ``log_interval > 0`` prints a line every so many steps. The batch order is seeded.
    """
    if not isinstance(model, (GPT, Llama)):
        raise TypeError(f"model must be a gptlab GPT or Llama, got {type(model).__name__}")
    if not isinstance(train_set, ChatDataset):
        raise TypeError(
            f"train_set must be a ChatDataset, got {type(train_set).__name__}; "
            "build one with ChatDataset(conversations, tokenizer, block_size)"
        )
    if val_set is not None and not isinstance(val_set, ChatDataset):
        raise TypeError(f"val_set must be a ChatDataset or None, got {type(val_set).__name__}")
    _check_int("steps", steps, 1)
    _check_int("eval_interval", eval_interval, 0)
    _check_int("log_interval", log_interval, 0)
    _check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps > steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be <= steps ({steps})")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    min_lr = lr / 10 if min_lr is None else min_lr
    if not 0 <= min_lr <= lr:
        raise ValueError(f"min_lr must be in [0, lr={lr}], got {min_lr}")
    if train_set.block_size > model.config.block_size:
        raise ValueError(
            f"the examples are up to {train_set.block_size} tokens but the model's block_size is "
            f"{model.config.block_size}; build the dataset with block_size <= "
            f"{model.config.block_size}"
        )
    device = next(model.parameters()).device
    loader = chat_loader(train_set, batch_size, train_set.pad_id, shuffle=True, seed=seed)
    optimizer = configure_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    history = History()

    def run_eval(step: int) -> None:
        if val_set is not None:
            history.eval_steps.append(step)
            history.val_loss.append(evaluate_chat(model, val_set, batch_size=2 * batch_size))

    run_eval(0)
    model.train()
    batches = _cycle(loader)
    tokens = 0
    for step in range(1, steps + 1):
        lr_now = lr_at(
            step - 1, max_lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=steps
        )
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = clip_gradients(model, grad_clip)
        optimizer.step()
        loss_value = loss.detach().item()
        tokens += int((y != IGNORE_INDEX).sum())
        history.steps.append(step)
        history.train_loss.append(loss_value)
        history.lr.append(lr_now)
        history.tokens_seen.append(tokens)
        history.grad_norm.append(norm)
        if eval_interval and step % eval_interval == 0 and step != steps:
            run_eval(step)
        if log_interval and (step % log_interval == 0 or step == 1):
            log(f"step {step:4d}  train loss {loss_value:.3f}")
    run_eval(steps)
    model.eval()
    return history


def _cycle(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches forever: a new (seeded) shuffle for every pass over the data."""
    while True:
        yield from loader


# --------------------------------------------------------------------------------------------
# Chatting
# --------------------------------------------------------------------------------------------


@dataclass
class _Exchange:
    user: str
    reply: str
    ids: list[int]  # USER tag + message + separator + BOT tag + reply ids + <|endoftext|>


@dataclass
class ChatSession:
    """A conversation with a chat-tuned GPT that always fits in its context window.

    ``send(message)`` formats the system prompt, as many of the most recent exchanges as fit,
    and the new message; generates the reply with :func:`gptlab.generate` until
    ``<|endoftext|>`` or ``max_new_tokens``; and remembers the exchange as the exact ids the
    model read and wrote. The prompt is at most ``block_size - max_new_tokens`` tokens, so
    prompt + reply never exceed ``block_size``: the oldest exchanges are dropped first and the
    system prompt is always kept. ``temperature=0`` (default) is greedy and deterministic;
    otherwise pass a seeded ``generator`` to reproduce a conversation. ``top_k`` and
    ``repetition_penalty`` are passed on to :func:`gptlab.generate`.
    """

    model: GPT
    tokenizer: Any
    system: str | None = None
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_k: int | None = None
    repetition_penalty: float = 1.0
    generator: torch.Generator | None = None
    history: list[_Exchange] = field(default_factory=list, init=False)
    dropped: int = field(default=0, init=False)  # exchanges left out of the last prompt

    def __post_init__(self) -> None:
        if not isinstance(self.model, GPT):
            raise TypeError(f"model must be a gptlab GPT, got {type(self.model).__name__}")
        self.eos = end_token_id(self.tokenizer)
        self.system = _check_system(self.system)
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        block_size = self.model.config.block_size
        self._system_ids, _ = _encode_segments(_system_segments(self.system), self.tokenizer)
        if len(self._system_ids) + self.max_new_tokens >= block_size:
            raise ValueError(
                f"the system prompt ({len(self._system_ids)} tokens) plus max_new_tokens="
                f"{self.max_new_tokens} leave no room for a message in block_size={block_size}; "
                "shorten the system prompt or lower max_new_tokens"
            )

    @property
    def prompt_budget(self) -> int:
        """The most tokens a prompt may have: ``block_size - max_new_tokens``."""
        return self.model.config.block_size - self.max_new_tokens

    def _user_ids(self, message: str) -> list[int]:
        """Ids of ``USER:\\n{message}\\n\\nBOT:\\n``."""
        ids, _ = tokenize_conversation([message], self.tokenizer)
        return ids

    def prompt_ids(self, message: str) -> list[int]:
        """The prompt for ``message``: system + the newest exchanges that fit + the message.

        Sets ``self.dropped`` to the number of old exchanges that had to be left out.
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be a string, got {type(message).__name__}")
        if not message.strip():
            raise ValueError("message is empty; type something for the bot to answer")
        new = self._user_ids(message)
        budget = self.prompt_budget
        fixed = len(self._system_ids) + len(new)
        if fixed > budget:
            raise ValueError(
                f"the message is {len(new)} tokens with its tags; with the system prompt "
                f"({len(self._system_ids)} tokens) that is more than the {budget} tokens a prompt "
                f"may have (block_size {self.model.config.block_size} - max_new_tokens "
                f"{self.max_new_tokens}); shorten the message or lower max_new_tokens"
            )
        kept: list[list[int]] = []
        used = fixed
        for exchange in reversed(self.history):  # newest first, so the oldest go first
            if used + len(exchange.ids) > budget:
                break
            kept.insert(0, exchange.ids)
            used += len(exchange.ids)
        self.dropped = len(self.history) - len(kept)
        return self._system_ids + [t for ids in kept for t in ids] + new

    def send(self, message: str) -> str:
        """Reply to ``message`` and add the exchange to the history."""
        prompt = self.prompt_ids(message)
        device = next(self.model.parameters()).device
        idx = torch.tensor([prompt], dtype=torch.long, device=device)
        out = generate(
            self.model,
            idx,
            self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            eos_token_id=self.eos,
            generator=self.generator,
        )
        reply_ids = out[0, len(prompt) :].tolist()
        if self.eos in reply_ids:
            reply_ids = reply_ids[: reply_ids.index(self.eos)]
        reply = self.tokenizer.decode(reply_ids).strip()
        ids = self._user_ids(message) + reply_ids + [self.eos]  # a cut-off reply is closed too
        self.history.append(_Exchange(message.strip(), reply, ids))
        return reply

    def transcript(self) -> str:
        """Everything said so far (including exchanges no longer in the window), one per line."""
        lines = [f"SYSTEM: {self.system}"] if self.system else []
        for ex in self.history:
            lines += [f"USER: {ex.user}", f"BOT: {ex.reply}"]
        return "\n".join(lines)

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()
        self.dropped = 0


def chat_loop(
    session: ChatSession,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] = print,
    *,
    max_turns: int | None = None,
) -> int:
    """Talk to ``session`` until the user types ``quit`` (or ``exit``), or input ends.

    ``read``/``write`` default to the terminal; pass others to script a conversation. Returns
    the number of replies given.
    """
    if not isinstance(session, ChatSession):
        raise TypeError(f"session must be a ChatSession, got {type(session).__name__}")
    turns = 0
    while max_turns is None or turns < max_turns:
        try:
            message = read("you> ")
        except (EOFError, StopIteration):
            break
        if message.strip().lower() in {"quit", "exit"}:
            break
        if not message.strip():
            continue
        write(f"bot> {session.send(message)}")
        turns += 1
    return turns


def load_chat_model(
    device: str | torch.device | None = None, *, directory: str | os.PathLike[str] | None = None
) -> tuple[GPT, Any]:
    """Chapter 8's chatbot (the reference model fine-tuned on ChatterBot by
    ``recipes/chat_model.py``) and its tokenizer, every file's sha256 checked first.

    Chat with it through :class:`ChatSession` with the system prompt ``"A friendly chatbot."``;
    the recipe's measurements are in the folder's ``manifest.json``.
    """
    from gptlab.reference import load_reference_model

    return load_reference_model(
        device, directory=CHAT_MODEL_DIR if directory is None else directory
    )
