"""The two tasks the alignment chapter and its recipes train on, built in one place.

* **Numbers -> Chinese numerals** (chapter 9's task) for GRPO: :func:`number_task` trains the
  task's BPE tokenizer and a 2-layer GPT with a *short* supervised fine-tune, so that the model
  is right only some of the time and a verifier has something to reward.
* **Instruction constraints** for DPO: chapter 8's chatbot is asked ChatterBot questions with
  one of :data:`~gptlab.align.rewards.INSTRUCTIONS` appended ("Answer in one word.", ...).
  :func:`build_preference_pairs` samples its replies and pairs one that follows the instruction
  with one that does not; :func:`follow_rates` measures how often the greedy reply follows each
  instruction on held-out questions. Both work with the book's chat format (``template="gptlab"``,
  :mod:`gptlab.chat`) and with ChatML (``template="chatml"``, SmolLM2's template, rendered by
  :func:`gptlab.pretrained.render_chatml`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from gptlab.align._checks import check_int, check_language_model
from gptlab.align.dpo import PreferencePair
from gptlab.align.grpo import sample_group
from gptlab.align.rewards import INSTRUCTIONS

__all__ = [
    "CHATBOT_SYSTEM",
    "FACTS",
    "TEMPLATES",
    "NumberTask",
    "build_preference_pairs",
    "chatterbot_questions",
    "fact_scores",
    "fact_summary",
    "follow_rates",
    "greedy_instruction_replies",
    "instruction_prompt",
    "number_task",
    "pooled_scores",
    "prompt_ids",
    "rate_interval",
    "rate_table",
]

CHATBOT_SYSTEM = "A friendly chatbot."  # chapter 8's chatbot's system prompt
TEMPLATES = ("gptlab", "chatml")


@dataclass
class NumberTask:
    """Chapter 9's numbers task with a briefly fine-tuned model (see :func:`number_task`).

    ``prompts[i]`` are the chat-format token ids asking for ``train_pairs[i]``'s numeral and
    ``references[i]`` its answer; ``test_pairs`` are held out (no number in both).
    """

    model: nn.Module
    tokenizer: Any
    train_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]]
    prompts: list[list[int]]
    references: list[str]


def number_task(
    sft_steps: int = 150, *, numbers: int = 10_000, n_test: int = 300, seed: int = 0
) -> NumberTask:
    """Split ``0..numbers-1`` as chapter 9 does, train its 400-token BPE tokenizer and a 2-layer
    GPT (block 48, 4 heads, width 128), and fine-tune it for ``sft_steps`` steps (batch 32,
    learning rate 3e-3). Everything is seeded with ``seed``; the model is returned in eval mode.
    """
    from gptlab import applications, chat
    from gptlab.model import GPT, GPTConfig
    from gptlab.tokenizers import BPETokenizer
    from gptlab.utils import seed_everything

    check_int("sft_steps", sft_steps, 1)
    check_int("numbers", numbers, 20)
    check_int("n_test", n_test, 1)
    if n_test >= numbers:
        raise ValueError(f"n_test={n_test} must be smaller than numbers={numbers}")
    seed_everything(seed)
    train_numbers, test_numbers = applications.split_numbers(numbers, n_test, seed=seed)
    train_pairs = applications.number_pairs(train_numbers)
    test_pairs = applications.number_pairs(test_numbers)
    text = "".join(chat.format_conversation(list(p)) for p in train_pairs)
    tok = BPETokenizer.train(text, vocab_size=400)  # as chapter 9
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=2, n_head=4,
                          n_embd=128))  # fmt: skip
    train_set = chat.ChatDataset(train_pairs, tok, block_size=48)
    chat.finetune_chat(model, train_set, steps=sft_steps, batch_size=32, lr=3e-3,
                       warmup_steps=min(20, sft_steps))  # fmt: skip
    model.eval()
    prompts = [chat.tokenize_conversation([src], tok)[0] for src, _ in train_pairs]
    return NumberTask(model, tok, train_pairs, test_pairs, prompts, [r for _, r in train_pairs])


def chatterbot_questions(n_train: int, n_test: int) -> tuple[list[str], list[str]]:
    """Distinct short (<= 60 characters) first user messages of ChatterBot's leak-free
    (train, held-out) split of :func:`gptlab.chat.split_conversations`, at most ``n_train`` and
    ``n_test`` of them."""
    from gptlab import chat
    from gptlab.data import load_corpus

    check_int("n_train", n_train, 1)
    check_int("n_test", n_test, 1)
    train, test = chat.split_conversations(load_corpus("chatterbot").documents, 0.1, seed=0)

    def firsts(docs: list, n: int) -> list[str]:
        seen = dict.fromkeys(d.turns[0].strip() for d in docs if len(d.turns[0]) <= 60)
        return list(seen)[:n]

    return firsts(train, n_train), firsts(test, n_test)


def instruction_prompt(question: str, instruction: str) -> str:
    """The user message: the question, then the instruction (one of ``INSTRUCTIONS``)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"instruction must be one of {list(INSTRUCTIONS)}, got {instruction!r}")
    return f"{question} {instruction}"


def _check_questions(questions: Any) -> list[str]:
    if isinstance(questions, str) or not isinstance(questions, Sequence) or not questions:
        raise TypeError("questions must be a non-empty list of strings")
    return list(questions)


def _check_template(template: Any) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return template


def prompt_ids(tokenizer: Any, message: str, system: str | None, template: str) -> list[int]:
    """Token ids of a one-message conversation ready for the reply: the book's chat format
    (``USER: ... BOT:``) or ChatML (``<|im_start|>assistant``; ``system=None`` keeps SmolLM2's
    default system prompt)."""
    from gptlab import chat
    from gptlab.pretrained import render_chatml

    if _check_template(template) == "gptlab":
        return chat.tokenize_conversation([message], tokenizer, system)[0]
    messages = [{"role": "user", "content": message}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return tokenizer.encode(render_chatml(messages), allowed_special="all")


def _end_id(tokenizer: Any, template: str) -> int:
    from gptlab import chat

    if template == "gptlab":
        return chat.end_token_id(tokenizer)
    ids = tokenizer.encode("<|im_end|>", allowed_special="all")
    if len(ids) != 1:
        raise ValueError("the tokenizer has no <|im_end|> token; ChatML needs one")
    return ids[0]


def greedy_instruction_replies(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    instruction: str,
    *,
    system: str | None = CHATBOT_SYSTEM,
    template: str = "gptlab",
    max_new_tokens: int = 24,
) -> list[str]:
    """The greedy reply to each question with ``instruction`` appended, decoded and stripped."""
    from gptlab import applications

    check_language_model(model)
    questions = _check_questions(questions)
    messages = [instruction_prompt(q, instruction) for q in questions]
    return applications.greedy_replies(
        model,
        tokenizer,
        messages,
        system=system,
        max_new_tokens=max_new_tokens,
        batch_size=32,
        template=_check_template(template),
    )


#: Questions with a one-word answer that SmolLM2 mostly knows: does a tuned model still know them?
FACTS = [
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("What is the capital of Italy?", "rome"),
    ("What is the largest planet in the solar system?", "jupiter"),
    ("What is the chemical symbol for gold?", "au"),
    ("Which planet is known as the Red Planet?", "mars"),
    ("What gas do plants absorb from the air?", "carbon"),
    ("How many legs does a spider have?", "eight"),
    ("What is the largest ocean on Earth?", "pacific"),
    ("Who wrote Romeo and Juliet?", "shakespeare"),
    ("What is the freezing point of water in degrees Celsius?", "0"),
    ("What language is spoken in Brazil?", "portuguese"),
    ("What is the opposite of hot?", "cold"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is the tallest animal?", "giraffe"),
    ("How many days are in a week?", "seven"),
]


def fact_scores(
    model: nn.Module,
    tokenizer: Any,
    facts: Sequence[tuple[str, str]] = tuple(FACTS),
    *,
    system: str | None = None,
    template: str = "chatml",
    max_new_tokens: int = 32,
) -> tuple[list[float], list[str]]:
    """Ask each ``(question, answer)`` of ``facts`` with "Answer in one word." appended; score
    1.0 when the greedy reply contains the answer (lowercase). Returns ``(scores, replies)``."""
    if isinstance(facts, str) or not isinstance(facts, Sequence) or not facts:
        raise TypeError("facts must be a non-empty list of (question, answer) pairs, e.g. FACTS")
    replies = greedy_instruction_replies(
        model, tokenizer, [q for q, _ in facts], "Answer in one word.", system=system,
        template=template, max_new_tokens=max_new_tokens,
    )  # fmt: skip
    scores = [float(a in reply.lower()) for reply, (_, a) in zip(replies, facts, strict=True)]
    return scores, replies


def follow_rates(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    system: str | None = CHATBOT_SYSTEM,
    template: str = "gptlab",
    max_new_tokens: int = 24,
) -> dict[str, list[float]]:
    """Per instruction: 1.0 or 0.0 per question, whether the greedy reply follows it."""
    return {
        instruction: [
            check(reply, None)
            for reply in greedy_instruction_replies(
                model,
                tokenizer,
                questions,
                instruction,
                system=system,
                template=template,
                max_new_tokens=max_new_tokens,
            )  # fmt: skip
        ]
        for instruction, check in INSTRUCTIONS.items()
    }


def build_preference_pairs(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    samples: int = 8,
    system: str | None = CHATBOT_SYSTEM,
    template: str = "gptlab",
    max_new_tokens: int = 24,
    seed: int = 0,
) -> list[PreferencePair]:
    """Preference pairs from the model's own samples, ranked by the instruction's verifier.

    Question ``i`` gets instruction ``i % 3``; ``samples`` replies are sampled at temperature 1,
    each checked; where some pass and some fail, one passing reply (chosen) and one failing
    reply (rejected), drawn at random, form a pair. Questions whose replies all pass or all fail
    give none. Raises if no question gives a pair.
    """
    check_language_model(model)
    questions = _check_questions(questions)
    check_int("samples", samples, 2, "; a pair needs a reply that passes and one that fails")
    check_int("seed", seed, 0)
    eos = _end_id(tokenizer, _check_template(template))
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for i, question in enumerate(questions):
        instruction = list(INSTRUCTIONS)[i % len(INSTRUCTIONS)]
        prompt = prompt_ids(tokenizer, instruction_prompt(question, instruction), system, template)
        replies = sample_group(model, prompt, samples, max_new_tokens, eos_token_id=eos,
                               generator=generator)  # fmt: skip
        passed, failed = [], []
        for ids in replies:
            reply = tokenizer.decode([t for t in ids if t != eos]).strip()
            (passed if INSTRUCTIONS[instruction](reply, None) else failed).append(ids)
        if passed and failed:
            pairs.append(PreferencePair(prompt, rng.choice(passed), rng.choice(failed)))
    if not pairs:
        raise RuntimeError(
            "no question got both a reply that follows its instruction and one that does not; "
            "raise samples or pass more questions"
        )
    return pairs


def fact_summary(
    facts: Sequence[tuple[str, str]],
    before: tuple[list[float], list[str]],
    after: tuple[list[float], list[str]],
) -> dict[str, Any]:
    """What the SmolLM2 recipes store about :func:`fact_scores` before and after a tune: both
    rates with intervals, the paired change with its interval, and the replies side by side."""
    from gptlab.evaluate import paired_bootstrap

    (scores_before, replies_before), (scores_after, replies_after) = before, after
    change = paired_bootstrap(scores_after, scores_before, seed=0)
    return {
        "facts_before": rate_interval(scores_before),
        "facts_after": rate_interval(scores_after),
        "facts_change": {"estimate": change.estimate, "low": change.low, "high": change.high},
        "fact_replies": [
            [q, a, b] for (q, _), a, b in zip(facts, replies_before, replies_after, strict=True)
        ],
    }


def rate_interval(scores: Sequence[float], seed: int = 0) -> dict[str, float]:
    """A success rate with its 95% bootstrap interval, as stored by the chapter's recipes:
    ``{"rate", "low", "high", "n"}``."""
    from gptlab.evaluate import bootstrap_ci

    ci = bootstrap_ci(list(scores), seed=seed)
    return {"rate": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


def rate_table(rates: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """:func:`rate_interval` for each instruction of :func:`follow_rates`'s result, and for all
    of them pooled (``"all"``)."""
    if not isinstance(rates, dict) or not rates:
        raise TypeError("rates must be follow_rates()'s dict of instruction -> scores")
    return {k: rate_interval(v) for k, v in rates.items()} | {
        "all": rate_interval(pooled_scores(rates))
    }


def pooled_scores(rates: dict[str, list[float]]) -> list[float]:
    """Every instruction's scores of :func:`follow_rates`'s result in one list, in order (the
    items of a paired comparison over all instructions)."""
    return [s for scores in rates.values() for s in scores]
