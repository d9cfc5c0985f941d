"""gptlab.align.tasks: the numbers task, the instruction prompts, pairs and follow rates."""

from __future__ import annotations

import pytest

from gptlab import applications, chat
from gptlab.align import INSTRUCTIONS, PreferencePair, tasks


def test_number_task_is_chapter_9s_split_with_a_short_finetune() -> None:
    task = tasks.number_task(2, numbers=300, n_test=20)
    assert len(task.test_pairs) == 20 and len(task.train_pairs) == 280
    assert not {s for s, _ in task.train_pairs} & {s for s, _ in task.test_pairs}
    assert task.references == [ref for _, ref in task.train_pairs]
    truth = dict(applications.number_pairs(range(300)))
    assert all(truth[s] == r for s, r in task.train_pairs + task.test_pairs)
    src = task.train_pairs[0][0]
    assert task.prompts[0] == chat.tokenize_conversation([src], task.tokenizer)[0]
    assert not task.model.training and task.model.config.n_layer == 2
    again = tasks.number_task(2, numbers=300, n_test=20)
    assert again.prompts == task.prompts  # seeded
    with pytest.raises(ValueError, match="smaller than numbers"):
        tasks.number_task(2, numbers=300, n_test=300)
    with pytest.raises(ValueError, match="sft_steps"):
        tasks.number_task(0)


def test_instruction_prompt_and_questions() -> None:
    assert tasks.instruction_prompt("Hi?", "Answer in one word.") == "Hi? Answer in one word."
    with pytest.raises(ValueError, match="one of"):
        tasks.instruction_prompt("Hi?", "Be nice.")
    with pytest.raises(ValueError, match="non-empty"):
        tasks.instruction_prompt("  ", "Answer in one word.")
    train, test = tasks.chatterbot_questions(50, 10)
    assert len(train) == 50 and len(test) == 10 and not set(train) & set(test)
    assert all(len(q) <= 60 for q in train + test)


@pytest.mark.slow
def test_pairs_follow_their_verifier_and_rates_are_per_instruction() -> None:
    model, tok = chat.load_chat_model()
    model.eval()
    train, test = tasks.chatterbot_questions(9, 3)
    pairs = tasks.build_preference_pairs(model, tok, train, samples=6, max_new_tokens=12)
    eos = chat.end_token_id(tok)
    assert pairs and all(isinstance(p, PreferencePair) for p in pairs)
    for pair in pairs:
        prompt = tok.decode(pair.prompt_ids)
        (instruction,) = [i for i in INSTRUCTIONS if i in prompt]
        chosen = tok.decode([t for t in pair.chosen_ids if t != eos]).strip()
        rejected = tok.decode([t for t in pair.rejected_ids if t != eos]).strip()
        assert INSTRUCTIONS[instruction](chosen, None) == 1.0
        assert INSTRUCTIONS[instruction](rejected, None) == 0.0
    assert tasks.build_preference_pairs(model, tok, train, samples=6, max_new_tokens=12) == pairs
    rates = tasks.follow_rates(model, tok, test, max_new_tokens=12)
    assert list(rates) == list(INSTRUCTIONS)
    assert all(len(v) == 3 and set(v) <= {0.0, 1.0} for v in rates.values())
    with pytest.raises(ValueError, match="samples"):
        tasks.build_preference_pairs(model, tok, train, samples=1)
    with pytest.raises(TypeError, match="non-empty list"):
        tasks.follow_rates(model, tok, "What?")


def test_rate_table_pools_every_instruction_and_rounding_keeps_structure() -> None:
    from gptlab.evaluate import bootstrap_ci
    from gptlab.utils import round_floats

    rates = {"a": [1.0, 0.0, 1.0, 1.0], "b": [0.0, 0.0, 1.0, 0.0]}
    table = tasks.rate_table(rates)
    assert list(table) == ["a", "b", "all"]
    assert tasks.pooled_scores(rates) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    ci = bootstrap_ci(tasks.pooled_scores(rates), seed=0)
    assert table["all"] == {"rate": 0.5, "low": ci.low, "high": ci.high, "n": 8}
    assert table["a"]["rate"] == 0.75 and table["b"]["n"] == 4
    with pytest.raises(TypeError, match="follow_rates"):
        tasks.rate_table([])
    nested = {"x": [0.123456789, 2], "y": {"z": 1.0000004, "s": "t"}, "t": (1 / 3,)}
    assert round_floats(nested) == {"x": [0.123457, 2], "y": {"z": 1.0, "s": "t"}, "t": [0.333333]}
    assert round_floats(12345.678, digits=3) == 12300.0
    with pytest.raises(ValueError, match="digits"):
        round_floats(1.0, digits=0)


def test_fact_scores_score_containment_of_the_answer() -> None:
    model, tok = chat.load_chat_model()
    model.eval()
    facts = [("What is the capital of France?", "paris"), ("What is AI?", "")]
    scores, replies = tasks.fact_scores(
        model, tok, facts, system=tasks.CHATBOT_SYSTEM, template="gptlab", max_new_tokens=8
    )
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    # the empty answer is in every reply; "paris" is scored by containment, case-insensitive
    assert scores == [float("paris" in replies[0].lower()), 1.0]
    with pytest.raises(TypeError, match="non-empty list"):
        tasks.fact_scores(model, tok, [])
    with pytest.raises(ValueError, match="template"):
        tasks.fact_scores(model, tok, facts, template="llama3")
