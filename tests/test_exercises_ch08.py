"""Chapter 8 checkers: each accepts a right answer and rejects the usual wrong ones with a hint."""

from __future__ import annotations

import pytest
import torch

from gptlab.chat import IGNORE_INDEX, build_example
from gptlab.exercises import check
from gptlab.exercises.ch08 import kept_exchanges, lora_parameter_count
from gptlab.lora import LoRALinear
from gptlab.tokenizers import get_tokenizer


def _verdict(exercise_id, answer, capsys):
    ok = check(exercise_id, answer)
    return ok, capsys.readouterr().out


def test_stubs_are_not_solved(capsys):
    def stub(*args):
        raise NotImplementedError

    for k in range(1, 6):
        ok, out = _verdict(f"8.{k}", stub, capsys)
        assert not ok and "not solved yet" in out
    ok, out = _verdict("8.1", 42, capsys)
    assert not ok and "pass your function itself" in out


# --- 8.1 mask the prompt ---------------------------------------------------------------------


def mask_targets(ids, is_response):
    inputs = ids[:-1]
    targets = [ids[t + 1] if is_response[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return inputs, targets


def test_8_1_accepts_lists_and_tensors(capsys):
    ok, out = _verdict("8.1", mask_targets, capsys)
    assert ok and "correct" in out

    def with_tensors(ids, is_response):
        ids_t = torch.tensor(ids)
        keep = torch.tensor(is_response[1:])
        return ids_t[:-1], ids_t[1:].masked_fill(~keep, -100)

    assert _verdict("8.1", with_tensors, capsys)[0]


def test_8_1_reference_agrees_with_build_example():
    tok = get_tokenizer("gpt2")
    x, y = build_example(["Hi there", "Hello!"], tok, block_size=64)
    ids = x.tolist() + [y.tolist()[-1]]
    n_prompt = len(tok.encode_ordinary("USER:\nHi there\n\nBOT:\n"))
    flags = [t >= n_prompt for t in range(len(ids))]
    inputs, targets = mask_targets(ids, flags)
    assert inputs == x.tolist() and targets == y.tolist()


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (
            lambda ids, f: (ids[:-1], [ids[t + 1] if f[t] else -100 for t in range(len(ids) - 1)]),
            "off by one",
        ),
        (
            lambda ids, f: (
                ids[:-1],
                [ids[t + 1] if not f[t + 1] else -100 for t in range(len(ids) - 1)],
            ),
            "upside down",
        ),
        (
            lambda ids, f: (ids[:-1], [ids[t + 1] if f[t + 1] else 0 for t in range(len(ids) - 1)]),
            "-100",
        ),
        (lambda ids, f: (ids, ids), "ids[:-1]"),
        (lambda ids, f: ids[:-1], "return two things"),
    ],
)
def test_8_1_rejects_mistakes(wrong, hint, capsys):
    ok, out = _verdict("8.1", wrong, capsys)
    assert not ok and hint in out


# --- 8.2 trimming -----------------------------------------------------------------------------


def test_8_2_accepts_newest_first(capsys):
    def kept(system_len, exchange_lens, message_len, budget):
        used, k = system_len + message_len, 0
        for n in reversed(exchange_lens):
            if used + n > budget:
                break
            used, k = used + n, k + 1
        return k

    assert _verdict("8.2", kept, capsys)[0]
    assert kept_exchanges(10, [30, 5, 20], 10, 50) == 2


def _oldest_first(s, lens, m, budget):
    used, k = s + m, 0
    for n in lens:
        if used + n > budget:
            break
        used, k = used + n, k + 1
    return k


def _strict(s, lens, m, budget):
    used, k = s + m, 0
    for n in reversed(lens):
        if used + n >= budget:
            break
        used, k = used + n, k + 1
    return k


def _no_system(s, lens, m, budget):
    return kept_exchanges(0, lens, m, budget)


def _skip(s, lens, m, budget):
    used, k = s + m, 0
    for n in reversed(lens):
        if used + n <= budget:
            used, k = used + n, k + 1
    return k


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_oldest_first, "NEWEST"),
        (_strict, "<="),
        (_no_system, "system prompt always stays"),
        (_skip, "contiguous"),
        (lambda s, lens, m, budget: float(len(lens)), "an int"),
    ],
)
def test_8_2_rejects_mistakes(wrong, hint, capsys):
    ok, out = _verdict("8.2", wrong, capsys)
    assert not ok and hint in out


# --- 8.3 LoRA gradients ----------------------------------------------------------------------


def lora_grads(x, grad_out, A, B, alpha):
    s = alpha / A.shape[0]
    u = x @ A.T  # (N, r)
    return s * (grad_out @ B).T @ x, s * grad_out.T @ u


def test_8_3_accepts_and_matches_lora_linear_autograd(capsys):
    assert _verdict("8.3", lora_grads, capsys)[0]
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 4), r=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 6)
    grad_out = torch.randn(5, 4)
    layer(x).backward(grad_out)
    grad_A, grad_B = lora_grads(x, grad_out, layer.lora_A.detach(), layer.lora_B.detach(), 3.0)
    torch.testing.assert_close(layer.lora_A.grad, grad_A)
    torch.testing.assert_close(layer.lora_B.grad, grad_B)


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda x, g, A, B, a: ((g @ B).T @ x, g.T @ (x @ A.T)), "alpha / r"),
        (lambda x, g, A, B, a: lora_grads(x, g, A, B, a)[::-1], "the order is"),
        (
            lambda x, g, A, B, a: (lora_grads(x, g, A, B, a)[0], torch.zeros_like(B)),
            "grad_A is right",
        ),
        (
            lambda x, g, A, B, a: (torch.zeros_like(A), lora_grads(x, g, A, B, a)[1]),
            "grad_B is right",
        ),
        (lambda x, g, A, B, a: ((g @ B).T @ x, (g.T @ x).T), "shape"),
        (lambda x, g, A, B, a: A, "two tensors"),
    ],
)
def test_8_3_rejects_mistakes(wrong, hint, capsys):
    ok, out = _verdict("8.3", wrong, capsys)
    assert not ok and hint in out


# --- 8.4 LoRA parameter count -----------------------------------------------------------------


def lora_count(n_layer, n_embd, r, targets):
    shapes = {"c_attn": [(1, 3)], "c_proj": [(1, 1), (4, 1)], "c_fc": [(1, 4)]}
    per_block = sum(r * (i + o) * n_embd for t in targets for i, o in shapes[t])
    return n_layer * per_block


def test_8_4_accepts(capsys):
    assert _verdict("8.4", lora_count, capsys)[0]
    assert lora_parameter_count(4, 192, 8, ("c_attn", "c_proj", "c_fc")) == 4 * 8 * 192 * (
        4 + 2 + 5 + 5
    )


def _one_proj(n_layer, n_embd, r, targets):
    shapes = {"c_attn": [(1, 3)], "c_proj": [(1, 1)], "c_fc": [(1, 4)]}
    return n_layer * sum(r * (i + o) * n_embd for t in targets for i, o in shapes[t])


def _full(n_layer, n_embd, r, targets):
    shapes = {"c_attn": [(1, 3)], "c_proj": [(1, 1), (4, 1)], "c_fc": [(1, 4)]}
    return n_layer * sum(i * n_embd * o * n_embd for t in targets for i, o in shapes[t])


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (_one_proj, "two layers per block are called c_proj"),
        (_full, "r * (in + out)"),
        (lambda n_layer, C, r, t: lora_count(1, C, r, t), "multiply by n_layer"),
        (lambda n_layer, C, r, t: lora_count(n_layer, C, r, t) + 1, "expected"),
    ],
)
def test_8_4_rejects_mistakes(wrong, hint, capsys):
    ok, out = _verdict("8.4", wrong, capsys)
    assert not ok and hint in out


# --- 8.5 training memory ----------------------------------------------------------------------


def test_8_5_accepts(capsys):
    assert _verdict("8.5", lambda n, k: 4 * n + 4 * k + 8 * k, capsys)[0]


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda n, k: 4 * (n + 2 * k), "gradient"),
        (lambda n, k: 4 * (n + k + 2 * n), "only for parameters it updates"),
        (lambda n, k: 16 * n, "neither gradients nor optimizer state"),
        (lambda n, k: n + 3 * k, "count bytes"),
        (lambda n, k: 4.0 * (n + 3 * k), "as an int"),
    ],
)
def test_8_5_rejects_mistakes(wrong, hint, capsys):
    ok, out = _verdict("8.5", wrong, capsys)
    assert not ok and hint in out
