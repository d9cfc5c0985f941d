r"""Direct Preference Optimization (Rafailov et al., 2023): learn from "this answer, not that one".

Data are triples (prompt $x$, chosen $y_c$, rejected $y_r$). RLHF would fit a reward model to
them and then run RL against it; DPO shows that the optimum of that KL-regularised RL problem
defines an *implicit reward* $r(x, y) = \beta\,[\log\pi(y\mid x) - \log\pi_\text{ref}(y\mid x)]$,
so the preference likelihood (Bradley-Terry) can be maximised over the policy directly:

.. math::

    \mathcal{L}_\text{DPO} = -\log\sigma\Big(\beta\big[(\log\pi(y_c) - \log\pi_\text{ref}(y_c))
        - (\log\pi(y_r) - \log\pi_\text{ref}(y_r))\big]\Big).

Its gradient is ``-beta * sigmoid(-beta * h)`` times the gradient of
``h = (log pi(y_c) - log pi(y_r))``: each pair pushes the chosen response up and the rejected one
down, weighted by how wrongly the implicit reward still orders them. ``beta`` sets how far the
policy may move from the reference: as ``beta -> 0`` the loss tends to ``log 2`` and the gradient
shrinks in proportion to ``beta``; for large ``beta`` the loss tends to the hinge
``beta * max(0, -h)``, so pairs already ordered correctly stop contributing.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from gptlab.align._checks import as_ids, check_float, check_int, check_language_model
from gptlab.align._loop import OptimSettings, make_optimizer, maybe_save, optimizer_step, set_lr
from gptlab.align.grpo import kl_k3
from gptlab.align.logprobs import masked_mean, sequence_logprobs
from gptlab.align.reference import reference_logprobs, resolve_reference

__all__ = ["DPOHistory", "DPOLoss", "PreferencePair", "dpo_loss", "train_dpo"]


@dataclass(frozen=True)
class PreferencePair:
    """One preference: after ``prompt_ids``, ``chosen_ids`` is better than ``rejected_ids``."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass(frozen=True)
class DPOLoss:
    """Per-pair DPO quantities (each ``(B,)``) and their batch summaries.

    ``chosen_rewards`` / ``rejected_rewards`` are the implicit rewards ``beta * (log pi - log
    pi_ref)``; the margin is their difference and the accuracy the share of pairs it orders
    correctly (margin > 0).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        return float((self.margins > 0).float().mean())


def _check_logprob_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dim() != 1:
        raise TypeError(
            f"{name} must be a 1-D float tensor (one summed log-probability per pair), got "
            f"{type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else "")
        )
    return value


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
) -> DPOLoss:
    """The DPO loss of each pair from the four summed log-probabilities (all ``(B,)``).

    ``loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, computed as
    ``softplus(-beta * h)``, which stays exact for large ``|beta * h|``.
    """
    tensors = {
        "policy_chosen": policy_chosen,
        "policy_rejected": policy_rejected,
        "reference_chosen": reference_chosen,
        "reference_rejected": reference_rejected,
    }
    for name, value in tensors.items():
        _check_logprob_tensor(name, value)
    if len({tuple(t.shape) for t in tensors.values()}) != 1:
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        raise ValueError(f"the four log-probability tensors must have one shape, got {shapes}")
    check_float("beta", beta, low=0, low_open=True, hint="; the DPO paper uses 0.1 to 0.5")
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    losses = F.softplus(-beta * (chosen_logratio - rejected_logratio))
    return DPOLoss(
        losses=losses,
        chosen_rewards=beta * chosen_logratio.detach(),
        rejected_rewards=beta * rejected_logratio.detach(),
    )


@dataclass
class DPOHistory:
    """One entry per optimizer step of :func:`train_dpo`.

    ``loss``: mean DPO loss of the batch; ``reward_margin`` / ``reward_accuracy``: mean implicit
    reward margin and share of pairs ordered correctly; ``chosen_reward`` / ``rejected_reward``:
    mean implicit rewards; ``kl``: mean per-token k3 estimate of the *reverse* KL(reference ||
    policy) on the batch's chosen and rejected tokens. Those tokens were sampled from the
    reference when the pairs are the reference model's own samples (as in ``recipes/dpo.py``),
    which is what the estimator needs; KL(policy || reference) would need samples from the
    policy (see :func:`gptlab.align.sampled_kl`), and the k3 formula for that direction, fed
    reference samples, explodes as DPO pushes rejected tokens toward probability 0.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    reward_margin: list[float] = field(default_factory=list)
    reward_accuracy: list[float] = field(default_factory=list)
    chosen_reward: list[float] = field(default_factory=list)
    rejected_reward: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_pairs(pairs: Any, vocab_size: int, block_size: int) -> list[PreferencePair]:
    """Every pair as lists of valid ids that fit the model; checked before the first step."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not pairs:
        raise TypeError("pairs must be a non-empty list of PreferencePair")
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, PreferencePair):
            raise TypeError(
                f"pairs[{i}] must be a PreferencePair(prompt_ids, chosen_ids, rejected_ids), got "
                f"{type(pair).__name__}"
            )
        prompt = as_ids(pair.prompt_ids, f"pairs[{i}].prompt_ids", vocab_size)
        chosen = as_ids(pair.chosen_ids, f"pairs[{i}].chosen_ids", vocab_size)
        rejected = as_ids(pair.rejected_ids, f"pairs[{i}].rejected_ids", vocab_size)
        if not prompt or not chosen or not rejected:
            raise ValueError(f"pairs[{i}] has an empty prompt or response; each needs >= 1 token")
        if chosen == rejected:
            raise ValueError(
                f"pairs[{i}] has the same chosen and rejected response; it carries no preference"
            )
        if len(prompt) + max(len(chosen), len(rejected)) - 1 > block_size:
            raise ValueError(
                f"pairs[{i}] is too long: prompt plus the longer response span "
                f"{len(prompt) + max(len(chosen), len(rejected))} tokens, at most "
                f"block_size + 1 = {block_size + 1} fit; shorten it"
            )
        out.append(PreferencePair(prompt, chosen, rejected))
    return out


def _batches(n: int, batch_size: int, seed: int) -> Any:
    """Index batches forever: a new seeded shuffle for every pass over the pairs."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for b in range(max(1, n // batch_size)):  # full batches only (all pairs if fewer)
            yield order[b * batch_size : (b + 1) * batch_size]


def train_dpo(
    model: nn.Module,
    pairs: Sequence[PreferencePair],
    *,
    steps: int,
    beta: float = 0.1,
    reference: nn.Module | str = "auto",
    batch_size: int = 8,
    lr: float = 1e-5,
    min_lr: float | None = None,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
    checkpoint_dir: Any = None,
    checkpoint_every: int = 0,
    tokenizer: Any = None,
    progress: bool = True,
) -> DPOHistory:
    """Train ``model`` with DPO on ``pairs`` for ``steps`` AdamW steps; return a :class:`DPOHistory`.

    ``reference``: ``"auto"`` (the LoRA-disabled policy if ``model`` has LoRA adapters, else a
    frozen copy made now), ``"lora"``, ``"copy"``, or a model of your own. Only parameters with
    ``requires_grad`` train. The model runs in eval mode (dropout off) so that policy and
    reference compute the same function at step 0; its mode is restored at the end. The batch
    order is seeded; the learning rate warms up for ``warmup_steps`` then follows a cosine to
    ``min_lr`` (default: ``lr``, constant). With ``checkpoint_dir`` the model is saved with
    :func:`gptlab.checkpoint.save_checkpoint` every ``checkpoint_every`` steps and at the end
    (the history goes into ``meta.json``'s ``extra``).
    """
    check_language_model(model)
    settings = OptimSettings.check(
        steps=steps, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
        grad_clip=grad_clip, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    data = _check_pairs(pairs, model.config.vocab_size, model.config.block_size)
    check_float("beta", beta, low=0, low_open=True, hint="; the DPO paper uses 0.1 to 0.5")
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    ref = resolve_reference(model, reference)
    optimizer = make_optimizer(model, settings)
    history = DPOHistory()
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    batches = _batches(len(data), batch_size, seed)
    try:
        for step in tqdm(range(1, settings.steps + 1), desc="DPO", disable=not progress):
            lr_now = set_lr(optimizer, settings, step - 1)
            batch = [data[i] for i in next(batches)]
            prompts = [p.prompt_ids for p in batch] * 2
            responses = [p.chosen_ids for p in batch] + [p.rejected_ids for p in batch]
            policy = sequence_logprobs(model, prompts, responses)  # chosen rows, then rejected
            refs = reference_logprobs(model, ref, prompts, responses)
            n = len(batch)
            out = dpo_loss(policy.total[:n], policy.total[n:], refs.total[:n], refs.total[n:], beta)
            norm = optimizer_step(model, optimizer, out.loss, settings.grad_clip)
            kl = masked_mean(kl_k3(refs.tokens, policy.tokens.detach()), policy.mask)  # KL(ref||pi)
            history.steps.append(step)
            history.loss.append(float(out.loss.detach()))
            history.reward_margin.append(float(out.margins.mean()))
            history.reward_accuracy.append(out.accuracy)
            history.chosen_reward.append(float(out.chosen_rewards.mean()))
            history.rejected_reward.append(float(out.rejected_rewards.mean()))
            history.kl.append(float(kl))
            history.lr.append(lr_now)
            history.grad_norm.append(norm)
            history.seconds = time.perf_counter() - started
            extra = {"algorithm": "dpo", "beta": beta, "history": history.to_dict()}
            maybe_save(settings, model, optimizer, step, extra, tokenizer)
    finally:
        model.train(was_training)
    return history
