"""Checkers for the exercises of chapter 14, "Preference tuning and RL".

Each checker compares the reader's plain-PyTorch answer with ``gptlab.align`` (``dpo_loss``,
``group_normalized_rewards``, ``kl_k3``) or with autograd through PPO's clipped objective, and
recognises the usual mistakes so that the hint names the one the reader made.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gptlab.align import dpo_loss, group_normalized_rewards, kl_k3
from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_advantages",
    "check_dpo_losses",
    "check_gets_gradient",
    "check_kl_estimate",
]


def _tensor(out: Any, name: str, n: int) -> Tensor:
    """The reader's 1-D float result of length ``n`` as float64, or a hint about its form."""
    if not isinstance(out, Tensor):
        raise NotSolved(f"{name} should return a tensor, got {type(out).__name__}")
    if out.numel() == 1 and n > 1:
        raise NotSolved(
            f"{name} returned one number; return one value per element, shape ({n},), "
            "and leave the averaging (the mean) to the caller"
        )
    if tuple(out.shape) != (n,):
        raise NotSolved(f"{name} should return shape ({n},), got {tuple(out.shape)}")
    if not out.is_floating_point():
        raise NotSolved(f"{name} should return a float tensor, got {out.dtype}")
    return out.detach().double()


def _close(got: Tensor, want: Tensor, atol: float = 1e-9) -> bool:
    """Equal within ``atol``, relative to the size of the values for large ones."""
    return bool(((got - want).abs() <= atol * want.abs().clamp(min=1.0)).all())


# --- 14.1 the DPO loss ---------------------------------------------------------------------------


def _dpo_cases() -> list[tuple[tuple[Tensor, ...], float]]:
    """Ordinary pairs at two betas, then pairs whose ``beta * h`` is +-1000."""
    gen = torch.Generator().manual_seed(141)
    cases = []
    for beta in (0.1, 0.5):
        logps = tuple(
            -(5 + 30 * torch.rand(8, generator=gen, dtype=torch.float64)) for _ in range(4)
        )
        cases.append((logps, beta))
    pr = torch.tensor([-20.0, -35.0, -12.0, -50.0], dtype=torch.float64)
    rc, rr = pr - 7.0, pr - 3.0
    h = torch.tensor([2000.0, -2000.0, -2000.0, 2000.0], dtype=torch.float64)
    cases.append(((pr + rc - rr + h, pr, rc, rr), 0.5))  # beta * h = +-1000
    return cases


@exercise("14.1", "a DPO loss that never overflows")
def check_dpo_losses(answer: Any) -> str | None:
    """``dpo_losses(pc, pr, rc, rr, beta)`` -> ``(B,)``, equal to ``dpo_loss(...).losses``."""
    fn = _callable(answer, "dpo_losses", "14.1")
    for (pc, pr, rc, rr), beta in _dpo_cases():
        want = dpo_loss(pc, pr, rc, rr, beta).losses
        got = _tensor(
            fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta), "dpo_losses", len(pc)
        )
        if _close(got, want):
            continue
        h = (pc - rc) - (pr - rr)
        bh = beta * h
        extreme = bool(bh.abs().max() >= 1000)
        case = f"for beta={beta} and beta*h from {float(bh.min()):.4g} to {float(bh.max()):.4g}"
        if not bool(torch.isfinite(got).all()):
            return (
                f"{case} your loss holds inf or nan: it overflows. -log(sigmoid(x)) underflows "
                "sigmoid(-1000) to 0 before the log, and log(1 + exp(-x)) overflows exp(1000). "
                "Use F.softplus(-beta*h) or -F.logsigmoid(beta*h), exact at any size"
            )
        wrongs = {
            "swapped": (
                F.softplus(beta * h),
                "chosen and rejected are swapped: the loss must fall as the chosen response's "
                "log-ratio grows, h = (pc - rc) - (pr - rr)",
            ),
            "no reference": (
                F.softplus(-beta * (pc - pr)),
                "you dropped the reference terms: the implicit reward is "
                "beta * (log pi - log pi_ref), so h = (pc - rc) - (pr - rr)",
            ),
            "no beta": (F.softplus(-h), "beta is missing: scale the margin h by beta"),
            "beta outside": (
                beta * F.softplus(-h),
                "beta goes inside the sigmoid, -log sigmoid(beta*h), not in front of the loss",
            ),
        }
        for wrong, hint in wrongs.values():
            if _close(got, wrong):
                return f"{case}: {hint}"
        gap = float((got - want).abs().max())
        if extreme:
            return (
                f"{case} your losses are off by up to {gap:.3g}: a badly ordered pair's loss grows "
                "like |beta*h|, so do not clamp; F.softplus(-beta*h) is exact at any size"
            )
        return f"{case} your losses differ from -log sigmoid(beta*h) by up to {gap:.3g}"
    return None


# --- 14.2 group-normalised advantages -------------------------------------------------------------


def _advantage_mistakes(r: Tensor, G: int) -> dict[str, Tensor]:
    eps = 1e-6
    g = r.view(-1, G)  # (n_prompts, G): one prompt's responses per row
    centred = g - g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True)
    s = r.view(G, -1)  # (G, n_prompts): strided, the mistake
    t = r.view(-1, G)
    return {
        "population": (centred / (g.std(dim=1, unbiased=False, keepdim=True) + eps)).reshape(-1),
        "batch": (r - r.mean()) / (r.std() + eps),
        "batch mean": ((g - r.mean()) / (std + eps)).reshape(-1),
        "strided": ((s - s.mean(dim=0)) / (s.std(dim=0) + eps)).reshape(-1),
        "wrong dim": ((t - t.mean(dim=0)) / (t.std(dim=0) + eps)).reshape(-1),
        "no std": centred.reshape(-1),
        "guarded": torch.where(std > 0, centred / std, torch.zeros_like(std)).reshape(-1),
    }


_ADVANTAGE_HINTS = {
    "population": "that is the population std (unbiased=False); the group's sample std "
    "(torch.std's default, dividing by G - 1) is asked for",
    "batch": "you took the mean and std over the whole batch; each prompt's group is its own "
    "baseline: mean and std over the G responses of one prompt",
    "batch mean": "you subtracted the mean of the whole batch; subtract each group's own mean",
    "strided": "your groups are strided: rewards.view(group_size, -1) puts every n-th reward "
    "together, but one prompt's responses are consecutive: rewards.view(-1, group_size), one row "
    "per prompt",
    "wrong dim": "you normalised along dim 0 of view(-1, group_size), across prompts; a group is "
    "a row: mean and std along dim 1",
    "no std": "you do not divide by the std: that is Dr. GRPO's variant, but this exercise asks "
    "for the GRPO paper's normalised form, (r - mean) / (std + 1e-6)",
    "guarded": "add eps = 1e-6 to the std, (r - mean) / (std + 1e-6), rather than special-casing "
    "a zero std: the + eps is part of the formula",
}


@exercise("14.2", "group-normalised advantages")
def check_advantages(answer: Any) -> str | None:
    """``advantages(rewards, group_size)`` must equal ``group_normalized_rewards``."""
    fn = _callable(answer, "advantages", "14.2")
    gen = torch.Generator().manual_seed(142)
    binary = torch.tensor(  # 5 prompts x 4 responses: view(4, -1) is not view(-1, 4)
        [1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 0, 1, 1], dtype=torch.float64
    )
    graded = torch.randn(15, generator=gen, dtype=torch.float64)
    graded[6:9] = -0.5  # one group of three equal rewards
    for r, G in ((binary, 4), (graded, 3)):
        want = group_normalized_rewards(r, G)
        got = _tensor(fn(r.clone(), G), "advantages", len(r))
        flat = (r.view(-1, G) == r.view(-1, G)[:, :1]).all(dim=1).repeat_interleave(G)
        case = f"for rewards {[round(float(x), 3) for x in r]} in groups of {G}"
        if bool(got.isnan().any()):
            return (
                f"{case} you return NaN: a group whose rewards are all equal has std 0; divide by "
                "(std + 1e-6), which gives those responses advantage exactly 0"
            )
        if _close(got, want):
            if bool((got[flat] != 0).any()):
                return f"{case}: a group whose rewards are all equal must get advantage exactly 0"
            continue
        for name, wrong in _advantage_mistakes(r, G).items():
            if _close(got, wrong):
                return f"{case}: {_ADVANTAGE_HINTS[name]}"
        gap = float((got - want).abs().max())
        return f"{case} your advantages differ from (r - mean) / (std + 1e-6) by up to {gap:.3g}"
    return None


# --- 14.3 which tokens get a gradient -------------------------------------------------------------


def _autograd_gets_gradient(ratio: Tensor, advantage: Tensor, eps: float) -> Tensor:
    """Where ``min(rho A, clip(rho, 1-eps, 1+eps) A)`` has a nonzero derivative in ``rho``."""
    rho = ratio.detach().clone().requires_grad_(True)
    objective = torch.minimum(rho * advantage, rho.clamp(1 - eps, 1 + eps) * advantage)
    objective.sum().backward()
    return rho.grad != 0


@exercise("14.3", "which tokens get a gradient")
def check_gets_gradient(answer: Any) -> str | None:
    """``gets_gradient(ratio (B, T), advantage (B, 1), eps)`` -> bool ``(B, T)``, as autograd."""
    fn = _callable(answer, "gets_gradient", "14.3")
    gen = torch.Generator().manual_seed(143)
    advantage = torch.tensor([[1.3], [-0.7], [0.0], [0.2], [-2.0], [0.0]], dtype=torch.float64)
    for eps in (0.2, 0.1):
        ratio = 0.5 + torch.rand(6, 40, generator=gen, dtype=torch.float64)  # in [0.5, 1.5)
        for edge in (1 - eps, 1 + eps):  # stay clear of the kinks, where "gradient" is ambiguous
            ratio = torch.where((ratio - edge).abs() < 1e-5, ratio + 1e-4, ratio)
        want = _autograd_gets_gradient(ratio, advantage, eps)
        got = fn(ratio.clone(), advantage.clone(), eps)
        if not isinstance(got, Tensor) or got.dtype != torch.bool:
            kind = got.dtype if isinstance(got, Tensor) else type(got).__name__
            return (
                "gets_gradient should return a bool tensor (comparisons such as ratio < 1 + eps "
                f"give one), got {kind}"
            )
        if tuple(got.shape) != tuple(ratio.shape):
            shape = tuple(ratio.shape)
            return f"gets_gradient should return shape {shape}, like ratio, got {tuple(got.shape)}"
        if bool((got == want).all()):
            continue
        case = f"with eps={eps}"
        nz = (advantage != 0).expand_as(ratio)
        if bool((got[nz] == want[nz]).all()):
            return (
                f"{case}: a token whose advantage is 0 gets no gradient: rho * 0 is 0 for every rho"
            )
        wrongs = {
            "both sides": (
                (ratio - 1).abs() <= eps,
                "you clip on both sides whatever the sign: with A > 0 only rho > 1 + eps stops "
                "the gradient, with A < 0 only rho < 1 - eps (the min keeps the worse term)",
            ),
            "positive rule": (
                ratio < 1 + eps,
                "you used the A > 0 rule for every token; when A < 0 the gradient stops for "
                "rho < 1 - eps instead: the sign of the advantage decides which side clips",
            ),
            "negative rule": (
                ratio > 1 - eps,
                "you used the A < 0 rule for every token; when A > 0 the gradient stops for "
                "rho > 1 + eps instead: the sign of the advantage decides which side clips",
            ),
            "inverted": (
                ~want,
                "True must mark the tokens that DO get a gradient; yours are the clipped ones",
            ),
        }
        for wrong, hint in wrongs.values():
            if bool((got[nz] == wrong[nz]).all()):
                return f"{case}: {hint}"
        wrong_count = int((got != want).sum())
        return (
            f"{case} {wrong_count} of {want.numel()} tokens are wrong; work out the min's two "
            "cases, A > 0 and A < 0"
        )
    return None


# --- 14.4 a KL estimator -------------------------------------------------------------------------

_P = torch.tensor([0.30, 0.25, 0.15, 0.12, 0.10, 0.08], dtype=torch.float64)  # the policy
_Q = torch.tensor([0.10, 0.15, 0.20, 0.20, 0.15, 0.20], dtype=torch.float64)  # the reference


def _kl_mistakes(lp: Tensor, lr: Tensor) -> dict[str, tuple[Tensor, str]]:
    r = lr - lp
    return {
        "k1": (
            -r,
            "that is k1, logp_policy - logp_ref: unbiased but negative samples and high "
            "variance; the exercise asks for per-sample estimates >= 0",
        ),
        "swapped": (
            torch.exp(-r) + r - 1,
            "the direction is swapped: r = logp_policy - logp_ref estimates KL(ref || policy), "
            "and only when samples come from ref; with samples from the policy the mean will be "
            "wrong. Use r = logp_ref - logp_policy",
        ),
        "no -1": (torch.exp(r) - r, "the -1 is missing: exp(r) - r - 1 is 0 where r = 0"),
        "no -r": (
            torch.exp(r) - 1,
            "the -r is missing: exp(r) - 1 averages to 0 (E_p[q/p] = 1) and goes negative; "
            "-r is the term that carries the KL",
        ),
        "k2": (
            0.5 * r**2,
            "that is k2 = (logp_policy - logp_ref)^2 / 2: never negative but biased; k3 = "
            "exp(r) - r - 1 is both",
        ),
    }


@exercise("14.4", "a KL estimator from samples")
def check_kl_estimate(answer: Any) -> str | None:
    """``kl_estimate(logp_policy, logp_ref)`` per sample: ``kl_k3``, non-negative and unbiased."""
    fn = _callable(answer, "kl_estimate", "14.4")
    gen = torch.Generator().manual_seed(144)
    lp = torch.log(0.02 + 0.9 * torch.rand(64, generator=gen, dtype=torch.float64))
    lr = torch.log(0.02 + 0.9 * torch.rand(64, generator=gen, dtype=torch.float64))
    got = _tensor(fn(lp.clone(), lr.clone()), "kl_estimate", 64)
    n = 200_000
    idx = torch.multinomial(_P, n, replacement=True, generator=gen)  # tokens sampled from p
    samples = _tensor(fn(_P.log()[idx], _Q.log()[idx]), "kl_estimate", n)
    exact = float((_P * (_P / _Q).log()).sum())
    mean = float(samples.mean())
    stat = f"over {n:,} samples from p your estimates average {mean:.4f}; KL(p || q) = {exact:.4f}"
    for wrong, hint in _kl_mistakes(lp, lr).values():
        if _close(got, wrong):
            return f"{hint} ({stat})"
    if bool((samples < -1e-12).any()) or bool((got < -1e-12).any()):
        return f"some of your per-sample estimates are negative; each must be >= 0 ({stat})"
    if not abs(mean - exact) <= 0.01:
        return f"{stat}: your estimator is biased"
    if not _close(got, kl_k3(lp, lr)):
        return "your estimates differ from k3 = exp(r) - r - 1 with r = logp_ref - logp_policy"
    return None
