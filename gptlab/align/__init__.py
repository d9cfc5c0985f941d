"""Aligning a language model with preferences and rewards: what turned GPT into an assistant.

One concept per module:

* :mod:`~gptlab.align.logprobs` -- log pi(response | prompt) for a batch, and the masked
  tensor helpers the losses use;
* :mod:`~gptlab.align.reference` -- the frozen reference: a copy, or the LoRA-disabled policy;
* :mod:`~gptlab.align.dpo` -- Direct Preference Optimization (Rafailov et al., 2023);
* :mod:`~gptlab.align.grpo` -- Group Relative Policy Optimization (Shao et al., 2024) and the
  Dr. GRPO variants;
* :mod:`~gptlab.align.rewards` -- verifiable rewards (answers, formats, length) and three that
  can be hacked;
* :mod:`~gptlab.align.tasks` -- the tasks chapter 14 trains on (numbers -> Chinese numerals
  for GRPO, instruction constraints for DPO) and :data:`ALIGN_DIR`, where the recipes' stored
  results live.
"""

from __future__ import annotations

import pathlib

from gptlab.align.dpo import DPOHistory, DPOLoss, PreferencePair, dpo_loss, train_dpo
from gptlab.align.grpo import (
    AVERAGING,
    GRPOHistory,
    KLEstimate,
    group_normalized_rewards,
    grpo_clip_loss,
    grpo_loss,
    kl_k3,
    sample_group,
    sampled_kl,
    train_grpo,
)
from gptlab.align.logprobs import (
    SequenceLogprobs,
    masked_mean,
    masked_normalize,
    sequence_logprobs,
    token_entropy,
    token_logprobs,
)
from gptlab.align.reference import frozen_copy, lora_disabled, reference_logprobs
from gptlab.align.rewards import (
    INSTRUCTIONS,
    char_overlap_reward,
    combine_rewards,
    exact_answer_reward,
    keyword_reward,
    length_bonus_reward,
    length_reward,
    lowercase_reward,
    numeric_answer_reward,
    one_word_reward,
    question_reward,
    reward_from_text,
)

ALIGN_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets" / "align"

__all__ = [
    "ALIGN_DIR",
    "AVERAGING",
    "INSTRUCTIONS",
    "DPOHistory",
    "DPOLoss",
    "GRPOHistory",
    "KLEstimate",
    "PreferencePair",
    "SequenceLogprobs",
    "char_overlap_reward",
    "combine_rewards",
    "dpo_loss",
    "exact_answer_reward",
    "frozen_copy",
    "group_normalized_rewards",
    "grpo_clip_loss",
    "grpo_loss",
    "keyword_reward",
    "kl_k3",
    "length_bonus_reward",
    "length_reward",
    "lora_disabled",
    "lowercase_reward",
    "masked_mean",
    "masked_normalize",
    "numeric_answer_reward",
    "one_word_reward",
    "question_reward",
    "reference_logprobs",
    "reward_from_text",
    "sample_group",
    "sampled_kl",
    "sequence_logprobs",
    "token_entropy",
    "token_logprobs",
    "train_dpo",
    "train_grpo",
]
