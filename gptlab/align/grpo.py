r"""Group Relative Policy Optimization (Shao et al., 2024): RL from rewards a program can check.

For each prompt $q$ the policy samples a *group* of $G$ responses $o_1..o_G$; a verifier scores
each ($r_i$). Instead of learning a value function (PPO's critic), GRPO uses the group as its
own baseline, the **group-normalised advantage**

.. math::

    A_i = \frac{r_i - \operatorname{mean}(r_1..r_G)}{\operatorname{std}(r_1..r_G) + \epsilon},

given to every token of response $i$. The policy then maximises PPO's clipped objective per
token, with the ratio $\rho_t = \pi(o_t\mid\cdot) / \pi_\text{old}(o_t\mid\cdot)$ to the policy
that sampled the group,

.. math::

    \min\big(\rho_t A_i,\ \operatorname{clip}(\rho_t, 1-\varepsilon, 1+\varepsilon) A_i\big)
    - \beta\, \mathbb{D}_\text{KL}[\pi \,\|\, \pi_\text{ref}],

so one batch of samples cannot push the policy far (a ratio outside ``1 +- eps`` in the
direction the advantage wants earns nothing more). The KL term keeps it near the reference.

Two choices change what "average" means (Liu et al., 2025, "Dr. GRPO"):

* ``averaging="sequence"`` (the GRPO paper): mean over each response's tokens, then over
  responses, so a token of a short response weighs more than one of a long response;
  ``"token"`` (DAPO): one mean over all tokens of the batch; ``"constant"`` (Dr. GRPO): each
  response's token sum divided by a fixed budget (``max_new_tokens``);
* ``normalize_by_std=False`` (Dr. GRPO) drops the division by the group's std, which otherwise
  up-weights prompts that are almost always right or almost always wrong.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from tqdm import tqdm

from gptlab.align._checks import as_ids, check_float, check_int, check_language_model, model_device
from gptlab.align._loop import OptimSettings, make_optimizer, maybe_save, optimizer_step, set_lr
from gptlab.align.logprobs import masked_mean, masked_normalize, sequence_logprobs
from gptlab.align.reference import reference_logprobs, resolve_reference
from gptlab.sampling import generate

__all__ = [
    "AVERAGING",
    "GRPOHistory",
    "KLEstimate",
    "RewardFn",
    "group_normalized_rewards",
    "grpo_clip_loss",
    "grpo_loss",
    "kl_k3",
    "sample_group",
    "sampled_kl",
    "train_grpo",
]

AVERAGING = ("sequence", "token", "constant")
RewardFn = Callable[[int, list[int]], float]  # (prompt index, response ids without eos) -> reward


def group_normalized_rewards(
    rewards: torch.Tensor | Sequence[float],
    group_size: int,
    *,
    normalize_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages ``(r - group mean) / (group std + eps)`` for rewards laid out group by group.

    ``rewards`` ``(n_prompts * group_size,)``: the responses of one prompt are consecutive (as
    ``generate(..., num_return_sequences=G)`` returns them). The std is the sample standard
    deviation (Bessel's correction, as ``torch.std``). ``normalize_by_std=False`` returns
    ``r - mean`` (Dr. GRPO). A group whose rewards are all equal gets advantage 0: it teaches
    nothing.
    """
    if not isinstance(rewards, torch.Tensor):
        if isinstance(rewards, (str, bytes)) or not isinstance(rewards, Sequence):
            raise TypeError(f"rewards must be a 1-D tensor or a list of numbers, got {rewards!r}")
        rewards = torch.tensor([float(r) for r in rewards], dtype=torch.float64)
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a 1-D float tensor, got shape {tuple(rewards.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards hold NaN or infinite values; a reward must be a finite number")
    check_int("group_size", group_size, 2, "; GRPO compares responses within a group")
    if rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(
            f"got {rewards.numel()} rewards, not a positive multiple of group_size={group_size}"
        )
    if not isinstance(normalize_by_std, bool):
        raise TypeError(f"normalize_by_std must be True or False, got {normalize_by_std!r}")
    check_float("eps", eps, low=0, low_open=True)
    groups = rewards.view(-1, group_size)  # (n_prompts, G)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if normalize_by_std:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def _check_same_shape(**tensors: Any) -> None:
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {type(value).__name__}")
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"these tensors must have one shape (batch, tokens), got {shapes}")


def kl_k3(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    r"""Per-token k3 estimate of KL(policy || reference): ``exp(ref - pi) - (ref - pi) - 1``.

    With tokens sampled from the policy, the mean of this is an unbiased estimate of
    $\mathbb{D}_\text{KL}[\pi\,\|\,\pi_\text{ref}]$ (Schulman, 2020; GRPO's equation 4), and
    unlike ``pi - ref`` it is never negative: ``e^x - x - 1 >= 0`` with equality at ``x = 0``.
    """
    _check_same_shape(policy_logprobs=policy_logprobs, reference_logprobs=reference_logprobs)
    diff = reference_logprobs - policy_logprobs
    return torch.exp(diff) - diff - 1


def _advantage_column(advantages: Any, like: torch.Tensor) -> torch.Tensor:
    """Advantages ``(B,)`` or ``(B, 1)`` as a ``(B, 1)`` column that broadcasts over tokens."""
    if not isinstance(advantages, torch.Tensor) or not advantages.is_floating_point():
        raise TypeError("advantages must be a float tensor, one value per response")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    if advantages.dim() != 2 or advantages.shape != (like.shape[0], 1):
        raise ValueError(
            f"advantages must have shape ({like.shape[0]},) or ({like.shape[0]}, 1) for "
            f"log-probabilities of shape {tuple(like.shape)}, got {tuple(advantages.shape)}"
        )
    return advantages.to(like.dtype)


def grpo_clip_loss(
    advantages: torch.Tensor,
    policy_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss ``-min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)`` and where it clipped.

    ``policy_logprobs`` / ``old_logprobs`` ``(B, T)``, ``advantages`` ``(B,)`` or ``(B, 1)``.
    Returns the loss ``(B, T)`` (to be averaged with a mask) and a bool ``(B, T)`` that is True
    where the clipped term was the smaller one, i.e. where the ratio has moved past the clip in
    the direction the advantage wants and the token gets no gradient. (A token with advantage 0
    gets no gradient either, and is not marked.)
    """
    _check_same_shape(policy_logprobs=policy_logprobs, old_logprobs=old_logprobs)
    if policy_logprobs.dim() != 2:
        raise ValueError(
            f"log-probabilities must be (batch, tokens), got {tuple(policy_logprobs.shape)}"
        )
    check_float("clip_eps", clip_eps, low=0, low_open=True, high=1, hint="; PPO uses 0.2")
    adv = _advantage_column(advantages, policy_logprobs)
    ratio = torch.exp(policy_logprobs - old_logprobs)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def grpo_loss(
    policy_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    reference_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    averaging: str = "sequence",
    normalize_constant: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of a batch (a scalar to minimise) and statistics about it.

    Per token: the clipped loss of :func:`grpo_clip_loss` plus ``kl_coef`` times the k3 KL to
    the reference (:func:`kl_k3`; needs ``reference_logprobs``). ``mask`` ``(B, T)`` marks the
    response tokens; ``averaging`` is ``"sequence"``, ``"token"`` or ``"constant"`` (then
    ``normalize_constant``, e.g. ``max_new_tokens``, is the divisor; see the module docstring).
    Statistics: ``clip_fraction`` (share of tokens clipped), ``ratio`` (mean rho), ``kl`` (mean
    k3 per token, when a reference is given).
    """
    per_token, was_clipped = grpo_clip_loss(advantages, policy_logprobs, old_logprobs, clip_eps)
    check_float("kl_coef", kl_coef, low=0, hint="; GRPO uses 0.04, 0 turns the penalty off")
    if averaging not in AVERAGING:
        raise ValueError(f"averaging must be one of {AVERAGING}, got {averaging!r}")
    if (averaging == "constant") != (normalize_constant is not None):
        raise ValueError(
            "normalize_constant is needed with averaging='constant' (pass e.g. max_new_tokens) "
            "and only then"
        )
    stats: dict[str, float] = {}
    if reference_logprobs is not None:
        kl = kl_k3(policy_logprobs, reference_logprobs)
        stats["kl"] = float(masked_mean(kl.detach(), mask))
        per_token = per_token + kl_coef * kl
    elif kl_coef > 0:
        raise ValueError("kl_coef > 0 needs reference_logprobs to measure the KL against")
    if averaging == "sequence":
        loss = masked_mean(per_token, mask, dim=-1).mean()
    elif averaging == "token":
        loss = masked_mean(per_token, mask)
    else:
        loss = masked_normalize(per_token, mask, normalize_constant, dim=-1).mean()
    mask = mask.bool()
    stats["clip_fraction"] = float(masked_mean(was_clipped.to(per_token.dtype), mask))
    ratio = torch.exp(policy_logprobs.detach() - old_logprobs)
    stats["ratio"] = float(masked_mean(ratio, mask))
    return loss, stats


@torch.no_grad()
def sample_group(
    model: nn.Module,
    prompt_ids: Sequence[int],
    group_size: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """``group_size`` sampled responses to one prompt, each cut after its first ``eos_token_id``.

    A response keeps its end token (the policy must learn to stop, so that token is trained
    too); one that never ends has ``max_new_tokens`` tokens. Plain temperature sampling (no
    top-k/top-p): the importance ratios assume the samples came from the policy itself.
    """
    check_language_model(model)
    prompt = as_ids(prompt_ids, "prompt_ids", model.config.vocab_size)
    idx = torch.tensor([prompt], dtype=torch.long, device=model_device(model))
    out = generate(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        eos_token_id=eos_token_id,
        num_return_sequences=group_size,
        generator=generator,
    )
    responses = []
    for row in out[:, len(prompt) :].tolist():
        if eos_token_id is not None and eos_token_id in row:
            row = row[: row.index(eos_token_id) + 1]
        responses.append(row)
    return responses


class KLEstimate(NamedTuple):
    """A Monte Carlo estimate of a KL divergence in nats: mean, its standard error, samples."""

    mean: float
    stderr: float
    n: int


@torch.no_grad()
def sampled_kl(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    reference: nn.Module | str,
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> KLEstimate:
    r"""How far the policy has moved: the sequence-level KL(policy || reference), sampled.

    For each prompt, ``samples_per_prompt`` responses are sampled from ``model`` (the policy);
    each gives ``log pi(y|x) - log pi_ref(y|x)``, whose mean over samples from the policy is an
    unbiased estimate of $\mathbb{D}_\text{KL}[\pi\,\|\,\pi_\text{ref}]$ per response (the
    k1 estimator: single samples may be negative, the mean is not biased). ``reference`` is a
    model or ``"lora"`` (the policy with its LoRA adapters switched off). The model runs in
    eval mode; its mode is restored.
    """
    check_language_model(model)
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError("prompts must be a non-empty list of token-id lists, one per prompt")
    if not (reference == "lora" or isinstance(reference, nn.Module)):
        raise ValueError(
            f"reference must be a model or 'lora' (the LoRA-disabled policy), got {reference!r}; "
            "a copy made now would equal the policy and give KL 0"
        )
    if reference is model:
        raise ValueError("reference is the policy itself; pass the model before training")
    check_int("samples_per_prompt", samples_per_prompt, 1)
    check_int("seed", seed, 0)
    ref = resolve_reference(model, reference)
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    was_training = model.training
    model.eval()
    diffs: list[float] = []
    try:
        for i, prompt in enumerate(prompts):
            ids = as_ids(prompt, f"prompts[{i}]", model.config.vocab_size)
            group = sample_group(
                model, ids, samples_per_prompt, max_new_tokens, temperature=temperature,
                eos_token_id=eos_token_id, generator=generator,
            )  # fmt: skip
            policy = sequence_logprobs(model, [ids] * len(group), group)
            refs = reference_logprobs(model, ref, [ids] * len(group), group)
            diffs += (policy.total - refs.total).double().tolist()
    finally:
        model.train(was_training)
    values = torch.tensor(diffs, dtype=torch.float64)
    stderr = float(values.std() / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return KLEstimate(float(values.mean()), stderr, len(diffs))


@dataclass
class GRPOHistory:
    """One entry per step (one sampled batch) of :func:`train_grpo`.

    ``mean_reward``: mean reward of the step's samples (before the update); ``signal_fraction``:
    share of groups whose rewards are not all equal (only those give a gradient); ``kl``: mean per-token k3 KL of the sampling policy (before
    the step's updates) to the reference, on the samples; ``clip_fraction``: share of tokens clipped in the last inner update;
    ``response_length``: mean tokens per response.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    mean_reward: list[float] = field(default_factory=list)
    signal_fraction: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    clip_fraction: list[float] = field(default_factory=list)
    response_length: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _prompt_batches(n: int, per_step: int, seed: int) -> Iterator[list[int]]:
    """Prompt indices, ``per_step`` at a time, in a new seeded order on every pass."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        while len(order) < per_step:
            shuffled = list(range(n))
            rng.shuffle(shuffled)
            order += shuffled
        yield order[:per_step]
        order = order[per_step:]


def _score(reward_fn: RewardFn, index: int, response: list[int], eos: int | None) -> float:
    content = response[:-1] if eos is not None and response and response[-1] == eos else response
    value = reward_fn(index, content)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(
            f"reward_fn(prompt_index, response_ids) must return a finite number, got {value!r} "
            f"for prompt {index}"
        )
    return float(value)


def train_grpo(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    reward_fn: RewardFn,
    *,
    steps: int,
    group_size: int = 8,
    prompts_per_step: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    inner_steps: int = 1,
    normalize_by_std: bool = True,
    averaging: str = "sequence",
    reference: nn.Module | str = "auto",
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
) -> GRPOHistory:
    """Train ``model`` with GRPO for ``steps`` sampled batches; return a :class:`GRPOHistory`.

    Each step draws ``prompts_per_step`` prompts (token-id lists; seeded order), samples
    ``group_size`` responses to each (:func:`sample_group`), scores them with
    ``reward_fn(prompt_index, response_ids)`` (the ids without the end token; see
    :func:`gptlab.align.rewards.reward_from_text` to score decoded text), and takes
    ``inner_steps`` AdamW steps on :func:`grpo_loss` against the sampling policy's
    log-probabilities. The model runs in eval mode (dropout off: the ratios compare one
    function) and its mode is restored at the end. ``reference`` as in
    :func:`gptlab.align.dpo.train_dpo`; the KL is measured every step and penalised with
    ``kl_coef``. Sampling uses a ``torch.Generator`` seeded with ``seed``.
    """
    check_language_model(model)
    settings = OptimSettings.check(
        steps=steps, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
        grad_clip=grad_clip, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    vocab, block = model.config.vocab_size, model.config.block_size
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise TypeError("prompts must be a non-empty list of token-id lists, one per prompt")
    prompt_ids = [as_ids(p, f"prompts[{i}]", vocab) for i, p in enumerate(prompts)]
    if not callable(reward_fn):
        raise TypeError("reward_fn must be callable as reward_fn(prompt_index, response_ids)")
    check_int("group_size", group_size, 2, "; GRPO compares responses within a group")
    check_int("prompts_per_step", prompts_per_step, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("inner_steps", inner_steps, 1)
    check_int("seed", seed, 0)
    check_float("temperature", temperature, low=0, low_open=True, hint="; sampling needs > 0")
    check_float("clip_eps", clip_eps, low=0, low_open=True, high=1, hint="; PPO uses 0.2")
    check_float("kl_coef", kl_coef, low=0, hint="; GRPO uses 0.04, 0 turns the penalty off")
    if eos_token_id is not None:
        as_ids([eos_token_id], "eos_token_id", vocab)
    if averaging not in AVERAGING:
        raise ValueError(f"averaging must be one of {AVERAGING}, got {averaging!r}")
    if not isinstance(normalize_by_std, bool) or not isinstance(progress, bool):
        raise TypeError("normalize_by_std and progress must be True or False")
    for i, p in enumerate(prompt_ids):
        if not p or len(p) + max_new_tokens - 1 > block:
            raise ValueError(
                f"prompts[{i}] has {len(p)} tokens; it must be non-empty and leave room for "
                f"max_new_tokens={max_new_tokens} within block_size={block} "
                f"(len(prompt) + max_new_tokens <= {block + 1})"
            )
    ref = resolve_reference(model, reference)
    optimizer = make_optimizer(model, settings)
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    batches = _prompt_batches(len(prompt_ids), prompts_per_step, seed)
    constant = float(max_new_tokens) if averaging == "constant" else None
    history = GRPOHistory()
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        for step in tqdm(range(1, settings.steps + 1), desc="GRPO", disable=not progress):
            lr_now = set_lr(optimizer, settings, step - 1)
            chosen = next(batches)
            rows_prompt, rows_response, rewards = [], [], []
            for index in chosen:
                group = sample_group(
                    model, prompt_ids[index], group_size, max_new_tokens,
                    temperature=temperature, eos_token_id=eos_token_id, generator=generator,
                )  # fmt: skip
                rows_prompt += [prompt_ids[index]] * group_size
                rows_response += group
                rewards += [_score(reward_fn, index, r, eos_token_id) for r in group]
            reward_tensor = torch.tensor(rewards, dtype=torch.float64)
            advantages = group_normalized_rewards(
                reward_tensor, group_size, normalize_by_std=normalize_by_std
            ).to(model_device(model))
            refs = reference_logprobs(model, ref, rows_prompt, rows_response)
            old, sampled_kl = None, None
            for _ in range(inner_steps):
                policy = sequence_logprobs(model, rows_prompt, rows_response)
                old = policy.tokens.detach() if old is None else old  # the sampling policy
                loss, stats = grpo_loss(
                    policy.tokens, old, advantages.to(policy.tokens.dtype), policy.mask,
                    clip_eps=clip_eps, reference_logprobs=refs.tokens, kl_coef=kl_coef,
                    averaging=averaging, normalize_constant=constant,
                )  # fmt: skip
                sampled_kl = stats["kl"] if sampled_kl is None else sampled_kl
                norm = optimizer_step(model, optimizer, loss, settings.grad_clip)
            groups = reward_tensor.view(-1, group_size)
            history.steps.append(step)
            history.loss.append(float(loss.detach()))
            history.mean_reward.append(float(reward_tensor.mean()))
            history.signal_fraction.append(
                float((groups.max(dim=1).values > groups.min(dim=1).values).double().mean())
            )
            history.kl.append(sampled_kl)
            history.clip_fraction.append(stats["clip_fraction"])
            history.response_length.append(sum(map(len, rows_response)) / len(rows_response))
            history.lr.append(lr_now)
            history.grad_norm.append(norm)
            history.seconds = time.perf_counter() - started
            extra = {"algorithm": "grpo", "history": history.to_dict()}
            maybe_save(settings, model, optimizer, step, extra, tokenizer)
    finally:
        model.train(was_training)
    return history
