"""Turning next-token logits into text: greedy, temperature, top-k, top-p, repetition penalty.

The filters are small pure functions on a ``(B, vocab_size)`` logits tensor so a chapter can
apply and plot them one at a time. :func:`generate` chains them in the order Hugging Face uses
(repetition penalty, temperature, top-k, top-p) and runs the model with a KV cache;
:func:`stream` yields the same tokens one by one.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from gptlab.model import GPT

__all__ = [
    "apply_repetition_penalty",
    "apply_temperature",
    "generate",
    "stream",
    "top_k_filter",
    "top_p_filter",
]


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by ``temperature``: below 1 sharpens the distribution, above 1 flattens it."""
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0 to divide by it, got {temperature}; "
            "for greedy decoding use generate(..., temperature=0)"
        )
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits per row (ties with the k-th are kept), set the rest to -inf."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {k!r}; use None to disable top-k")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1) the k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the fewest most-likely tokens whose probabilities add up to >= ``p``."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}; 1.0 keeps every token")
    if p == 1:
        return logits
    # A stable sort breaks ties by vocabulary order (as argmax does), so the nucleus is the same
    # on every run and device.
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above
    remove_sorted = mass_before >= p  # the top token always has mass_before 0, so it stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def apply_repetition_penalty(
    logits: torch.Tensor, previous: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make tokens that already appear in ``previous`` ``(B, T)`` less likely (CTRL, Keskar 2019).

    A seen token's logit is divided by ``penalty`` if positive and multiplied by it if negative,
    so ``penalty > 1`` always lowers it. ``penalty = 1`` changes nothing.
    """
    if not penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}; 1.0 disables it")
    if penalty == 1:
        return logits
    seen = torch.gather(logits, 1, previous)  # (B, T) logits of the tokens already present
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def _validate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_token_id: int | None,
    num_return_sequences: int,
) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a gptlab GPT, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ValueError(
            f"idx must be a 2-D (batch, time) tensor of token ids, got {shape}; "
            "for one prompt use torch.tensor([ids])"
        )
    if idx.shape[1] == 0:
        raise ValueError("the prompt is empty; pass at least one token (e.g. <|endoftext|>, 50256)")
    block_size = model.config.block_size
    if idx.shape[1] > block_size:
        raise ValueError(
            f"the prompt is {idx.shape[1]} tokens but the model's block_size is {block_size}; "
            f"keep its last {block_size} tokens: idx[:, -{block_size}:]"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}; use None to disable top-k")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}; use None or 1.0 to disable it")
    if not repetition_penalty > 0:
        raise ValueError(
            f"repetition_penalty must be > 0, got {repetition_penalty}; 1.0 disables it, "
            "values like 1.2 discourage repeats"
        )
    if eos_token_id is not None and not 0 <= eos_token_id < model.config.vocab_size:
        raise ValueError(
            f"eos_token_id {eos_token_id} is outside the vocabulary [0, {model.config.vocab_size})"
        )
    if (
        isinstance(num_return_sequences, bool)
        or not isinstance(num_return_sequences, int)
        or num_return_sequences < 1
    ):
        raise ValueError(f"num_return_sequences must be an int >= 1, got {num_return_sequences!r}")


def _next_token(
    logits: torch.Tensor,
    previous: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` ``(B, V)``; returns ``(B,)``."""
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, previous, repetition_penalty)
    if temperature == 0:
        return torch.argmax(logits, dim=-1)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _decode(
    model: GPT,
    out: torch.Tensor,
    prompt_len: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    eos_token_id: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Fill ``out[:, prompt_len:]`` one column at a time, yielding ``(t, tokens)`` after each.

    With a cache the prompt is run once (prefill) and every later step feeds one token. Once the
    sequence outgrows ``block_size`` the window slides: absolute position embeddings change the
    keys of every kept token, so the cache cannot be reused and we recompute over the last
    ``block_size`` tokens, exactly as the uncached path does.
    """
    block_size = model.config.block_size
    finished = torch.zeros(out.shape[0], dtype=torch.bool, device=out.device)
    cache = model.new_kv_cache(out.shape[0]) if use_cache else None
    for t in range(prompt_len, out.shape[1]):
        if cache is not None and t > block_size:
            cache = None  # the window slides from here on: recompute (see above)
        if cache is None:
            logits = model.next_token_logits(out[:, max(0, t - block_size) : t])
        else:
            logits = model.next_token_logits(out[:, cache.length : t], kv_cache=cache)
        token = _next_token(
            logits, out[:, :t], temperature, top_k, top_p, repetition_penalty, generator
        )
        if eos_token_id is not None:
            token = token.masked_fill(finished, eos_token_id)  # finished rows are padded with eos
            finished |= token == eos_token_id
        out[:, t] = token
        yield t, token
        if eos_token_id is not None and bool(finished.all()):
            return


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    num_return_sequences: int = 1,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue each prompt in ``idx`` ``(B, T)`` by up to ``max_new_tokens`` tokens.

    Returns a LongTensor ``(B * num_return_sequences, T + new)``: the prompts (each repeated
    ``num_return_sequences`` times, consecutively) followed by the generated tokens.
    ``temperature=0`` is greedy decoding (argmax); otherwise tokens are drawn with
    ``torch.multinomial`` from ``generator`` (pass a seeded ``torch.Generator`` to reproduce).
    A row that emits ``eos_token_id`` is finished and padded with it; generation stops early
    once every row is finished. Runs in eval mode without gradients and restores the model's
    training mode afterwards.
    """
    _validate(
        model,
        idx,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        eos_token_id,
        num_return_sequences,
    )
    idx = idx.repeat_interleave(num_return_sequences, dim=0)  # (B * n, T)
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    end = T
    was_training = model.training
    model.eval()
    try:
        for t, _ in _decode(
            model,
            out,
            T,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            eos_token_id,
            generator,
            use_cache,
        ):
            end = t + 1
    finally:
        model.train(was_training)
    return out[:, :end]


def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time for a single prompt (``(1, T)`` or ``(T,)``).

    Same arguments and, with the same seed, the same tokens as :func:`generate`; stops after
    yielding ``eos_token_id``. Print each token as it arrives to watch the model write.
    Arguments are checked at once, not at the first ``next()``.
    """
    if isinstance(idx, torch.Tensor) and idx.dim() == 1:
        idx = idx[None]
    if isinstance(idx, torch.Tensor) and idx.dim() == 2 and idx.shape[0] != 1:
        raise ValueError(
            f"stream takes one prompt (batch size 1), got batch size {idx.shape[0]}; "
            "use generate() for batches"
        )
    _validate(
        model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_token_id, 1
    )
    T = idx.shape[1]
    out = torch.empty(1, T + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :T] = idx
    steps = _decode(
        model,
        out,
        T,
        temperature,
        top_k,
        top_p,
        repetition_penalty,
        eos_token_id,
        generator,
        use_cache,
    )
    return _stream_tokens(model, steps)


@torch.no_grad()
def _stream_tokens(model: GPT, steps: Iterator[tuple[int, torch.Tensor]]) -> Iterator[int]:
    was_training = model.training
    model.eval()
    try:
        for _, token in steps:
            yield int(token[0])
    finally:
        model.train(was_training)
