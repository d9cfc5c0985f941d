"""Tools to look inside a trained GPT and to measure what it has learned (chapter 10).

Read top to bottom: attention maps of every head (:func:`attention_maps`), the residual stream
after every block (:func:`residual_stream`) and what it would predict if the model stopped
there (:func:`logit_lens`, :func:`token_rank`), switching attention heads off
(:func:`ablate_heads`, :func:`head_ablation_losses`), next-word probabilities for bias probes
(:func:`next_word_probs`), and verbatim recall of a text for memorisation tests
(:func:`common_prefix_length`, :func:`verbatim_recall`), and planted "canaries" for
duplication experiments (:func:`insert_canaries`, :func:`sequence_logprobs`, :func:`exposure`).

Everything works through PyTorch hooks on the standard :class:`gptlab.model.GPT`, so the model
itself stays untouched: hooks are removed when a function returns, even after an error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gptlab.model import GPT
from gptlab.tokenizers import encode_plain

__all__ = [
    "RecallResult",
    "ablate_heads",
    "attention_maps",
    "common_prefix_length",
    "exposure",
    "head_ablation_losses",
    "insert_canaries",
    "logit_lens",
    "next_word_probs",
    "residual_stream",
    "sequence_logprobs",
    "token_rank",
    "verbatim_recall",
]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_model(model: Any) -> GPT:
    if not isinstance(model, GPT):
        raise TypeError(
            f"model must be a gptlab GPT, got {type(model).__name__}; load one with "
            "gptlab.load_reference_model() or build GPT(GPTConfig(...))"
        )
    return model


def _check_idx(model: GPT, idx: Any) -> torch.Tensor:
    """The model's own input checks (type, shape, dtype, length, token range), before any hook."""
    model._check_input(idx, None)
    return idx


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Attention maps
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Attention weights of every head in every layer for ``idx`` ``(B, T)``.

    Returns ``(n_layer, B, n_head, T, T)``; ``[l, b, h, i, j]`` is how much query ``i`` of head
    ``h`` in layer ``l`` attends to key ``j`` (each row sums to one, the future gets zero). A
    hook records each attention layer's input during one forward pass; the weights are then
    recomputed from that input with the written-out attention (``return_weights=True``).
    """
    model = _check_model(model)
    idx = _check_idx(model, idx)
    inputs: list[torch.Tensor] = []
    handles = [
        block.attn.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
        for block in model.transformer.h
    ]
    try:
        model(idx)
    finally:
        for handle in handles:
            handle.remove()
    maps = [
        block.attn(x, return_weights=True)[1]  # (B, nh, T, T)
        for block, x in zip(model.transformer.h, inputs, strict=True)
    ]
    return torch.stack(maps)  # (n_layer, B, nh, T, T)


# --------------------------------------------------------------------------------------------
# Residual stream and the logit lens
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def residual_stream(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The residual stream before the first block and after each block, for ``idx`` ``(B, T)``.

    Returns ``(n_layer + 1, B, T, C)``: entry 0 is the embeddings ``wte[idx] + wpe[pos]``,
    entry ``l`` the output of block ``l - 1``. The last entry is what ``ln_f`` and ``lm_head``
    turn into the model's logits. Captured with forward hooks during one ordinary forward pass.
    """
    model = _check_model(model)
    idx = _check_idx(model, idx)
    states: list[torch.Tensor] = []

    def record(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
        states.append(out.detach())

    modules = [model.transformer.drop, *model.transformer.h]
    handles = [module.register_forward_hook(record) for module in modules]
    try:
        model(idx)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(states)  # (n_layer + 1, B, T, C)


@torch.no_grad()
def logit_lens(model: GPT, residuals: torch.Tensor) -> torch.Tensor:
    """Decode residual states as if they were the last layer's: ``lm_head(ln_f(x))``.

    ``residuals`` is ``(..., C)``, e.g. the ``(n_layer + 1, B, T, C)`` output of
    :func:`residual_stream`; returns logits ``(..., vocab_size)``. For the last layer this is
    exactly the model's own output; for earlier layers it shows what the stream "already says"
    about the next token (nostalgebraist, 2020).
    """
    model = _check_model(model)
    if not isinstance(residuals, torch.Tensor):
        raise TypeError(
            f"residuals must be a tensor (..., n_embd), got {type(residuals).__name__}; "
            "get one from residual_stream(model, idx)"
        )
    if residuals.dim() < 1 or residuals.shape[-1] != model.config.n_embd:
        raise ValueError(
            f"residuals must end in n_embd={model.config.n_embd} features, got shape "
            f"{tuple(residuals.shape)}; pass residual_stream(model, idx)"
        )
    return model.lm_head(model.transformer.ln_f(residuals))


def token_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each target among the logits: 0 when it is the top prediction.

    ``logits`` is ``(..., V)``, ``targets`` ``(...)`` holds token ids. The rank is the number of
    tokens with a strictly larger logit, so tied tokens share the best rank.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("logits and targets must be tensors: logits (..., V), targets (...)")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets {tuple(targets.shape)} must match logits {tuple(logits.shape)} without "
            "its last (vocabulary) dimension; index logits and targets the same way"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer token ids, got {targets.dtype}")
    target_logit = logits.gather(-1, targets.long().unsqueeze(-1))  # (..., 1)
    return (logits > target_logit).sum(-1)  # (...)


# --------------------------------------------------------------------------------------------
# Head ablation
# --------------------------------------------------------------------------------------------


def _check_heads(model: GPT, heads: Any) -> list[tuple[int, int]]:
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        raise TypeError(
            "heads must be an iterable of (layer, head) pairs, e.g. [(0, 3), (2, 1)]; "
            "pass [] to ablate nothing"
        )
    n_layer, n_head = model.config.n_layer, model.config.n_head
    checked = []
    for pair in heads:
        if (
            not isinstance(pair, (tuple, list))
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        ):
            raise TypeError(f"each head must be a (layer, head) pair of ints, got {pair!r}")
        layer, head = pair
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(
                f"head {tuple(pair)} does not exist: this model has layers 0..{n_layer - 1} and "
                f"heads 0..{n_head - 1} per layer"
            )
        checked.append((layer, head))
    return checked


@contextlib.contextmanager
def ablate_heads(model: GPT, heads: Iterable[tuple[int, int]]) -> Iterator[GPT]:
    """Inside the ``with`` block, the given attention heads output zeros.

    ``heads`` lists ``(layer, head)`` pairs. A layer's heads are concatenated, head ``h``
    filling features ``h*hs .. (h+1)*hs - 1``, before ``c_proj`` mixes them into the residual
    stream; a pre-hook on ``c_proj`` zeroes the slice of each ablated head, so that head adds
    nothing (``c_proj``'s bias still does). Ablating nothing registers no hook at all.
    """
    model = _check_model(model)
    by_layer: dict[int, list[int]] = {}
    for layer, head in _check_heads(model, heads):
        by_layer.setdefault(layer, []).append(head)
    hs = model.config.head_dim

    def make_hook(head_ids: list[int]) -> Any:
        def zero_heads(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            y = args[0].clone()  # (B, T, C): heads side by side
            for h in head_ids:
                y[..., h * hs : (h + 1) * hs] = 0.0
            return (y, *args[1:])

        return zero_heads

    handles = [
        model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(make_hook(head_ids))
        for layer, head_ids in sorted(by_layer.items())
    ]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def head_ablation_losses(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss on ``(idx, targets)`` with each head ablated on its own: ``(n_layer, n_head)``.

    Entry ``[l, h]`` is the mean cross-entropy when only head ``h`` of layer ``l`` is zeroed;
    subtract the unablated loss ``model(idx, targets)[1]`` to see how much each head matters.
    """
    model = _check_model(model)
    idx = _check_idx(model, idx)
    if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
        raise ValueError("targets must be a tensor shaped like idx: idx shifted left by one token")
    losses = torch.empty(model.config.n_layer, model.config.n_head)
    for layer in range(model.config.n_layer):
        for head in range(model.config.n_head):
            with ablate_heads(model, [(layer, head)]):
                losses[layer, head] = model(idx, targets)[1].item()
    return losses


# --------------------------------------------------------------------------------------------
# Bias probes
# --------------------------------------------------------------------------------------------


def _single_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    ids = []
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"words must be strings, got {word!r}")
        pieces = encode_plain(tokenizer, word)  # specials: text
        if len(pieces) != 1:
            shown = [tokenizer.decode([p]) for p in pieces]
            raise ValueError(
                f"{word!r} is {len(pieces)} tokens {shown}, not one; next_word_probs scores "
                "single tokens only (mind the leading space: ' he', not 'he'), or multiply the "
                "conditional probabilities of the pieces yourself"
            )
        ids.append(pieces[0])
    return ids


@torch.no_grad()
def next_word_probs(
    model: GPT, tokenizer: Any, prompts: Sequence[str], words: Sequence[str]
) -> torch.Tensor:
    """Probability that each of ``words`` is the very next token after each prompt: ``(P, W)``.

    Every word must be a single token of ``tokenizer`` (e.g. ``" he"`` with its leading space);
    the probabilities come from one softmax over the whole vocabulary, so they do not sum to one
    across ``words``.
    """
    model = _check_model(model)
    if isinstance(prompts, str) or isinstance(words, str):
        raise TypeError("prompts and words must be lists of strings, e.g. ['The king said']")
    if len(prompts) == 0 or len(words) == 0:
        raise ValueError("pass at least one prompt and one word")
    word_ids = torch.tensor(_single_token_ids(tokenizer, words))
    device = model.lm_head.weight.device
    rows = []
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"each prompt must be a non-empty string, got {prompt!r}")
        ids = encode_plain(tokenizer, prompt)  # specials: text
        ids = ids[-model.config.block_size :]
        logits = model.next_token_logits(torch.tensor([ids], device=device))  # (1, V)
        rows.append(torch.softmax(logits[0].float(), dim=-1)[word_ids.to(device)].cpu())
    return torch.stack(rows)  # (P, W)


# --------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, how many leading tokens ``a`` and ``b`` ``(N, m)`` share: ``(N,)`` in ``0..m``."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("a and b must be tensors of token ids, shape (N, m)")
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"a and b must both be (N, m) with the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    same = (a == b).long()  # (N, m)
    return same.cumprod(dim=1).sum(dim=1)  # a run of ones from the start, then zeros


@dataclass(frozen=True)
class RecallResult:
    """What :func:`verbatim_recall` found for ``N`` passages continued for ``m`` tokens."""

    generated: torch.Tensor  # (N, m) the model's greedy continuation
    target: torch.Tensor  # (N, m) the true continuation
    prefix_len: torch.Tensor  # (N,) leading tokens the two share

    @property
    def exact(self) -> torch.Tensor:
        """``(N,)`` bool: the whole continuation was reproduced token for token."""
        return self.prefix_len == self.target.shape[1]


@torch.no_grad()
def verbatim_recall(
    model: GPT,
    ids: torch.Tensor,
    starts: Sequence[int] | torch.Tensor,
    *,
    prompt_len: int,
    continuation_len: int,
    batch_size: int = 64,
) -> RecallResult:
    """Prompt with ``ids[s : s + prompt_len]`` and compare the greedy continuation with the text.

    For each start ``s`` the model reads ``prompt_len`` tokens of ``ids`` (1-D) and greedily
    generates ``continuation_len`` more; the true continuation is
    ``ids[s + prompt_len : s + prompt_len + continuation_len]``. A training passage the model
    continues exactly is memorised in the sense of Carlini et al. (2023).
    """
    from gptlab.sampling import generate

    model = _check_model(model)
    prompt_len = _check_positive_int(prompt_len, "prompt_len")
    continuation_len = _check_positive_int(continuation_len, "continuation_len")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-D tensor of token ids (one long stream)")
    span = prompt_len + continuation_len
    if span > model.config.block_size:
        raise ValueError(
            f"prompt_len + continuation_len = {span} exceeds block_size "
            f"{model.config.block_size}; shorten the prompt or the continuation"
        )
    starts = torch.as_tensor(starts, dtype=torch.long).reshape(-1)
    if starts.numel() == 0:
        raise ValueError("starts is empty; pass the offsets of the passages to test")
    if int(starts.min()) < 0 or int(starts.max()) + span > len(ids):
        raise ValueError(
            f"every start must satisfy 0 <= start <= len(ids) - {span} = {len(ids) - span}; "
            f"got starts from {int(starts.min())} to {int(starts.max())}"
        )
    windows = torch.stack([ids[s : s + span] for s in starts.tolist()])  # (N, k + m)
    device = model.lm_head.weight.device
    generated = []
    for chunk in windows.split(batch_size):
        prompt = chunk[:, :prompt_len].to(device)
        out = generate(model, prompt, continuation_len, temperature=0.0)
        generated.append(out[:, prompt_len:].cpu())
    gen = torch.cat(generated)  # (N, m)
    target = windows[:, prompt_len:]
    return RecallResult(gen, target, common_prefix_length(gen, target))


# --------------------------------------------------------------------------------------------
# Canaries: planted secrets, and how exposed they are
# --------------------------------------------------------------------------------------------


def insert_canaries(
    ids: torch.Tensor,
    canaries: Sequence[Sequence[int]],
    counts: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    after_token: int | None = None,
) -> torch.Tensor:
    """Return a copy of the 1-D stream ``ids`` with canary ``i`` inserted ``counts[i]`` times.

    Each copy goes in whole at its own uniformly random place (between two tokens; with
    ``after_token``, only right after an occurrence of that token, e.g. a newline, so a canary
    is a line of its own). Two copies never share a place, so no copy splits another. The
    ``sum(counts)`` places and the order of the canaries are drawn from ``generator``.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-D tensor of token ids (one long stream)")
    if len(canaries) != len(counts):
        raise ValueError(
            f"need one count per canary, got {len(canaries)} canaries and {len(counts)} counts"
        )
    for i, (canary, count) in enumerate(zip(canaries, counts, strict=True)):
        if len(canary) == 0:
            raise ValueError(f"canary {i} is empty; give each canary at least one token id")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"counts[{i}] must be an int >= 0, got {count!r}")
    if after_token is None:
        slots = torch.arange(len(ids) + 1)  # insert before ids[slot]
    else:
        slots = (ids == after_token).nonzero().flatten() + 1  # right after each after_token
    total = sum(counts)
    if total > len(slots):
        raise ValueError(
            f"{total} copies need {total} distinct places but the stream has only {len(slots)}"
            + ("" if after_token is None else f" tokens {after_token} to insert after")
        )
    places = slots[torch.randperm(len(slots), generator=generator)[:total]]  # distinct
    which = torch.repeat_interleave(
        torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long)
    )
    which = which[torch.randperm(total, generator=generator)]  # which canary goes where
    order = places.argsort()
    pieces, prev = [], 0
    for place, i in zip(places[order].tolist(), which[order].tolist(), strict=True):
        pieces += [ids[prev:place], torch.as_tensor(canaries[i], dtype=ids.dtype)]
        prev = place
    pieces.append(ids[prev:])
    return torch.cat(pieces)


@torch.no_grad()
def sequence_logprobs(
    model: GPT,
    prefix: Sequence[int],
    candidates: torch.Tensor,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """``(S,)`` float64: ``ln P(candidate | prefix)`` for each row of ``candidates`` ``(S, m)``.

    The chain rule over the candidate's ``m`` tokens, each predicted by the model from the
    prefix and the candidate tokens before it (teacher forcing: one forward pass per chunk).
    """
    model = _check_model(model)
    batch_size = _check_positive_int(batch_size, "batch_size")
    if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2:
        raise ValueError("candidates must be an (S, m) tensor of token ids, one row per candidate")
    if len(prefix) == 0:
        raise ValueError("prefix is empty; the first candidate token needs a token to follow")
    p, m = len(prefix), candidates.shape[1]
    if p + m - 1 > model.config.block_size:
        raise ValueError(
            f"prefix ({p}) + candidate ({m}) tokens exceed block_size {model.config.block_size}"
        )
    device = model.lm_head.weight.device
    head = torch.as_tensor(list(prefix), dtype=torch.long)
    out = []
    for chunk in candidates.long().split(batch_size):
        x = torch.cat([head.expand(len(chunk), p), chunk[:, :-1]], dim=1).to(device)  # (s, p+m-1)
        logits, _ = model(x)
        logp = torch.log_softmax(logits[:, p - 1 :].double(), dim=-1)  # (s, m, V)
        out.append(logp.gather(-1, chunk[:, :, None].to(device))[..., 0].sum(1).cpu())
    return torch.cat(out)


def exposure(true_logprob: float | torch.Tensor, other_logprobs: torch.Tensor) -> float:
    r"""Exposure of a secret in bits (Carlini et al., 2019), estimated from sampled alternatives.

    With :math:`R` candidates (the true secret and ``len(other_logprobs)`` random ones) ranked
    by likelihood, :math:`\text{exposure} = \log_2 R - \log_2 \text{rank}`, where rank 1 is
    the likeliest. Ties count against the secret (an alternative as likely ranks above it), so
    a model that prefers nothing gets exposure 0; a secret likelier than every alternative gets
    :math:`\log_2 R`, the most this sample can show.
    """
    if not isinstance(other_logprobs, torch.Tensor) or other_logprobs.dim() != 1:
        raise ValueError("other_logprobs must be a 1-D tensor, one log-probability per alternative")
    if other_logprobs.numel() == 0:
        raise ValueError("need at least one alternative secret to rank the true one against")
    true = float(true_logprob)
    rank = 1 + int((other_logprobs >= true).sum())
    return math.log2(other_logprobs.numel() + 1) - math.log2(rank)
