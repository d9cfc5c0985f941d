"""gptlab.align's pieces against hand computations: log-probs, DPO, GRPO, rewards, reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gptlab import GPT, GPTConfig
from gptlab.align import (
    DPOLoss,
    combine_rewards,
    dpo_loss,
    exact_answer_reward,
    frozen_copy,
    group_normalized_rewards,
    grpo_clip_loss,
    grpo_loss,
    keyword_reward,
    kl_k3,
    length_bonus_reward,
    length_reward,
    lora_disabled,
    lowercase_reward,
    masked_mean,
    masked_normalize,
    numeric_answer_reward,
    one_word_reward,
    question_reward,
    reward_from_text,
    sequence_logprobs,
    token_entropy,
    token_logprobs,
)
from gptlab.align.reference import resolve_reference
from gptlab.lora import apply_lora
from gptlab.tokenizers import CharTokenizer


def tiny_gpt(dtype: torch.dtype = torch.float64, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=11, block_size=12, n_layer=1, n_head=2, n_embd=16))
    return model.to(dtype).eval()


PROMPTS = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
RESPONSES = [[4, 5], [6, 7, 8, 9, 10], [1]]


# ------------------------------------------------------------------------ sequence log-probs


def hand_logprobs(model: GPT, prompt: list[int], response: list[int]) -> list[float]:
    """log_softmax of one unpadded sequence, read at each response token: the definition."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    logp = F.log_softmax(logits[0], dim=-1)
    return [float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(response)]


def test_sequence_logprobs_equal_the_hand_sum_of_log_softmax() -> None:
    model = tiny_gpt()
    total, tokens, mask = sequence_logprobs(model, PROMPTS, RESPONSES)
    assert tokens.dtype == torch.float64 and tokens.shape == (3, 5)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
        expected = hand_logprobs(model, p, r)
        assert mask[i].tolist() == [j < len(r) for j in range(5)]
        torch.testing.assert_close(tokens[i, : len(r)], torch.tensor(expected, dtype=torch.float64))
        assert (tokens[i, len(r) :] == 0).all()
        assert math.isclose(float(total[i].detach()), sum(expected), abs_tol=1e-12)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_padding_and_batch_composition_change_nothing(dtype: torch.dtype, atol: float) -> None:
    model = tiny_gpt(dtype)
    together = sequence_logprobs(model, PROMPTS, RESPONSES)
    for i in range(3):
        alone = sequence_logprobs(model, [PROMPTS[i]], [RESPONSES[i]])
        n = len(RESPONSES[i])
        torch.testing.assert_close(together.total[i], alone.total[0], atol=atol, rtol=0)
        torch.testing.assert_close(together.tokens[i, :n], alone.tokens[0], atol=atol, rtol=0)
    reordered = sequence_logprobs(model, PROMPTS[::-1], RESPONSES[::-1])
    torch.testing.assert_close(reordered.total.flip(0), together.total, atol=atol, rtol=0)


def test_sequence_logprobs_carry_gradients_and_take_tensors() -> None:
    model = tiny_gpt()
    total, _, _ = sequence_logprobs(model, [torch.tensor([1, 2])], [torch.tensor([3])])
    total.sum().backward()
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize(
    ("prompts", "responses", "message"),
    [
        ([[1]], [[2], [3]], "1 prompts and 2 responses"),
        ([[]], [[2]], "prompt 0 is empty"),
        ([[1]], [[]], "response 0 is empty"),
        ([[1] * 10], [[2] * 4], "block_size is 12"),
        ([[1]], [[11]], "outside the vocabulary"),
        ("ab", [[1]], "one list of token ids"),
    ],
)
def test_sequence_logprobs_reject_bad_input(prompts, responses, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        sequence_logprobs(tiny_gpt(), prompts, responses)


def test_token_logprobs_match_log_softmax_even_for_huge_logits() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 7, dtype=torch.float64) * 1e4
    labels = torch.randint(0, 7, (2, 3))
    expected = F.log_softmax(logits, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, labels), expected)
    with pytest.raises(ValueError, match="without the last"):
        token_logprobs(logits, labels[:, :2])


def test_token_entropy_against_hand_values() -> None:
    logits = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # uniform over 4: log 4
            [math.log(0.5), math.log(0.25), math.log(0.25), -math.inf],  # 1.5 log 2
            [3.0, -math.inf, -math.inf, -math.inf],  # certain: 0, not NaN
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor([math.log(4), 1.5 * math.log(2), 0.0], dtype=torch.float64)
    torch.testing.assert_close(token_entropy(logits), expected)


def test_masked_mean_and_normalize_against_hand_values() -> None:
    values = torch.tensor([[1.0, 2.0, math.nan], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    assert float(masked_mean(values, mask)) == pytest.approx((1 + 2 + 5 + 6) / 4)  # NaN ignored
    assert masked_mean(values, mask, dim=-1).tolist() == [1.5, 5.5]
    assert masked_mean(values, mask.float(), dim=0).tolist()[0] == 1.0
    assert masked_normalize(values, mask, 10.0, dim=-1).tolist() == pytest.approx([0.3, 1.1])
    assert float(masked_normalize(values, mask, 2.0)) == 7.0
    with pytest.raises(ValueError, match="selects no element"):
        masked_mean(values, torch.tensor([[True, False, False], [False, False, False]]), dim=-1)
    with pytest.raises(ValueError, match="normalize_constant"):
        masked_normalize(values, mask, 0.0)


# ------------------------------------------------------------------------------------- DPO


def test_dpo_loss_matches_a_float64_hand_computation() -> None:
    pc, pr = torch.tensor([-3.0, -1.0], dtype=torch.float64), torch.tensor([-2.0, -4.0]).double()
    rc, rr = torch.tensor([-2.5, -1.5]).double(), torch.tensor([-2.5, -2.0]).double()
    beta = 0.3
    out = dpo_loss(pc, pr, rc, rr, beta)
    for i in range(2):
        h = (float(pc[i]) - float(rc[i])) - (float(pr[i]) - float(rr[i]))
        expected = -math.log(1 / (1 + math.exp(-beta * h)))
        assert float(out.losses[i]) == pytest.approx(expected, rel=1e-12)
        assert float(out.margins[i]) == pytest.approx(beta * h, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([beta * -0.5, beta * 0.5])
    assert out.accuracy == 0.5  # pair 0: h = -1 (wrong order), pair 1: h = +2.5
    assert isinstance(out, DPOLoss) and float(out.loss) == pytest.approx(float(out.losses.mean()))


def test_dpo_loss_tends_to_log2_and_its_gradient_scales_with_beta() -> None:
    grads = []
    for beta in (1e-6, 2e-6):
        pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
        zero = torch.zeros(1, dtype=torch.float64)
        out = dpo_loss(pc, zero - 3.0, zero - 2.0, zero - 2.5, beta)
        assert float(out.loss.detach()) == pytest.approx(math.log(2), rel=1e-5)
        out.loss.backward()
        grads.append(float(pc.grad))
        assert grads[-1] == pytest.approx(-beta / 2, rel=1e-5)  # d/dh = -beta * sigmoid(0)
    assert grads[1] / grads[0] == pytest.approx(2.0, rel=1e-5)


def test_dpo_loss_becomes_a_hinge_for_large_beta() -> None:
    beta = 1000.0
    zero = torch.zeros(2, dtype=torch.float64)
    h = torch.tensor([-0.3, 0.3], dtype=torch.float64)
    out = dpo_loss(h, zero, zero, zero, beta)
    assert float(out.losses[0]) == pytest.approx(beta * 0.3, rel=1e-12)  # beta * max(0, -h)
    assert 0 <= float(out.losses[1]) < 1e-100  # softplus, not log(sigmoid): no overflow to inf


def test_dpo_loss_validates() -> None:
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(x, x, x, torch.zeros(3), 0.1)
    with pytest.raises(TypeError, match="1-D float tensor"):
        dpo_loss(x[None], x[None], x[None], x[None], 0.1)


# ------------------------------------------------------------------------------------ GRPO


def test_group_normalized_rewards_against_hand_values() -> None:
    rewards = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    adv = group_normalized_rewards(rewards, 4, eps=1e-6)
    std1 = math.sqrt(1 / 3)  # sample std of (1, 0, 0, 1)
    expected = [0.5 / (std1 + 1e-6), -0.5 / (std1 + 1e-6)] * 2
    expected = [expected[0], expected[1], expected[1], expected[0]]
    expected += [-0.25 / (0.5 + 1e-6)] * 3 + [0.75 / (0.5 + 1e-6)] + [0.0] * 4
    assert adv.tolist() == pytest.approx(expected, rel=1e-12)
    dr = group_normalized_rewards(rewards, 4, normalize_by_std=False)  # Dr. GRPO: r - mean
    assert dr.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, -0.25, -0.25, -0.25, 0.75] + [0] * 4)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_normalized_rewards(rewards[:5], 4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        group_normalized_rewards(rewards, 1)


def test_grpo_clip_loss_above_and_below_the_clip_range() -> None:
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]], dtype=torch.float64)
    old = torch.zeros_like(ratios)
    policy = ratios.log().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, clipped = grpo_clip_loss(adv, policy, old, clip_eps=0.2)
    # A > 0: min(rho, clip(rho)) -> 1.2 (clipped), 0.5, 1.1;  A < 0: -1.5, -0.8 (clipped), -1.1
    torch.testing.assert_close(
        loss.detach(), torch.tensor([[-1.2, -0.5, -1.1], [1.5, 0.8, 1.1]], dtype=torch.float64)
    )
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    loss.sum().backward()
    # d(-rho * A)/d log rho = -rho * A where unclipped; a clipped token gets no gradient.
    expected_grad = torch.tensor([[0.0, -0.5, -1.1], [1.5, 0.0, 1.1]], dtype=torch.float64)
    torch.testing.assert_close(policy.grad, expected_grad)


def test_kl_k3_against_hand_values_and_its_expectation_is_the_kl() -> None:
    pi = torch.tensor([[math.log(0.5), math.log(0.2), math.log(0.3)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.25), math.log(0.5)]], dtype=torch.float64)
    k3 = kl_k3(pi, ref)
    for j in range(3):
        x = float(ref[0, j] - pi[0, j])
        assert float(k3[0, j]) == pytest.approx(math.exp(x) - x - 1, rel=1e-12)
    assert (k3 >= 0).all() and float(kl_k3(pi, pi).abs().max()) == 0.0
    p = pi.exp()
    exact_kl = float((p * (pi - ref)).sum())
    assert float((p * k3).sum()) == pytest.approx(exact_kl, rel=1e-12)  # unbiased under pi


def test_grpo_loss_averaging_against_hand_values() -> None:
    lp = torch.zeros(2, 3, dtype=torch.float64)  # policy == old: rho = 1, per-token loss = -A
    mask = torch.tensor([[True, False, False], [True, True, True]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    seq, _ = grpo_loss(lp, lp, adv, mask, averaging="sequence")
    tok, _ = grpo_loss(lp, lp, adv, mask, averaging="token")
    const, _ = grpo_loss(lp, lp, adv, mask, averaging="constant", normalize_constant=4)
    assert float(seq) == pytest.approx((-1 + 1) / 2)
    assert float(tok) == pytest.approx((-1 + 3) / 4)
    assert float(const) == pytest.approx((-1 / 4 + 3 / 4) / 2)
    ref = lp - 0.5  # k3 per token = e^-0.5 + 0.5 - 1
    k = math.exp(-0.5) - 0.5
    with_kl, stats = grpo_loss(lp, lp, adv, mask, reference_logprobs=ref, kl_coef=0.1)
    assert float(with_kl) == pytest.approx(0.1 * k)
    assert stats["kl"] == pytest.approx(k) and stats["ratio"] == 1.0
    with pytest.raises(ValueError, match="normalize_constant"):
        grpo_loss(lp, lp, adv, mask, averaging="constant")
    with pytest.raises(ValueError, match="needs reference_logprobs"):
        grpo_loss(lp, lp, adv, mask, kl_coef=0.1)


# ---------------------------------------------------------------------------------- rewards


def test_answer_and_format_rewards() -> None:
    assert exact_answer_reward("  The Paris!", "paris") == 1.0
    assert exact_answer_reward("Lyon", "paris") == 0.0
    assert exact_answer_reward("三百零五", "三百零五") == 1.0
    assert numeric_answer_reward("so it is 1,250", 1250) == 1.0
    assert one_word_reward("Yes.") == 1.0 and one_word_reward("yes it is") == 0.0
    assert lowercase_reward("all quiet here") == 1.0 and lowercase_reward("All") == 0.0
    assert lowercase_reward("123") == 0.0  # no letters: the instruction was not followed
    assert question_reward("Why not? ") == 1.0 and question_reward("No.") == 0.0
    short = length_reward(3)
    assert short("one two three", None) == 1.0 and short("a b c d", None) == 0.0
    assert short("", None) == 0.0
    with pytest.raises(TypeError, match="reference answer"):
        exact_answer_reward("x", None)
    with pytest.raises(TypeError, match="decoded text"):
        one_word_reward([1, 2])


def test_combined_and_hackable_rewards() -> None:
    score = combine_rewards([(1.0, exact_answer_reward), (0.5, one_word_reward)])
    assert score("Paris", "paris") == 1.5 and score("It is Paris", "paris") == 0.0
    ramble = length_bonus_reward(0.1)
    assert ramble("word " * 50, None) > ramble("Paris", None)  # more words, more reward
    because = keyword_reward("because")
    assert because("Because because BECAUSE", None) == 3.0  # repeating the word collects it
    hacked = combine_rewards([(1.0, exact_answer_reward), (0.5, keyword_reward("because"))])
    assert hacked("because because because", "paris") > hacked("Paris", "paris")
    with pytest.raises(TypeError, match="weight, reward"):
        combine_rewards([exact_answer_reward])


def test_reward_from_text_decodes_and_indexes_references() -> None:
    tok = CharTokenizer.from_text("ab ?")
    fn = reward_from_text(tok, exact_answer_reward, ["ab", "ba"])
    assert fn(0, tok.encode(" ab ")) == 1.0 and fn(1, tok.encode("ab")) == 0.0
    with pytest.raises(IndexError, match="no reference"):
        fn(2, [0])


# --------------------------------------------------------------------------- the reference


def lora_gpt() -> tuple[GPT, GPT]:
    base = tiny_gpt()
    model = frozen_copy(base)
    model.requires_grad_(True)
    apply_lora(model, r=2, alpha=4.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_()  # a trained-looking adapter: the LoRA model differs from the base
    return base, model


def test_lora_disabled_gives_the_base_model_without_copying() -> None:
    base, model = lora_gpt()
    idx = torch.tensor([[1, 2, 3, 4]])
    before = {id(p) for p in model.parameters()}
    assert not torch.allclose(model(idx)[0], base(idx)[0])
    with lora_disabled(model), lora_disabled(model):  # nesting is fine
        torch.testing.assert_close(model(idx)[0], base(idx)[0], rtol=0, atol=0)
    assert {id(p) for p in model.parameters()} == before
    lora_out = model(idx)[0]
    with pytest.raises(RuntimeError, match="boom"), lora_disabled(model):
        raise RuntimeError("boom")
    torch.testing.assert_close(model(idx)[0], lora_out)  # restored after an exception
    with pytest.raises(ValueError, match="no LoRA layers"), lora_disabled(base):
        pass


def test_resolve_reference_choices() -> None:
    base, model = lora_gpt()
    assert resolve_reference(model, "auto") is None  # LoRA policy: no copy
    copy = resolve_reference(base, "auto")
    assert copy is not base and not any(p.requires_grad for p in copy.parameters())
    with pytest.raises(ValueError, match="needs a policy with LoRA"):
        resolve_reference(base, "lora")
    with pytest.raises(ValueError, match="the policy itself"):
        resolve_reference(base, base)
    with pytest.raises(ValueError, match="one of"):
        resolve_reference(base, "frozen")


def test_char_overlap_reward_gives_partial_credit_and_can_be_hacked() -> None:
    from gptlab.align import char_overlap_reward

    assert char_overlap_reward("三百零五", "三百零五") == 1.0
    assert char_overlap_reward("三百五", "三百零五") == 0.75
    assert char_overlap_reward("七", "三百零五") == 0.0
    assert char_overlap_reward("零一二三四五六七八九十百千万", "三百零五") == 1.0  # the hack
    with pytest.raises(ValueError, match="empty"):
        char_overlap_reward("三", "")
    with pytest.raises(TypeError, match="decoded text"):
        char_overlap_reward([1, 2], "三")
