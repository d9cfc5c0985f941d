"""gptlab.align's training loops on tiny random GPTs: they learn what they should, and save."""

from __future__ import annotations

import time

import pytest
import torch

from gptlab import GPT, GPTConfig
from gptlab.align import PreferencePair, sequence_logprobs, train_dpo, train_grpo
from gptlab.checkpoint import load_checkpoint
from gptlab.lora import apply_lora
from gptlab.tokenizers import CharTokenizer

TOK = CharTokenizer.from_text("abcdefg|")  # '|' ends a reply


def tiny_gpt(n_layer: int = 1, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=TOK.vocab_size, block_size=8, n_layer=n_layer, n_head=2, n_embd=16
    )
    return GPT(config)


def margin(model: GPT, prompt: list[int], chosen: list[int], rejected: list[int]) -> float:
    with torch.no_grad():
        total = sequence_logprobs(model.eval(), [prompt, prompt], [chosen, rejected]).total
    return float(total[0] - total[1])


def test_dpo_learns_a_trivial_preference() -> None:
    """chosen = "a", rejected = "b": after 20 steps the model prefers "a"."""
    model = tiny_gpt()
    prompt, a, b = TOK.encode("c"), TOK.encode("a"), TOK.encode("b")
    start = margin(model, prompt, a, b)
    pairs = [PreferencePair(prompt, a, b)] * 4
    history = train_dpo(model, pairs, steps=20, beta=0.5, batch_size=4, lr=1e-2, progress=False)
    end = margin(model, prompt, a, b)
    assert end > 0 and end > start + 1.0  # log P(a) - log P(b) grew: P(a) > P(b)
    assert history.steps == list(range(1, 21)) and len(history.kl) == 20
    assert history.loss[-1] < history.loss[0] and history.reward_accuracy[-1] == 1.0
    assert history.reward_margin[-1] > 0 and all(k >= 0 for k in history.kl)


def test_one_dpo_step_raises_chosen_relative_to_rejected() -> None:
    """The gradient sign: a single step moves log pi(chosen) - log pi(rejected) up."""
    model = tiny_gpt(seed=3)
    prompt, chosen, rejected = TOK.encode("ab"), TOK.encode("cd|"), TOK.encode("e|")
    start = margin(model, prompt, chosen, rejected)
    train_dpo(model, [PreferencePair(prompt, chosen, rejected)], steps=1, lr=1e-3, progress=False)
    assert margin(model, prompt, chosen, rejected) > start


def test_dpo_with_lora_uses_the_base_as_reference_and_leaves_it_frozen(tmp_path) -> None:
    model = tiny_gpt()
    apply_lora(model, r=2, alpha=4.0)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    pairs = [PreferencePair(TOK.encode("c"), TOK.encode("a"), TOK.encode("b"))]
    history = train_dpo(
        model, pairs, steps=3, lr=1e-2, checkpoint_dir=tmp_path / "dpo", checkpoint_every=2,
        progress=False,
    )  # fmt: skip
    assert history.chosen_reward[0] == 0.0  # step 0: policy == base, implicit reward 0
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    saved = load_checkpoint(tmp_path / "dpo")
    assert saved.step == 3 and saved.meta["extra"]["algorithm"] == "dpo"
    assert saved.meta["extra"]["history"]["loss"] == pytest.approx(history.loss)


def test_grpo_raises_the_reward_for_a_single_token_answer() -> None:
    """Reward 1 when the response is the single token "d": the mean reward rises in 30 steps."""
    model = tiny_gpt()
    target = TOK.encode("d")[0]
    prompts = [TOK.encode(p) for p in ("a", "b", "c", "ab")]

    def reward_fn(index: int, response: list[int]) -> float:
        return float(response == [target])

    started = time.perf_counter()
    history = train_grpo(
        model, prompts, reward_fn, steps=30, group_size=8, prompts_per_step=4,
        max_new_tokens=1, lr=3e-2, kl_coef=0.0, progress=False,
    )  # fmt: skip
    assert time.perf_counter() - started < 30
    first, last = sum(history.mean_reward[:5]) / 5, sum(history.mean_reward[-5:]) / 5
    assert last > first + 0.3, history.mean_reward
    assert history.response_length == [1.0] * 30


def test_grpo_variants_run_and_stop_at_eos(tmp_path) -> None:
    """Dr. GRPO settings, several inner steps, an end token and a checkpoint, in 3 steps."""
    model = tiny_gpt(n_layer=2)
    eos = TOK.encode("|")[0]
    history = train_grpo(
        model, [TOK.encode("ab"), TOK.encode("c")], lambda i, ids: float(len(ids)),
        steps=3, group_size=4, prompts_per_step=2, max_new_tokens=5, eos_token_id=eos,
        normalize_by_std=False, averaging="constant", inner_steps=2, lr=1e-3, seed=1,
        checkpoint_dir=tmp_path / "grpo", tokenizer=TOK, progress=False,
    )  # fmt: skip
    assert len(history.loss) == 3 and all(1 <= n <= 5 for n in history.response_length)
    assert history.kl[0] == 0.0 and all(k >= 0 for k in history.kl)
    assert load_checkpoint(tmp_path / "grpo").meta["extra"]["algorithm"] == "grpo"


def test_training_is_seeded() -> None:
    runs = []
    for _ in range(2):
        model = tiny_gpt()
        runs.append(
            train_grpo(
                model, [TOK.encode("a")], lambda i, ids: float(ids == [0]), steps=2,
                group_size=4, prompts_per_step=1, max_new_tokens=2, lr=1e-3, progress=False,
            ).mean_reward
        )  # fmt: skip
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be >= 1"),
        ({"lr": -1.0}, "lr must be in"),
        ({"group_size": 1}, "group_size must be >= 2"),
        ({"max_new_tokens": 8}, "leave room for max_new_tokens"),
        ({"averaging": "mean"}, "averaging must be one of"),
        ({"checkpoint_every": 2}, "needs a checkpoint_dir"),
        ({"reference": "lora"}, "needs a policy with LoRA"),
        ({"temperature": 0.0}, "temperature must be in"),
    ],
)
def test_train_grpo_validates_arguments(kwargs, message) -> None:
    options = {"steps": 1, "max_new_tokens": 4, "progress": False, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        train_grpo(tiny_gpt(), [TOK.encode("ab")], lambda i, ids: 0.0, **options)


@pytest.mark.parametrize(
    ("pairs", "kwargs", "message"),
    [
        ([], {}, "non-empty list of PreferencePair"),
        ([("c", "a", "b")], {}, r"pairs\[0\] must be a PreferencePair"),
        ([PreferencePair([2], [0], [0])], {}, "same chosen and rejected"),
        ([PreferencePair([2] * 6, [0] * 4, [1])], {}, "too long"),
        ([PreferencePair([2], [0], [1])], {"beta": 0}, "beta must be in"),
        ([PreferencePair([2], [0], [1])], {"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_train_dpo_validates_arguments(pairs, kwargs, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        train_dpo(tiny_gpt(), pairs, steps=1, progress=False, **kwargs)


def test_a_reward_function_must_return_a_number() -> None:
    with pytest.raises(TypeError, match="must return a finite number"):
        train_grpo(
            tiny_gpt(),
            [TOK.encode("a")],
            lambda i, ids: "yes",
            steps=1,
            max_new_tokens=2,
            progress=False,
        )


def test_dpo_history_kl_is_the_reverse_kl_on_the_pairs_tokens() -> None:
    """history.kl is the k3 estimate of KL(reference || policy) on the batch's tokens."""
    from gptlab.align import kl_k3, masked_mean

    model = tiny_gpt(seed=4)
    reference = tiny_gpt(seed=4)
    pair = PreferencePair(TOK.encode("c"), TOK.encode("ab|"), TOK.encode("e|"))
    history = train_dpo(model, [pair], steps=2, lr=5e-2, reference=reference, progress=False)
    assert history.kl[0] == 0.0  # before the first update policy == reference
    # the logged value for step 2 is computed before step 2's update: recompute it from the
    # model after step 1 by training a fresh copy for one step
    again = tiny_gpt(seed=4)
    train_dpo(again, [pair], steps=1, lr=5e-2, reference=tiny_gpt(seed=4), progress=False)
    prompts, responses = [pair.prompt_ids] * 2, [pair.chosen_ids, pair.rejected_ids]
    with torch.no_grad():
        pol = sequence_logprobs(again.eval(), prompts, responses)
        ref = sequence_logprobs(reference, prompts, responses)
    want = float(masked_mean(kl_k3(ref.tokens, pol.tokens), pol.mask))
    assert history.kl[1] == pytest.approx(want, rel=1e-5) and want > 0


def test_sampled_kl_is_zero_for_the_reference_and_positive_after_training() -> None:
    from gptlab.align import sampled_kl

    model, reference = tiny_gpt(seed=5), tiny_gpt(seed=5)
    prompts = [TOK.encode("ab"), TOK.encode("c")]
    same = sampled_kl(model, prompts, reference, samples_per_prompt=8, max_new_tokens=3)
    assert same.mean == pytest.approx(0.0, abs=1e-6) and same.n == 16
    with torch.no_grad():
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    moved = sampled_kl(model, prompts, reference, samples_per_prompt=64, max_new_tokens=3)
    assert moved.mean > 3 * moved.stderr > 0 and model.training  # mode restored
    with pytest.raises(ValueError, match="give KL 0"):
        sampled_kl(model, prompts, "copy")
    with pytest.raises(ValueError, match="policy itself"):
        sampled_kl(model, prompts, model)
    with pytest.raises(TypeError, match="non-empty list"):
        sampled_kl(model, [], reference)


def test_sampled_kl_matches_the_exact_kl_of_one_token_responses() -> None:
    """With one new token the sequence KL is the KL of two next-token distributions."""
    from gptlab.align import sampled_kl

    model, reference = tiny_gpt(seed=6), tiny_gpt(seed=7)
    prompt = TOK.encode("ab")
    with torch.no_grad():
        p = torch.log_softmax(model.eval()(torch.tensor([prompt]))[0][0, -1].double(), -1)
        q = torch.log_softmax(reference(torch.tensor([prompt]))[0][0, -1].double(), -1)
    exact = float((p.exp() * (p - q)).sum())
    est = sampled_kl(model, [prompt], reference, samples_per_prompt=4000, max_new_tokens=1)
    assert abs(est.mean - exact) < 4 * est.stderr
