"""Applications of a GPT and how to measure them: translation, dialogue, code.

A language model does one thing, continue text; an *application* is a format that turns a task
into a continuation, plus a measurement that says how well the continuation does the task.

* **Translation as conditional generation.** A pair ``(source, target)`` is written in the chat
  format of :mod:`gptlab.chat` (the source as the user's message, the target as the reply), the
  loss is taken on the target only, and at test time the model writes the target greedily.
  :func:`greedy_replies` does that for many prompts at once. Real pairs come from the
  ``django-translations`` corpus; :func:`number_to_english` and :func:`number_to_chinese` make
  a synthetic task whose answers are exactly right or wrong: English number words to Chinese
  numerals (``"three hundred five"`` -> ``"三百零五"``).
* **Metrics.** :func:`exact_match` (the share of outputs equal to the reference) for tasks with
  one right answer; :func:`chrf`, a character n-gram F-score, for real translations, where a
  near miss deserves partial credit, with two checks of its own for interface strings
  (:func:`script_rate`, :func:`placeholder_rate`); :func:`parse_rate` for code (the share of
  snippets that :func:`ast.parse` accepts), after :func:`first_function` cut a sampled
  continuation of ``"\\n\\ndef"`` at the end of the first function (:func:`sample_functions`).
* **Several tasks, one model.** :func:`merge_chat_datasets` mixes chat datasets built with
  different system prompts, so one fine-tuning run learns several tasks.
* **Longer runs.** :func:`load_code_model` loads the code model ``recipes/code_model.py`` trains
  on the standard library (:func:`stdlib_code_split`); :func:`load_result` reads the
  measurements other recipes ship instead of weights.
* **Code from a chat model.** An instruction-tuned model such as SmolLM2 answers in its chat
  template: :func:`chat_code_prompt` asks for a benchmark problem's function and opens a code
  block in the reply, :func:`chat_function` takes the code up to the closing fence, and
  :func:`evaluate_chat_code` runs it against each problem's hidden tests.
* :func:`format_table` prints result and error tables whose columns stay aligned with Chinese
  text in them.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import os
import pathlib
import random
import re
import tokenize
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "CODE_MODEL_DIR",
    "CODE_INSTRUCTION",
    "NUMERAL_REQUEST",
    "chat_code_prompt",
    "chat_function",
    "chrf",
    "evaluate_chat_code",
    "exact_match",
    "first_function",
    "format_table",
    "greedy_replies",
    "is_valid_python",
    "load_code_model",
    "load_result",
    "merge_chat_datasets",
    "number_pairs",
    "number_to_chinese",
    "number_to_english",
    "parse_rate",
    "placeholder_rate",
    "placeholders",
    "sample_functions",
    "script_rate",
    "split_numbers",
    "stdlib_code_split",
]

CODE_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "code_model"
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "assets" / "applications"
# Standard-library packages that are data tables rather than code (codec maps, help texts).
CODE_DATA_PACKAGES = ("encodings", "pydoc_data")
MAX_NUMBER = 10**8  # both spellings are defined for 0 <= n < MAX_NUMBER (below one 亿)
#: How chapter 8 asks a chat model (SmolLM2) for a numeral: ``NUMERAL_REQUEST + english words``.
NUMERAL_REQUEST = "Write this number in Chinese numerals: "

# --------------------------------------------------------------------------------------------
# A synthetic translation task with exactly checkable answers
# --------------------------------------------------------------------------------------------

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_CN_DIGITS = "零一二三四五六七八九"
_CN_UNITS = ("", "十", "百", "千")  # for the digits of a four-digit group, right to left


def _check_number(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}; e.g. number_to_english(42)")
    if not 0 <= n < MAX_NUMBER:
        raise ValueError(
            f"n must be in [0, {MAX_NUMBER:,}) (below one hundred million), got {n:,}; larger "
            "numbers need the unit 亿, which this task leaves out"
        )
    return n


def _english_below_thousand(n: int) -> list[str]:
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
    elif rest:
        words.append(_ONES[rest])
    return words


def number_to_english(n: int) -> str:
    """``n`` in English words, American style: 342 -> ``"three hundred forty-two"``.

    No "and", no commas; tens and ones are hyphenated (``"twenty-one"``); groups of three
    digits take ``"thousand"`` and ``"million"``. Defined for ``0 <= n < 10**8``.
    """
    _check_number(n)
    if n == 0:
        return "zero"
    words = []
    for value, name in ((1_000_000, "million"), (1_000, "thousand"), (1, "")):
        group, n = divmod(n, value)
        if group:
            words += _english_below_thousand(group) + ([name] if name else [])
    return " ".join(words)


def _chinese_group(n: int, *, leading: bool) -> str:
    """A group 1..9999 in Chinese; ``leading`` groups write 10..19 as 十.. rather than 一十.."""
    digits = [int(d) for d in f"{n:04d}"]  # thousands, hundreds, tens, ones
    out, zero_pending = [], False
    for position, digit in enumerate(digits):
        unit = _CN_UNITS[3 - position]
        if digit == 0:
            zero_pending = bool(out)  # a zero counts only between non-zero digits
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        if unit == "十" and digit == 1 and leading and not out:
            out.append("十")  # 十五, not 一十五, at the very start of a number
        else:
            out.append(_CN_DIGITS[digit] + unit)
    return "".join(out)


def number_to_chinese(n: int) -> str:
    """``n`` in Chinese numerals: 305 -> ``"三百零五"``, 10010 -> ``"一万零一十"``.

    The rules a model has to discover: digits take the units 十, 百, 千 within a group of four
    and 万 between groups; a run of zeros between non-zero digits is read as one 零 (also across
    the 万 boundary, 10010 -> 一万零一十) and trailing zeros are silent; 10-19 at the start of
    the number drop the 一 (十五), elsewhere they keep it (一百一十). 2 is always 二 (the
    written, formal reading; speech often says 两百). Defined for ``0 <= n < 10**8``.
    """
    _check_number(n)
    if n == 0:
        return "零"
    high, low = divmod(n, 10_000)
    if not high:
        return _chinese_group(low, leading=True)
    out = _chinese_group(high, leading=True) + "万"
    if low:
        out += ("零" if low < 1000 else "") + _chinese_group(low, leading=False)
    return out


def split_numbers(
    high: int, n_test: int, seed: int = 0, low: int = 0
) -> tuple[list[int], list[int]]:
    """Shuffle the numbers ``low..high-1`` with ``seed`` and hold out ``n_test`` of them.

    Returns ``(train, test)``, each sorted: every test number is one the model never saw, so
    getting it right means it learned the rules rather than the answers.
    """
    for name, value in (("high", high), ("n_test", n_test), ("seed", seed), ("low", low)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= low < high <= MAX_NUMBER:
        raise ValueError(f"need 0 <= low < high <= {MAX_NUMBER:,}, got low={low}, high={high}")
    if not 0 < n_test < high - low:
        raise ValueError(
            f"n_test must leave numbers on both sides: 0 < n_test < {high - low}, got {n_test}"
        )
    numbers = list(range(low, high))
    random.Random(seed).shuffle(numbers)
    return sorted(numbers[n_test:]), sorted(numbers[:n_test])


def number_pairs(numbers: Iterable[int], target: str = "chinese") -> list[tuple[str, str]]:
    """``(English words, target)`` pairs for ``numbers``; ``target`` is ``"chinese"`` or ``"digits"``.

    >>> number_pairs([305], "chinese"), number_pairs([305], "digits")
    ([('three hundred five', '三百零五')], [('three hundred five', '305')])
    """
    convert = {"chinese": number_to_chinese, "digits": str}.get(target)
    if convert is None:
        raise ValueError(f"target must be 'chinese' or 'digits', got {target!r}")
    if isinstance(numbers, (str, bytes)):
        raise TypeError("numbers must be an iterable of ints, e.g. range(1000), not a string")
    return [(number_to_english(n), convert(_check_number(n))) for n in numbers]


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _check_pairs(predictions: Any, references: Any) -> tuple[list[str], list[str]]:
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list of strings, got {type(value).__name__}")
        if not all(isinstance(item, str) for item in value):
            raise TypeError(f"every item of {name} must be a str")
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions for {len(references)} references; pass one "
            "prediction per reference, in the same order"
        )
    if not references:
        raise ValueError("no references: pass at least one (prediction, reference) pair")
    return list(predictions), list(references)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The share of predictions equal to their reference (surrounding whitespace ignored)."""
    predictions, references = _check_pairs(predictions, references)
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def _char_ngrams(text: str, n: int) -> Counter[str]:
    chars = "".join(text.split())  # chrF ignores whitespace
    return Counter(chars[i : i + n] for i in range(len(chars) - n + 1))


def chrf(
    predictions: Sequence[str], references: Sequence[str], *, order: int = 6, beta: float = 2.0
) -> float:
    """Corpus chrF, 0 to 100: a character n-gram F-score for translations (Popović, 2015).

    For each n in ``1..order`` the matched, predicted and reference character n-grams
    (whitespace removed, matches clipped by counts) are summed over the corpus, leaving out a
    sentence's order ``n`` when its reference is shorter than ``n`` characters. The character
    precision ``chrP`` and recall ``chrR`` are the means of the per-order ratios (over the
    orders that occur in both), and the score is ``F_beta = (1+β²) chrP chrR / (β² chrP + chrR)``
    times 100; ``beta=2`` weighs recall twice as much as precision. This is sacreBLEU's default
    chrF. A near miss ("Supprimé" for "Supprimer") earns partial credit, which exact match does
    not give.
    """
    predictions, references = _check_pairs(predictions, references)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int, got {order!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    matched, predicted, expected = [0] * order, [0] * order, [0] * order
    for prediction, reference in zip(predictions, references, strict=True):
        for k in range(order):
            pred, ref = _char_ngrams(prediction, k + 1), _char_ngrams(reference, k + 1)
            matched[k] += sum((pred & ref).values())
            if ref:  # a reference too short for this order cannot be matched: skip it
                predicted[k] += sum(pred.values())
            expected[k] += sum(ref.values())
    orders = [k for k in range(order) if predicted[k] and expected[k]]  # n-grams that occur
    if not orders:
        return 0.0
    precision = sum(matched[k] / predicted[k] for k in orders) / len(orders)
    recall = sum(matched[k] / expected[k] for k in orders) / len(orders)
    if precision + recall == 0:
        return 0.0
    return 100 * (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


# printf-style (%(name)s, %s, %d, %%) and str.format-style ({name}, {0}) placeholders
_PLACEHOLDER = re.compile(r"%\([^)]+\)[#0 +-]*\d*(?:\.\d+)?[a-zA-Z]|%[sdifr%]|\{[A-Za-z0-9_]*\}")


def placeholders(text: str) -> list[str]:
    """The formatting placeholders in ``text``, sorted: ``%(name)s``, ``%s``, ``%d``, ``{name}``.

    A program fills them in at run time, so a translation must keep every one of them
    unchanged (their order may change with the word order of the language).

    >>> placeholders("Delete %(count)d %(items)s?")
    ['%(count)d', '%(items)s']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return sorted(_PLACEHOLDER.findall(text))


def placeholder_rate(sources: Sequence[str], outputs: Sequence[str]) -> float:
    """Among the sources that have placeholders, the share whose output keeps exactly those.

    Returns ``nan`` when no source has a placeholder.
    """
    sources, outputs = _check_pairs(outputs, sources)[::-1]
    kept = [placeholders(s) == placeholders(o) for s, o in zip(sources, outputs, strict=True)
            if placeholders(s)]  # fmt: skip
    return sum(kept) / len(kept) if kept else float("nan")


def _is_han(char: str) -> bool:
    return "CJK" in unicodedata.name(char, "")


def script_rate(outputs: Sequence[str], script: str) -> float:
    """The share of outputs written in ``script``: ``"han"`` (Chinese) or ``"latin"`` (French).

    An output is in Han script when most of its letters (outside placeholders) are CJK
    ideographs, in Latin script when it has letters and no CJK ideograph. It answers "did the model write the language the
    prompt asked for?", whether or not the words are right.
    """
    if script not in ("han", "latin"):
        raise ValueError(f"script must be 'han' or 'latin', got {script!r}")
    _check_pairs(list(outputs), list(outputs))

    def written_in(text: str) -> bool:
        letters = [c for c in _PLACEHOLDER.sub("", text) if c.isalpha()]
        han = sum(_is_han(c) for c in letters)
        if script == "han":
            return bool(letters) and han > len(letters) / 2
        return bool(letters) and han == 0

    return sum(written_in(o) for o in outputs) / len(outputs)


def is_valid_python(code: str | None) -> bool:
    """Whether :func:`ast.parse` accepts ``code`` (``None``, an unfinished snippet, is not)."""
    if code is None:
        return False
    if not isinstance(code, str):
        raise TypeError(f"code must be a str or None, got {type(code).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. invalid escape sequences in generated strings
        try:
            ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return False
    return True


def parse_rate(snippets: Sequence[str | None]) -> float:
    """The share of ``snippets`` that :func:`is_valid_python` accepts (``None`` counts as no)."""
    if isinstance(snippets, str) or not isinstance(snippets, Sequence):
        raise TypeError(f"snippets must be a list of strings, got {type(snippets).__name__}")
    if not snippets:
        raise ValueError("no snippets to check: pass at least one")
    return sum(is_valid_python(s) for s in snippets) / len(snippets)


def first_function(text: str) -> str | None:
    """The first top-level statement of ``text`` (a sampled ``def ...``), or ``None`` if unfinished.

    A function ends where the code returns to column 0: the next top-level statement. The
    text is read with :mod:`tokenize`, so strings, comments and brackets that reach column 0
    inside the function do not end it. If the text stops before the function has ended (the
    sample ran out of tokens) the result is ``None``: we cannot know whether it would have
    become valid code, so it counts as a failure.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    lines = io.StringIO(text).readlines()  # split on "\n" only, as tokenize does
    header_done = False  # the first logical line (the def header) has ended
    in_body = False  # an indented block follows the header
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.COMMENT, tokenize.NL):
                continue
            if not header_done:
                header_done = token.type == tokenize.NEWLINE
                continue
            if not in_body:
                if token.type == tokenize.INDENT:
                    in_body = True
                    continue
                end_row = token.start[0]  # a one-line def: it ended with its header
            elif token.type in (tokenize.DEDENT, tokenize.ENDMARKER) and token.start[1] == 0:
                end_row = token.start[0]  # back at column 0: the next top-level statement
            else:
                continue
            if end_row > len(lines) or not lines[end_row - 1].strip():
                return None  # the text ended before anything followed the function
            return "".join(lines[: end_row - 1]).rstrip() + "\n"
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return None


# --------------------------------------------------------------------------------------------
# Generation helpers
# --------------------------------------------------------------------------------------------


def _model_and_tokenizer(model: Any, tokenizer: Any) -> None:
    from gptlab.llama import Llama
    from gptlab.model import GPT

    if not isinstance(model, (GPT, Llama)):
        raise TypeError(f"model must be a gptlab GPT or Llama, got {type(model).__name__}")
    if not callable(getattr(tokenizer, "encode", None)) or not callable(
        getattr(tokenizer, "decode", None)
    ):
        raise TypeError(
            f"tokenizer must have encode and decode methods, got {type(tokenizer).__name__}"
        )


@torch.no_grad()
def greedy_replies(
    model: Any,
    tokenizer: Any,
    messages: Sequence[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    template: str = "gptlab",
) -> list[str]:
    """The model's greedy reply to each message, in the chat format of :mod:`gptlab.chat`.

    Each message becomes ``[SYSTEM ...] USER: message BOT:`` (or, with ``template="chatml"``,
    SmolLM2's ChatML, where ``system=None`` keeps its default system prompt); the reply is
    decoded up to the end marker (or ``max_new_tokens``) and stripped. Prompts of equal token length are
    decoded together in batches, which gives the same tokens as one at a time (greedy decoding
    is deterministic) in a fraction of the time. Replies come back in the order of
    ``messages``.
    """
    from gptlab.chat import end_token_id, tokenize_conversation
    from gptlab.sampling import generate

    _model_and_tokenizer(model, tokenizer)
    if isinstance(messages, str) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of strings (one prompt each), not one string")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    eos = end_token_id(tokenizer, template)
    device = next(model.parameters()).device
    prompts = [
        tokenize_conversation([m], tokenizer, system, template=template)[0] for m in messages
    ]
    too_long = [
        i for i, p in enumerate(prompts) if len(p) + max_new_tokens > model.config.block_size
    ]
    if too_long:
        raise ValueError(
            f"message {too_long[0]} takes {len(prompts[too_long[0]])} tokens with its tags; with "
            f"max_new_tokens={max_new_tokens} that exceeds block_size={model.config.block_size}; "
            "shorten it or lower max_new_tokens"
        )
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    replies: list[str] = [""] * len(prompts)
    for length, indices in sorted(by_length.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            idx = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)
            out = generate(model, idx, max_new_tokens, temperature=0.0, eos_token_id=eos)
            for i, row in zip(chunk, out[:, length:].tolist(), strict=True):
                row = row[: row.index(eos)] if eos in row else row
                replies[i] = tokenizer.decode(row).strip()
    return replies


@torch.no_grad()
def sample_functions(
    model: Any,
    tokenizer: Any,
    n: int,
    *,
    prompt: str = "\n\ndef",
    max_new_tokens: int = 250,
    temperature: float = 0.5,
    top_k: int | None = None,
    seed: int = 0,
    max_chars: int | None = None,
) -> list[str | None]:
    """Sample ``n`` continuations of ``prompt`` and cut each with :func:`first_function`.

    The default prompt ``"\\n\\ndef"`` tells the model where it is: ``def`` at the start of a
    line, after a blank line, begins a top-level function. (A bare ``"def "`` is a worse
    condition: without the newline the model cannot tell a function from an indented method,
    and the trailing space is a token that rarely precedes a name in byte-level BPE text,
    where the space belongs to the name's own token.) The newlines the prompt starts with are
    removed from the returned text. ``max_chars`` (optional) then cuts every decoded text to
    that many characters, so that models with different tokenizers get the same budget of
    code. The draw is seeded with ``seed``. Entries are ``None`` where the function did not
    end within the budget.
    """
    from gptlab.sampling import generate

    _model_and_tokenizer(model, tokenizer)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string such as 'def '")
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int)):
        raise TypeError(f"max_chars must be an int or None, got {type(max_chars).__name__}")
    ids = getattr(tokenizer, "encode_ordinary", tokenizer.encode)(prompt)  # specials stay text
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = generate(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        num_return_sequences=n,
        generator=generator,
    )
    lead = len(prompt) - len(prompt.lstrip("\n"))  # the prompt's leading newlines
    texts = [tokenizer.decode(row)[lead:] for row in out.tolist()]
    if max_chars is not None:
        texts = [t[:max_chars] for t in texts]
    return [first_function(t) for t in texts]


# --------------------------------------------------------------------------------------------
# Functions written by a chat model, run against hidden tests
# --------------------------------------------------------------------------------------------

CODE_INSTRUCTION = "Implement this Python function:"


def chat_code_prompt(prompt: str, instruction: str = CODE_INSTRUCTION) -> str:
    """A ChatML conversation asking for ``prompt``'s function, the reply begun as a code block.

    The user's message is ``instruction``, a blank line and the signature and docstring; the
    assistant's reply starts with a Python code block opened, so the model writes the whole
    function as code. (Given the signature as the start of its own reply instead, SmolLM2
    closes the block at once: to a chat model a signature looks like a finished answer.)
    Encode the result with the ChatML markers allowed.
    """
    from gptlab.pretrained import render_chatml

    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a function's signature and docstring (a non-empty str)")
    if not isinstance(instruction, str):
        raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
    question = f"{instruction}\n\n{prompt}"
    return render_chatml([{"role": "user", "content": question}]) + "```python\n"


@torch.no_grad()
def chat_function(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 192) -> str:
    """The code a chat model writes for ``prompt`` (greedy), up to the end of its code block.

    Generation stops at the token that closes the block, three backquotes, or after
    ``max_new_tokens``; the code is returned as written (signature included), to be run as it
    is, as a reader would run the answer.
    """
    from gptlab.sampling import generate

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    fence = tokenizer.encode_ordinary("```")
    if len(fence) != 1:
        raise ValueError(f"the tokenizer spells ``` as {len(fence)} tokens; it needs one")
    ids = tokenizer.encode(chat_code_prompt(prompt), allowed_special="all")
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, max_new_tokens, temperature=0.0, eos_token_id=fence[0])
    new = out[0, len(ids) :].tolist()
    return tokenizer.decode(new[: new.index(fence[0])] if fence[0] in new else new)


def evaluate_chat_code(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    *,
    max_new_tokens: int = 192,
    timeout: float = 5.0,
) -> Any:
    """Greedy functions from :func:`chat_function`, run in the sandbox against hidden tests.

    Returns a :class:`gptlab.evaluate.CodeEvaluation` with one sample per problem (its
    ``completion`` is the whole function), so ``.pass_at_k(1)`` is pass@1 and
    ``.per_problem_pass_at_k(1)`` the 0/1 score of each problem.
    """
    from gptlab.evaluate import CodeEvaluation, CodeProblem, CodeSample, run_tests

    if isinstance(problems, CodeProblem) or not isinstance(problems, Sequence) or not problems:
        raise ValueError("problems must be a non-empty list of CodeProblem (load_code_benchmark())")
    samples: dict[str, list[Any]] = {}
    for i, problem in enumerate(problems):
        if not isinstance(problem, CodeProblem):
            raise TypeError(f"problems[{i}] must be a CodeProblem, got {type(problem).__name__}")
        if problem.id in samples:
            raise ValueError(f"problem id {problem.id!r} appears twice; ids must be unique")
        code = chat_function(model, tokenizer, problem.prompt, max_new_tokens=max_new_tokens)
        result = run_tests(code, problem.tests, timeout=timeout)
        samples[problem.id] = [CodeSample(problem.id, code, result)]
    return CodeEvaluation(samples)


def merge_chat_datasets(*datasets: Any) -> Any:
    """One :class:`gptlab.chat.ChatDataset` holding the examples of several, in order.

    Each dataset can have been built with its own system prompt (``"Translate into French."``,
    ``"You are a helpful assistant."``): merged, they train one model on several tasks at once,
    and the system prompt tells it which task to do. They must agree on ``block_size``,
    ``pad_id`` and ``mask_prompt``.
    """
    from gptlab.chat import ChatDataset

    if not datasets:
        raise ValueError("pass at least one ChatDataset to merge")
    for i, dataset in enumerate(datasets):
        if not isinstance(dataset, ChatDataset):
            raise TypeError(f"dataset {i} must be a ChatDataset, got {type(dataset).__name__}")
    first = datasets[0]
    for i, dataset in enumerate(datasets[1:], start=1):
        for attr in ("block_size", "pad_id", "mask_prompt"):
            if getattr(dataset, attr) != getattr(first, attr):
                raise ValueError(
                    f"dataset {i} has {attr}={getattr(dataset, attr)!r} but dataset 0 has "
                    f"{getattr(first, attr)!r}; build them with the same tokenizer and settings"
                )
    merged = copy.copy(first)
    merged.examples = [example for dataset in datasets for example in dataset.examples]
    merged.n_skipped = sum(dataset.n_skipped for dataset in datasets)
    return merged


def stdlib_code_split(val_fraction: float = 0.05, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """The ``python-stdlib`` modules as (train, validation) documents, split by whole file.

    The data-table packages in :data:`CODE_DATA_PACKAGES` are left out. Chapter 9 and
    ``recipes/code_model.py`` use this one split, so the code model is validated on modules it
    never saw.
    """
    from gptlab.data import load_corpus, split_documents

    documents = [
        d for d in load_corpus("python-stdlib").documents if d.genre not in CODE_DATA_PACKAGES
    ]
    return split_documents(documents, val_fraction, seed=seed, stratify=False)


def load_code_model(
    device: str | torch.device | None = None, *, directory: str | os.PathLike[str] | None = None
) -> tuple[Any, Any]:
    """Chapter 9's code model (made by ``recipes/code_model.py``) and its tokenizer, hashes checked.

    The folder has the layout of the reference model (``manifest.json`` lists every file's
    sha256), so it is loaded with :func:`gptlab.reference.load_reference_model`; the recipe's
    own measurements are in ``manifest.json`` under ``"results"``.
    """
    from gptlab.reference import load_reference_model

    return load_reference_model(
        device, directory=CODE_MODEL_DIR if directory is None else directory
    )


def load_result(name: str) -> dict[str, Any]:
    """The measurements a recipe shipped as ``gptlab/assets/applications/<name>.json``.

    Longer runs than a notebook should wait for (``recipes/assistant.py`` writes
    ``"assistant_run"``) ship their numbers, not their weights; this reads them back.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"name must be a plain file name such as 'assistant_run', got {name!r}")
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in RESULTS_DIR.glob("*.json")) if RESULTS_DIR.is_dir() else []
        raise FileNotFoundError(
            f"no shipped result named {name!r} (known: {', '.join(known) or 'none'}); the recipes "
            "in the book's recipes/ folder write them"
        )
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _width(text: str) -> int:
    """Columns ``text`` takes in a terminal: wide (e.g. Chinese) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cell(value: Any, max_width: int) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    text = text.replace("\n", "⏎")
    if _width(text) <= max_width:
        return text
    while _width(text) > max_width - 1:
        text = text[:-1]
    return text + "…"


def format_table(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], *, max_width: int = 40
) -> str:
    """A plain-text table with aligned columns (wide characters count double).

    Floats print with three decimals, newlines as ``⏎``, and cells longer than ``max_width``
    columns are cut with ``…``.
    """
    if isinstance(headers, str) or not isinstance(headers, Sequence):
        raise TypeError("headers must be a list of column names")
    if isinstance(max_width, bool) or not isinstance(max_width, int) or max_width < 2:
        raise ValueError(f"max_width must be an int >= 2, got {max_width!r}")
    table = [[_cell(h, max_width) for h in headers]]
    for i, row in enumerate(rows):
        if isinstance(row, str) or len(row) != len(headers):
            raise ValueError(
                f"row {i} has {len(row)} cells but there are {len(headers)} headers; give every "
                "row one cell per column"
            )
        table.append([_cell(value, max_width) for value in row])
    widths = [max(_width(r[c]) for r in table) for c in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = (c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(table[0]), rule] + [line(r) for r in table[1:]]) + "\n"
