"""Tests for gptlab.applications: number spellings, metrics, function cutting, generation helpers.

References: the number spellings agree with num2words and cn2an on 120,000 numbers (checked
when the packages are installed; the golden tables below are from them), chrF with sacreBLEU's
default CHRF (golden values below; compared on random corpora when sacrebleu is installed),
``ast.parse`` with the interpreter itself.
"""

from __future__ import annotations

import ast
import inspect
import random

import pytest
import torch

from gptlab import applications as apps
from gptlab.applications import (
    chrf,
    exact_match,
    first_function,
    format_table,
    greedy_replies,
    is_valid_python,
    number_pairs,
    number_to_chinese,
    number_to_english,
    parse_rate,
    sample_functions,
    split_numbers,
)
from gptlab.model import GPT, GPTConfig
from gptlab.tokenizers import BPETokenizer

# --------------------------------------------------------------------------------------------
# Number spellings
# --------------------------------------------------------------------------------------------

GOLDEN = [
    (0, "zero", "零"),
    (5, "five", "五"),
    (10, "ten", "十"),
    (15, "fifteen", "十五"),
    (20, "twenty", "二十"),
    (42, "forty-two", "四十二"),
    (101, "one hundred one", "一百零一"),
    (110, "one hundred ten", "一百一十"),
    (200, "two hundred", "二百"),
    (305, "three hundred five", "三百零五"),
    (1001, "one thousand one", "一千零一"),
    (1010, "one thousand ten", "一千零一十"),
    (1100, "one thousand one hundred", "一千一百"),
    (10000, "ten thousand", "一万"),
    (10010, "ten thousand ten", "一万零一十"),
    (10100, "ten thousand one hundred", "一万零一百"),
    (11000, "eleven thousand", "一万一千"),
    (100000, "one hundred thousand", "十万"),
    (105000, "one hundred five thousand", "十万五千"),
    (1000001, "one million one", "一百万零一"),
    (
        12345678,
        "twelve million three hundred forty-five thousand six hundred seventy-eight",
        "一千二百三十四万五千六百七十八",
    ),
    (99999999, None, "九千九百九十九万九千九百九十九"),
]


@pytest.mark.parametrize(("n", "english", "chinese"), GOLDEN)
def test_number_spellings_golden(n, english, chinese):
    if english is not None:
        assert number_to_english(n) == english
    assert number_to_chinese(n) == chinese


def test_spellings_are_one_to_one_below_a_hundred_thousand():
    """Each number has its own spelling on both sides, so the task has one right answer."""
    numbers = range(100_000)
    assert len({number_to_english(n) for n in numbers}) == len(numbers)
    assert len({number_to_chinese(n) for n in numbers}) == len(numbers)


def test_chinese_zero_rules_on_every_four_digit_number():
    for n in range(1, 10_000):
        text = number_to_chinese(n)
        assert "零零" not in text and not text.endswith("零"), n
        assert text.startswith("十") == (10 <= n < 20)
        # a 零 appears exactly when a zero digit sits between two non-zero digits
        digits = str(n).rstrip("0")
        assert ("零" in text) == ("0" in digits), n


def test_spellings_agree_with_num2words_and_cn2an():
    num2words = pytest.importorskip("num2words").num2words
    cn2an = pytest.importorskip("cn2an")
    numbers = list(range(3000)) + random.Random(0).sample(range(3000, 10**8), 3000)
    for n in numbers:
        assert number_to_english(n) == num2words(n).replace(" and", "").replace(",", "")
        assert number_to_chinese(n) == cn2an.an2cn(n)


@pytest.mark.parametrize("bad", [-1, 10**8])
def test_number_range_is_checked(bad):
    with pytest.raises(ValueError, match=r"n must be in \[0, 100,000,000\)"):
        number_to_chinese(bad)
    with pytest.raises(ValueError, match="below one hundred million"):
        number_to_english(bad)


def test_number_type_is_checked():
    for bad in (True, 3.0, "7"):
        with pytest.raises(TypeError, match="n must be an int"):
            number_to_english(bad)


def test_split_numbers_is_disjoint_seeded_and_validated():
    train, test = split_numbers(1000, 100, seed=3)
    assert len(test) == 100 and len(train) == 900
    assert sorted(train + test) == list(range(1000)) and test == sorted(test)
    assert split_numbers(1000, 100, seed=3) == (train, test)
    assert split_numbers(1000, 100, seed=4)[1] != test
    assert min(split_numbers(200, 10, low=100)[0]) >= 100
    with pytest.raises(ValueError, match="n_test must leave numbers on both sides"):
        split_numbers(10, 10)
    with pytest.raises(ValueError, match="need 0 <= low < high"):
        split_numbers(10, 2, low=10)
    with pytest.raises(TypeError, match="n_test must be an int"):
        split_numbers(10, 2.0)


def test_number_pairs():
    assert number_pairs([305, 12], "chinese") == [
        ("three hundred five", "三百零五"),
        ("twelve", "十二"),
    ]
    assert number_pairs(range(2), "digits") == [("zero", "0"), ("one", "1")]
    with pytest.raises(ValueError, match="target must be 'chinese' or 'digits'"):
        number_pairs([1], "french")
    with pytest.raises(TypeError, match="not a string"):
        number_pairs("123")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_exact_match():
    assert exact_match(["三百零五", " 十 "], ["三百零五", "十"]) == 1.0
    assert exact_match(["三百五", "十"], ["三百零五", "十"]) == 0.5
    with pytest.raises(ValueError, match="got 1 predictions for 2 references"):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="predictions must be a list of strings"):
        exact_match("a", ["a"])
    with pytest.raises(ValueError, match="no references"):
        exact_match([], [])


@pytest.mark.parametrize(
    ("predictions", "references", "expected"),
    [  # values from sacrebleu.metrics.CHRF().corpus_score(predictions, [references]).score
        (["Supprimé"], ["Supprimer"], 69.0455058125195),
        (["ab"], ["abc"], 63.636363636363626),  # chrP = 1, chrR = 7/12 -> 5*(7/12)/(4+7/12)
        (["Oui", "Non"], ["Oui", "Oui"], 50.0),
        (["三百零五"], ["三百五"], 46.42857142857143),
        (["Enregistrer"], ["Enregistrer"], 100.0),
        (["xyz"], ["abc"], 0.0),
    ],
)
def test_chrf_golden(predictions, references, expected):
    assert chrf(predictions, references) == pytest.approx(expected, abs=1e-9)


def test_chrf_ignores_whitespace_and_validates():
    assert chrf(["Sup primer"], ["Supprimer"]) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="order must be a positive int"):
        chrf(["a"], ["a"], order=0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        chrf(["a"], ["a"], beta=0)


def test_chrf_agrees_with_sacrebleu_on_random_corpora():
    CHRF = pytest.importorskip("sacrebleu.metrics").CHRF
    metric = CHRF()
    rng = random.Random(0)
    words = ["le", "la", "des", "supprimer", "objet", "valide", "Oui", "Non", "是", "否", "输入",
             "一个", "有效", "的", "值", "a"]  # fmt: skip
    for _ in range(200):
        n = rng.randint(1, 4)
        hyps = [" ".join(rng.choices(words, k=rng.randint(0, 6))) for _ in range(n)]
        refs = [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(n)]
        assert chrf(hyps, refs) == pytest.approx(metric.corpus_score(hyps, [refs]).score)


# --------------------------------------------------------------------------------------------
# Code: cutting a sample at the end of its function, checking that it parses
# --------------------------------------------------------------------------------------------

NESTED = '''def f(x):
    """Docs.

Text at column 0 inside the docstring does not end the function.
"""
    if x:
        return [
1, 2]
# a comment at column 0 does not end it either
    return 3

class After:
    pass
'''


def test_first_function_stops_at_the_next_top_level_statement():
    cut = first_function(NESTED)
    assert cut == NESTED[: NESTED.index("\nclass After")].rstrip() + "\n"
    assert is_valid_python(cut)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("def f(): return 1\nx = 2\n", "def f(): return 1\n"),
        ("def f(\n    a,\n):\n    return a\n\n\nif True:\n", "def f(\n    a,\n):\n    return a\n"),
        ("def f():\n    return 1\n\x0c\ndef g(", "def f():\n    return 1\n"),  # form feed
        ("def f():\n    return 1\n", None),  # nothing followed: maybe unfinished
        ("def f():\n    return (1,\n", None),  # cut inside brackets
        ("def f():\n    s = '''\nopen string\n", None),
        ("def f():\n        a = 1\n    b = 2\n", None),  # inconsistent dedent
    ],
)
def test_first_function_cases(text, expected):
    assert first_function(text) == expected


def test_is_valid_python_and_parse_rate():
    assert is_valid_python("def f(x):\n    return x\n")
    assert not is_valid_python("def f(x)\n    return x\n")
    assert not is_valid_python(None)
    assert not is_valid_python("x = 1\0")  # ast.parse raises ValueError on NUL bytes
    assert is_valid_python("s = '\\d'\n")  # valid despite the invalid-escape warning
    assert parse_rate(["x = 1\n", None, "def (:\n", "y = 2\n"]) == 0.5
    with pytest.raises(ValueError, match="no snippets"):
        parse_rate([])
    with pytest.raises(TypeError, match="code must be a str or None"):
        is_valid_python(3)


def test_real_stdlib_functions_all_parse_after_cutting():
    """The metric's ceiling: real code, cut the same way, parses every time."""
    import inspect
    import json.decoder

    source = inspect.getsource(json.decoder)
    starts = [i for i in range(len(source)) if source.startswith("\ndef ", i)]
    cuts = [first_function(source[i + 1 :]) for i in starts]
    assert len(cuts) >= 3 and all(c is not None and c.startswith("def ") for c in cuts)
    assert parse_rate(cuts) == 1.0
    assert all(isinstance(ast.parse(c).body[0], ast.FunctionDef) for c in cuts)


# --------------------------------------------------------------------------------------------
# Generation helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    tokenizer = BPETokenizer.train("USER:\nten\n\nBOT:\n十 one two three 一二三 def f():\n", 280)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=1, n_head=2,
                          n_embd=16)).eval()  # fmt: skip
    return model, tokenizer


def test_greedy_replies_batched_equals_one_at_a_time(tiny):
    model, tokenizer = tiny
    messages = ["ten", "one two", "three", "ten", "one", "two three one"]
    batched = greedy_replies(model, tokenizer, messages, max_new_tokens=6, batch_size=2)
    alone = [greedy_replies(model, tokenizer, [m], max_new_tokens=6)[0] for m in messages]
    assert batched == alone and len(batched) == len(messages)
    assert batched[0] == batched[3]  # same prompt, same greedy reply
    with_system = greedy_replies(model, tokenizer, ["ten"], system="Count.", max_new_tokens=6)
    assert isinstance(with_system[0], str)


def test_greedy_replies_validates(tiny):
    model, tokenizer = tiny
    with pytest.raises(TypeError, match="not one string"):
        greedy_replies(model, tokenizer, "ten")
    with pytest.raises(ValueError, match="exceeds block_size=48"):
        greedy_replies(model, tokenizer, ["one " * 40], max_new_tokens=8)
    with pytest.raises(TypeError, match="model must be a gptlab GPT"):
        greedy_replies(torch.nn.Linear(2, 2), tokenizer, ["ten"])
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        greedy_replies(model, tokenizer, ["ten"], max_new_tokens=0)


def test_sample_functions_is_seeded(tiny):
    model, tokenizer = tiny
    a = sample_functions(model, tokenizer, 5, max_new_tokens=20, seed=1)
    b = sample_functions(model, tokenizer, 5, max_new_tokens=20, seed=1)
    assert a == b and len(a) == 5
    assert all(s is None or s.startswith("def") for s in a)  # the prompt's newlines removed
    with pytest.raises(ValueError, match="n must be a positive int"):
        sample_functions(model, tokenizer, 0)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        sample_functions(model, tokenizer, 1, prompt="")


# --------------------------------------------------------------------------------------------
# Tables, the code split, the shipped code model
# --------------------------------------------------------------------------------------------


def test_format_table_aligns_wide_characters():
    table = format_table([["三百零五", "three hundred five", 0.5], ["十", "ten", 1.0]],
                         ["zh", "en", "acc"])  # fmt: skip
    lines = table.splitlines()
    assert lines[0] == "zh        en                  acc"
    assert lines[2] == "三百零五  three hundred five  0.500"
    assert lines[3] == "十        ten                 1.000"
    assert format_table([["abcdefgh"]], ["x"], max_width=5).splitlines()[2] == "abcd…"
    assert format_table([["a\nb"]], ["x"]).splitlines()[2] == "a⏎b"
    with pytest.raises(ValueError, match="row 0 has 1 cells but there are 2 headers"):
        format_table([["a"]], ["x", "y"])


@pytest.mark.slow
def test_stdlib_code_split_is_by_file_without_data_tables():
    train, val = apps.stdlib_code_split()
    titles_train, titles_val = {d.title for d in train}, {d.title for d in val}
    assert not titles_train & titles_val and len(val) >= 20
    assert not {d.genre for d in train + val} & set(apps.CODE_DATA_PACKAGES)
    assert apps.stdlib_code_split()[1] == val  # seeded


def test_shipped_code_model_loads_and_matches_its_manifest():
    from gptlab.reference import reference_manifest

    manifest = reference_manifest(apps.CODE_MODEL_DIR)
    model, tokenizer = apps.load_code_model()
    assert model.config.to_dict() == manifest["model_config"]
    assert model.num_parameters() == manifest["parameters"]
    assert tokenizer.vocab_size == model.config.vocab_size
    size = sum(p.stat().st_size for p in apps.CODE_MODEL_DIR.iterdir())
    assert size <= 5 * 2**20, "a shipped artifact must stay within 5 MB"
    results = manifest["results"]
    assert results["parse_rate"] >= 0.25 and results["parse_rate_untrained"] == 0.0
    assert results["parse_rate_prompt_def_space"] < results["parse_rate"] / 2
    assert "def " in tokenizer.decode(tokenizer.encode("def f(x):\n    return x\n"))
    # the recorded rate was measured with the default prompt, and a small seeded draw agrees
    default_prompt = inspect.signature(sample_functions).parameters["prompt"].default
    assert results["sampling"]["prompt"] == default_prompt
    snippets = sample_functions(model, tokenizer, 40, max_new_tokens=250, temperature=0.5)
    assert all(s is None or s.startswith("def") for s in snippets)
    assert parse_rate(snippets) >= 0.15


# --------------------------------------------------------------------------------------------
# Translation checks: placeholders and script; mixing chat datasets; shipped results
# --------------------------------------------------------------------------------------------


def test_placeholders_find_both_styles_and_literal_percent():
    text = "Delete %(count)d %(items)s? %s of %d, 100%% {name} {0} {} %(x)05.2f"
    assert apps.placeholders(text) == sorted(
        ["%(count)d", "%(items)s", "%s", "%d", "%%", "{name}", "{0}", "{}", "%(x)05.2f"]
    )
    assert apps.placeholders("Save") == []
    with pytest.raises(TypeError, match="text must be a str"):
        apps.placeholders(None)


def test_placeholder_rate_counts_only_sources_with_placeholders():
    sources = ["Delete %(name)s", "Save", "%(a)s and %(b)s", "%s and %s"]
    outputs = ["Supprimer %(name)s", "Enregistrer %s", "%(b)s et %(a)s", "%s"]
    assert apps.placeholder_rate(sources, outputs) == pytest.approx(2 / 3)
    assert apps.placeholder_rate(["Save"], ["x"]) != apps.placeholder_rate(["Save"], ["x"])  # nan
    with pytest.raises(ValueError, match="got 1 predictions for 2 references"):
        apps.placeholder_rate(["a", "b"], ["a"])


def test_script_rate():
    outputs = ["确保该值小于 %(limit_value)s", "Arabe", "页码 1", "x 一", "", "Hongrois"]
    assert apps.script_rate(outputs, "han") == pytest.approx(2 / 6)
    assert apps.script_rate(outputs, "latin") == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="script must be 'han' or 'latin'"):
        apps.script_rate(outputs, "cyrillic")


def test_merge_chat_datasets_keeps_each_system_prompt(tiny):
    from gptlab import chat

    _, tokenizer = tiny
    a = chat.ChatDataset([["ten", "十"]], tokenizer, 40, system="Count.")
    b = chat.ChatDataset([["one", "一"], ["two", "二"]], tokenizer, 40)
    merged = apps.merge_chat_datasets(a, b, a)
    assert len(merged) == 4 and len(a) == 1  # the inputs are not changed
    assert [x.tolist() for x, _ in merged] == [x.tolist() for x, _ in [*a, *b, *a]]
    assert merged.num_target_tokens() == 2 * a.num_target_tokens() + b.num_target_tokens()
    c = chat.ChatDataset([["ten", "十"]], tokenizer, 30)
    with pytest.raises(ValueError, match="dataset 1 has block_size=30"):
        apps.merge_chat_datasets(a, c)
    with pytest.raises(TypeError, match="dataset 1 must be a ChatDataset"):
        apps.merge_chat_datasets(a, [1])
    with pytest.raises(ValueError, match="at least one"):
        apps.merge_chat_datasets()


def test_load_result_reads_the_shipped_fine_tuning_run():
    run = apps.load_result("assistant_run")
    assert run["steps"] >= 1000 and run["command"].endswith("recipes/assistant.py")
    tuned, copied = run["translation"]["tuned"], run["translation"]["copy"]
    assert 0 <= tuned["chrf"] <= 100 and copied["placeholder_rate"] == 1.0
    assert run["reply_loss_after"]["chat"] < run["reply_loss_before"]["chat"]
    assert run["transcript"].startswith("SYSTEM: ")
    with pytest.raises(FileNotFoundError, match="no shipped result named 'nope'"):
        apps.load_result("nope")
    with pytest.raises(ValueError, match="plain file name"):
        apps.load_result("../code_model/manifest")


# --------------------------------------------------------------------------------------------
# Functions written by a chat model
# --------------------------------------------------------------------------------------------


def test_chat_code_prompt_asks_in_chatml_and_opens_a_code_block():
    from gptlab.pretrained import render_chatml

    prompt = 'def f(x: int) -> int:\n    """Return x + 1."""\n'
    text = apps.chat_code_prompt(prompt)
    question = f"{apps.CODE_INSTRUCTION}\n\n{prompt}"
    assert text == render_chatml([{"role": "user", "content": question}]) + "```python\n"
    assert text.endswith("<|im_start|>assistant\n```python\n")
    assert apps.chat_code_prompt(prompt, "Write it:").count("Write it:\n\ndef f(") == 1
    with pytest.raises(ValueError, match="signature and docstring"):
        apps.chat_code_prompt("  ")
    with pytest.raises(TypeError, match="instruction must be a str"):
        apps.chat_code_prompt(prompt, None)


class _FenceTokenizer:
    """Token 0 is ``` (one token, as in SmolLM2's vocabulary); others are characters."""

    def encode_ordinary(self, text):
        return [0] if text == "```" else [ord(c) for c in text]

    def encode(self, text, allowed_special=()):
        return [ord(c) % 1000 + 1 for c in text[-5:]]

    def decode(self, ids):
        return "".join("```" if i == 0 else chr(i) for i in ids)


def test_chat_function_stops_at_the_closing_fence(monkeypatch):
    import gptlab.sampling

    written = [ord(c) for c in "def f():\n    return 1\n"] + [0, ord("x")]

    def fake_generate(model, idx, max_new_tokens, **kwargs):
        assert kwargs["temperature"] == 0.0 and kwargs["eos_token_id"] == 0
        return torch.cat([idx, torch.tensor([written[:max_new_tokens]])], dim=1)

    monkeypatch.setattr(gptlab.sampling, "generate", fake_generate)
    model = torch.nn.Linear(1, 1)
    code = apps.chat_function(model, _FenceTokenizer(), "def f():\n", max_new_tokens=50)
    assert code == "def f():\n    return 1\n"  # the fence and what follows are dropped
    assert apps.chat_function(model, _FenceTokenizer(), "def f():\n", max_new_tokens=4) == "def "
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        apps.chat_function(model, _FenceTokenizer(), "def f():\n", max_new_tokens=0)


def test_evaluate_chat_code_runs_the_written_functions(monkeypatch):
    from gptlab.evaluate import load_code_benchmark

    problems = load_code_benchmark()[:3]
    answers = {
        problems[0].prompt: problems[0].prompt + problems[0].solution,  # right
        problems[1].prompt: problems[1].prompt + "    return None\n",  # wrong
        problems[2].prompt: "def oops(:\n",  # does not parse
    }
    monkeypatch.setattr(apps, "chat_function", lambda m, t, prompt, **kw: answers[prompt])
    evaluation = apps.evaluate_chat_code(None, None, problems)
    assert evaluation.counts() == [(1, 1), (1, 0), (1, 0)]
    assert evaluation.pass_at_k(1) == pytest.approx(1 / 3)
    assert [s[0].completion for s in evaluation.samples.values()] == list(answers.values())
    assert evaluation.reasons()["passed"] == 1
    with pytest.raises(ValueError, match="non-empty list of CodeProblem"):
        apps.evaluate_chat_code(None, None, [])
    with pytest.raises(TypeError, match=r"problems\[0\] must be a CodeProblem"):
        apps.evaluate_chat_code(None, None, ["def f(): pass"])
    with pytest.raises(ValueError, match="appears twice"):
        apps.evaluate_chat_code(None, None, [problems[0], problems[0]])


def test_shipped_smollm2_code_results_agree_with_the_sandbox():
    from gptlab.evaluate import load_code_benchmark, run_tests

    run = apps.load_result("smollm2_code")
    problems = {p.id: p for p in load_code_benchmark()}
    records = run["problems"]
    assert [r["id"] for r in records] == list(problems)
    assert run["passed"] == sum(r["passed"] for r in records)
    assert run["pass_at_1"] == pytest.approx(run["passed"] / len(records))
    assert run["interval_95"][0] <= run["pass_at_1"] <= run["interval_95"][1]
    # every stored pass, and the first few stored failures, give the same verdict again
    failed = [r for r in records if not r["passed"] and r["reason"] != "timeout"][:4]
    for record in [r for r in records if r["passed"]] + failed:
        result = run_tests(record["code"], problems[record["id"]].tests)
        assert (result.passed, result.reason) == (record["passed"], record["reason"]), record["id"]
