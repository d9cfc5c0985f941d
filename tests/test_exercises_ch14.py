"""Each chapter-14 checker accepts a right answer and rejects the usual wrong ones, naming them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptlab.align import dpo_loss, group_normalized_rewards, grpo_clip_loss, kl_k3
from gptlab.exercises import NotSolved, ch14, check, registered


def _hint(checker, answer) -> str | None:
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_chapter_14_exercises_are_registered():
    assert [k for k in registered() if k.startswith("14.")] == ["14.1", "14.2", "14.3", "14.4"]


def test_stubs_and_non_callables(capsys):
    def stub(*args):
        raise NotImplementedError

    for exercise_id in ("14.1", "14.2", "14.3", "14.4"):
        assert not check(exercise_id, stub)
        assert "NotImplementedError" in capsys.readouterr().out
        assert not check(exercise_id, 42)
        assert "pass your function itself" in capsys.readouterr().out


def _margin(pc, pr, rc, rr):
    return (pc - rc) - (pr - rr)


def test_dpo_losses():
    check_ = ch14.check_dpo_losses
    assert _hint(check_, lambda pc, pr, rc, rr, b: dpo_loss(pc, pr, rc, rr, b).losses) is None
    assert _hint(check_, lambda pc, pr, rc, rr, b: F.softplus(-b * _margin(pc, pr, rc, rr))) is None
    assert (
        _hint(check_, lambda pc, pr, rc, rr, b: -F.logsigmoid(b * _margin(pc, pr, rc, rr))) is None
    )

    def naive(pc, pr, rc, rr, b):
        return -torch.log(torch.sigmoid(b * _margin(pc, pr, rc, rr)))

    def log_one_plus_exp(pc, pr, rc, rr, b):
        return torch.log(1 + torch.exp(-b * _margin(pc, pr, rc, rr)))

    def clamped(pc, pr, rc, rr, b):
        return -torch.log(torch.sigmoid(b * _margin(pc, pr, rc, rr)).clamp(min=1e-12))

    for overflowing in (naive, log_one_plus_exp):
        hint = _hint(check_, overflowing)
        assert "overflows" in hint and "softplus" in hint and "logsigmoid" in hint
    assert "do not clamp" in _hint(check_, clamped)
    assert "swapped" in _hint(check_, lambda pc, pr, rc, rr, b: F.softplus(b * (pc - rc - pr + rr)))
    assert "reference terms" in _hint(check_, lambda pc, pr, rc, rr, b: F.softplus(-b * (pc - pr)))
    no_beta = _hint(check_, lambda pc, pr, rc, rr, b: F.softplus(-_margin(pc, pr, rc, rr)))
    assert "beta is missing" in no_beta
    outside = _hint(check_, lambda pc, pr, rc, rr, b: b * F.softplus(-_margin(pc, pr, rc, rr)))
    assert "inside the sigmoid" in outside
    mean = _hint(check_, lambda *a: dpo_loss(*a).loss)
    assert "one number" in mean and "mean" in mean
    assert "return a tensor" in _hint(check_, lambda *a: dpo_loss(*a).losses.tolist())


def _by_groups(rewards, group_size, std_fn, eps=1e-6):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(dim=1, keepdim=True)) / (std_fn(g) + eps)).reshape(-1)


def test_advantages():
    check_ = ch14.check_advantages
    assert _hint(check_, group_normalized_rewards) is None
    assert _hint(check_, lambda r, G: _by_groups(r, G, lambda g: g.std(1, keepdim=True))) is None

    def population(r, G):
        return _by_groups(r, G, lambda g: g.std(1, unbiased=False, keepdim=True))

    def whole_batch(r, G):
        return (r - r.mean()) / (r.std() + 1e-6)

    def strided(r, G):
        g = r.view(G, -1)
        return ((g - g.mean(dim=0)) / (g.std(dim=0) + 1e-6)).reshape(-1)

    def across_prompts(r, G):
        g = r.view(-1, G)
        return ((g - g.mean(dim=0)) / (g.std(dim=0) + 1e-6)).reshape(-1)

    def batch_mean(r, G):
        g = r.view(-1, G)
        return ((g - r.mean()) / (g.std(1, keepdim=True) + 1e-6)).reshape(-1)

    def no_eps(r, G):
        return _by_groups(r, G, lambda g: g.std(1, keepdim=True), eps=0.0)

    def guarded(r, G):
        g = r.view(-1, G)
        std = g.std(1, keepdim=True)
        centred = g - g.mean(1, keepdim=True)
        return torch.where(std > 0, centred / std, torch.zeros_like(std)).reshape(-1)

    assert "unbiased=False" in _hint(check_, population)
    assert "whole batch" in _hint(check_, whole_batch)
    assert "strided" in _hint(check_, strided)
    assert "along dim 1" in _hint(check_, across_prompts)
    assert "whole batch" in _hint(check_, batch_mean) and "group's own mean" in _hint(
        check_, batch_mean
    )
    assert "NaN" in _hint(check_, no_eps) and "std + 1e-6" in _hint(check_, no_eps)
    assert "add eps" in _hint(check_, guarded)
    dr_grpo = _hint(check_, lambda r, G: group_normalized_rewards(r, G, normalize_by_std=False))
    assert "Dr. GRPO" in dr_grpo and "normalised form" in dr_grpo
    assert "return a tensor" in _hint(check_, lambda r, G: group_normalized_rewards(r, G).tolist())


def _by_rule(ratio, advantage, eps):
    return ((advantage > 0) & (ratio < 1 + eps)) | ((advantage < 0) & (ratio > 1 - eps))


def test_gets_gradient():
    check_ = ch14.check_gets_gradient
    assert _hint(check_, _by_rule) is None

    def by_autograd(ratio, advantage, eps):
        rho = ratio.clone().requires_grad_(True)
        torch.minimum(rho * advantage, rho.clamp(1 - eps, 1 + eps) * advantage).sum().backward()
        return rho.grad != 0

    def not_clipped(ratio, advantage, eps):  # gptlab's clip flag, inverted: wrong where A == 0
        return ~grpo_clip_loss(advantage, ratio.log(), torch.zeros_like(ratio), eps)[1]

    assert _hint(check_, by_autograd) is None
    assert "advantage is 0" in _hint(check_, not_clipped)
    assert "advantage is 0" in _hint(check_, lambda r, a, e: _by_rule(r, a, e) | (a == 0))
    assert "both sides" in _hint(check_, lambda r, a, e: ((r - 1).abs() <= e) & (a != 0))
    assert "A > 0 rule" in _hint(check_, lambda r, a, e: (r < 1 + e) & (a != 0))
    assert "A < 0 rule" in _hint(check_, lambda r, a, e: r > 1 - e)
    assert "clipped ones" in _hint(check_, lambda r, a, e: ~_by_rule(r, a, e) & (a != 0))
    assert "bool tensor" in _hint(check_, lambda r, a, e: _by_rule(r, a, e).float())
    assert "bool tensor" in _hint(check_, lambda r, a, e: _by_rule(r, a, e).tolist())
    assert "shape" in _hint(check_, lambda r, a, e: _by_rule(r, a, e)[:, :1])


def test_kl_estimate():
    check_ = ch14.check_kl_estimate
    assert _hint(check_, kl_k3) is None

    def by_hand(logp_policy, logp_ref):
        r = logp_ref - logp_policy
        return r.exp() - r - 1

    assert _hint(check_, by_hand) is None
    k1 = _hint(check_, lambda lp, lr: lp - lr)
    assert "k1" in k1 and "unbiased but negative" in k1
    assert "swapped" in _hint(check_, lambda lp, lr: by_hand(lr, lp))
    assert "-1 is missing" in _hint(check_, lambda lp, lr: by_hand(lp, lr) + 1)
    assert "-r is missing" in _hint(check_, lambda lp, lr: (lr - lp).exp() - 1)
    assert "k2" in _hint(check_, lambda lp, lr: 0.5 * (lp - lr) ** 2)
    assert "negative" in _hint(check_, lambda lp, lr: by_hand(lp, lr) - 0.1)
    assert "biased" in _hint(check_, lambda lp, lr: 1.5 * by_hand(lp, lr))
    assert "differ from k3" in _hint(check_, lambda lp, lr: by_hand(lp, lr) * (1 + 1e-4))
    assert "one number" in _hint(check_, lambda lp, lr: by_hand(lp, lr).mean())
    assert "return a tensor" in _hint(check_, lambda lp, lr: by_hand(lp, lr).tolist())
