"""Checkers for the exercises of chapter 5, "Sampling and decoding".

Each checker runs the reader's function on inputs built here and compares it with
:mod:`gptlab.sampling` (the reference) or with the formula, and recognises the usual mistakes so
the hint names the one the reader made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gptlab.exercises import NotSolved, exercise
from gptlab.exercises import require_callable as _callable

__all__ = [
    "check_generation_flops",
    "check_greedy_counterexample",
    "check_minimum_penalty",
    "check_sampler_test",
    "check_temperature_for_entropy",
    "entropy_bits",
    "generation_flops",
    "minimum_penalty",
    "processed_positions",
]


def processed_positions(prompt_len: int, new_tokens: int, use_cache: bool) -> int:
    """Token positions the model runs on to generate ``new_tokens`` after a ``prompt_len`` prompt.

    Without a cache the step that picks the token at position ``t`` re-runs all ``t`` positions
    before it: ``P + (P + 1) + ... + (P + N - 1) = N·P + N(N-1)/2``. With a cache the prompt runs
    once (``P`` positions, the prefill) and each of the other ``N - 1`` steps runs one position.
    Assumes ``P + N - 1 <= block_size`` (no sliding window).
    """
    for name, value in (("prompt_len", prompt_len), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if prompt_len == 0:
        raise ValueError("prompt_len must be >= 1: generation needs at least one token to start")
    N, P = new_tokens, prompt_len
    if N == 0:
        return 0
    if use_cache:
        return P + (N - 1)
    return N * P + N * (N - 1) // 2


def generation_flops(n_params: int, prompt_len: int, new_tokens: int, use_cache: bool) -> int:
    """Forward FLOPs of the weight matrix products, ``2 · n_params`` per processed position.

    Each parameter takes part in one multiply and one add per position (Kaplan et al., 2020); the
    attention scores themselves are left out, so this is a slight undercount for long contexts.
    """
    if isinstance(n_params, bool) or not isinstance(n_params, int) or n_params < 1:
        raise ValueError(f"n_params must be a positive int, got {n_params!r}")
    return 2 * n_params * processed_positions(prompt_len, new_tokens, use_cache)


def entropy_bits(logits: Tensor, tau: float = 1.0) -> float:
    """Entropy in bits of ``softmax(logits / tau)`` for a 1-D tensor; tokens at -inf count 0."""
    if not isinstance(logits, Tensor) or logits.dim() != 1:
        raise ValueError("logits must be a 1-D tensor of shape (V,)")
    if not (isinstance(tau, (int, float)) and not isinstance(tau, bool) and tau > 0):
        raise ValueError(f"tau must be a number > 0, got {tau!r}")
    p = torch.softmax(logits.double() / tau, dim=-1)
    return float(-torch.special.xlogy(p, p).sum() / math.log(2))


def minimum_penalty(logits: Tensor, previous: Tensor) -> float:
    """The smallest repetition penalty above which greedy decoding picks an unseen token.

    With the Hugging Face rule (positive logits divided by θ, the others multiplied) only the
    best seen logit ``s`` and the best unseen one ``u`` matter: ``1`` if ``u >= s``; ``s / u`` if
    ``s > 0`` and ``u > 0``; ``u / s`` if ``s < 0``; ``inf`` if no θ works (``u <= 0 <= s``, or no
    unseen token is left). At exactly that θ the two tie; any larger θ breaks the tie.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 1 or not logits.is_floating_point():
        raise ValueError("logits must be a 1-D float tensor of shape (V,)")
    if not isinstance(previous, Tensor) or previous.dim() != 1 or previous.is_floating_point():
        raise ValueError("previous must be a 1-D tensor of token ids, e.g. torch.tensor([3, 7])")
    seen = torch.zeros(logits.numel(), dtype=torch.bool)
    seen[previous] = True
    if seen.all():
        return math.inf
    if not seen.any():
        return 1.0
    s, u = logits[seen].max().item(), logits[~seen].max().item()
    if u >= s:
        return 1.0
    if s > 0:
        return s / u if u > 0 else math.inf
    return u / s if s < 0 else math.inf


def _float(out: Any, name: str) -> float:
    if isinstance(out, Tensor) and out.numel() == 1:
        out = out.item()
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        raise NotSolved(f"{name} should return a float, got {type(out).__name__}")
    return float(out)


# --- 5.1 which temperature gives a given entropy? ------------------------------------------------


@exercise("5.1", "the temperature for a given entropy")
def check_temperature_for_entropy(answer: Any) -> str | None:
    """``temperature_for(logits, bits)`` must return τ with ``H(softmax(z / τ))`` within 0.01 bits of
    ``bits``, and raise ``ValueError`` when no temperature reaches it."""
    fn = _callable(answer, "temperature_for", "5.1")
    gen = torch.Generator().manual_seed(51)
    z = torch.randn(50, generator=gen, dtype=torch.float64) * 3
    filtered = z.masked_fill(z < z.topk(10).values[-1], float("-inf"))  # after a top-10 filter
    cases = [(z, 1.0), (z, 3.0), (z, 5.5), (z * 20, 0.3), (filtered, 2.0)]
    for logits, bits in cases:
        call = f"for {bits} bits" + (" on logits with -inf entries" if logits is filtered else "")
        tau = _float(fn(logits.clone(), bits), "temperature_for")
        if logits is filtered and not (
            math.isfinite(tau) and tau > 0 and abs(entropy_bits(logits, tau) - bits) <= 0.01
        ):
            return (
                f"{call} your τ = {tau:.4g} is wrong: a filtered token has p = 0, and p · log p "
                "is then 0 · (-inf) = nan in floating point. Count it as 0: "
                "torch.special.xlogy(p, p) does"
            )
        if not math.isfinite(tau) or tau <= 0:
            return f"{call} you returned τ = {tau}; a temperature must be a finite number > 0"
        got = entropy_bits(logits, tau)
        if abs(got - bits) <= 0.01:
            continue
        if abs(entropy_bits(logits, tau) * math.log(2) - bits) <= 0.01:
            return f"{call}: your τ gives {bits} nats, not bits: measure the entropy with log2"
        if abs(entropy_bits(logits, 1 / tau) - bits) <= 0.01:
            return f"{call}: you returned 1/τ: the temperature DIVIDES the logits, p ∝ exp(z / τ)"
        return (
            f"{call} your τ = {tau:.4g} gives an entropy of {got:.3f} bits. The entropy grows "
            "steadily with τ (from the argmax's 0 bits to log2 V), so bisect on τ until it is "
            "within 0.01 bits. If you sum p · log p: a p that underflows to 0 gives "
            "0 · (-inf) = nan; torch.special.xlogy(p, p) counts it as 0"
        )
    n_kept = int(torch.isfinite(filtered).sum())
    for logits, bits, why in (
        (z, math.log2(z.numel()) + 0.5, f"above log2 V = {math.log2(z.numel()):.2f} bits"),
        (filtered, math.log2(n_kept) + 0.1, f"above log2({n_kept}), the tokens left"),
    ):
        try:
            tau = fn(logits.clone(), bits)
        except ValueError:
            continue
        return (
            f"{bits:.2f} bits is {why}: even τ → ∞ (the uniform distribution over the finite "
            f"logits) stays below it. Raise ValueError instead of returning {tau!r}"
        )
    return None


# --- 5.2 where greedy decoding misses the most likely sequence -----------------------------------


def _distribution(t: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(t, Tensor) or tuple(t.shape) != shape or not t.is_floating_point():
        got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise NotSolved(f"{name} must be a float tensor of shape {shape}, got {got}")
    if (t < 0).any() or not torch.allclose(t.double().sum(-1), torch.ones(shape[:-1]).double()):
        raise NotSolved(f"{name} must hold probabilities: entries >= 0, each row summing to 1")
    return t.double()


def _unique_argmax(p: Tensor) -> int | None:
    top = torch.topk(p, 2).values
    return int(p.argmax()) if top[0] > top[1] else None


@exercise("5.2", "a distribution where greedy misses the most likely text")
def check_greedy_counterexample(answer: Any) -> str | None:
    """``(first, transition)``: ``first[a]`` = P(token a), ``transition[a, b]`` = P(b | a).

    Greedy decoding (argmax, then argmax) must find a two-token sequence less likely than the best
    one, ``max first[a] · transition[a, b]``, and beam search with 2 beams must find the best one.
    """
    if not (isinstance(answer, tuple) and len(answer) == 2):
        return "answer with a tuple (first, transition) of two tensors"
    first, transition = answer
    if not isinstance(first, Tensor) or first.dim() != 1 or first.numel() < 2:
        return "first must be a 1-D tensor of V >= 2 probabilities, P(first token = a)"
    V = first.numel()
    first = _distribution(first, "first", (V,))
    transition = _distribution(transition, "transition", (V, V))
    a = _unique_argmax(first)
    b = None if a is None else _unique_argmax(transition[a])
    if a is None or b is None:
        return "make greedy's choices unique: ties for the most likely token leave it undefined"
    joint = first[:, None] * transition  # (V, V): P(a, b)
    best = joint.max()
    if (joint == best).sum() > 1:
        return "make the most likely sequence unique: several pairs tie for the top"
    greedy = joint[a, b]
    if greedy >= best:
        return (
            f"greedy picks ({a}, {b}) with probability {greedy:.3f}, and that IS the most likely "
            "sequence. Make greedy's first token lead to a flat continuation, and a runner-up "
            "first token to a confident one"
        )
    beams = torch.topk(first, 2).indices
    if joint[beams].max() < best:
        rank = int((first > first[int(joint.argmax()) // V]).sum()) + 1
        return (
            "greedy misses the best sequence, good; but beam search with 2 beams keeps only the "
            f"2 most likely first tokens, and the best sequence starts with the {rank}th. Make its "
            "first token the runner-up"
        )
    return None


# --- 5.3 test that a sampler draws from the right distribution -----------------------------------


def _samplers() -> list[tuple[str, Callable[..., Tensor], bool, str]]:
    """Correct and subtly wrong samplers ``(probs, n, generator) -> (n,)`` ids, with the hint."""

    def multinomial(p: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.multinomial(p, n, replacement=True, generator=generator)

    def inverse_cdf(p: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(n, generator=generator, dtype=p.dtype)
        return torch.searchsorted(torch.cumsum(p, 0), u, right=True).clamp_max(p.numel() - 1)

    def reweighted(f: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
        def sample(p: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
            q = f(p)
            return multinomial(q / q.sum(), n, generator)

        return sample

    def argmax(p: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        return p.argmax().repeat(n)

    def shifted(p: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        return (multinomial(p, n, generator) + 1) % p.numel()

    least = "torch.multinomial on probs with the least likely token set to 0"
    return [
        ("torch.multinomial (correct)", multinomial, True, ""),
        ("inverse-CDF sampling (correct)", inverse_cdf, True, ""),
        ("greedy (always the argmax)", argmax, False, ""),
        ("a uniform sampler", reweighted(torch.ones_like), False, ""),
        ("a sampler at temperature 0.5 (probs squared)", reweighted(lambda p: p**2), False, ""),
        ("a sampler off by one token id", shifted, False, ""),
        (
            least,
            reweighted(lambda p: p.masked_fill(p == p.min(), 0.0)),
            False,
            ": that token has probability 0.02, so its count must be measured to well under "
            "0.02·n; a count's standard error is about sqrt(n·p), so draw enough samples (e.g. "
            "10⁵) for a 0.02 gap to stand out",
        ),
    ]


@exercise("5.3", "test that a sampler draws from its distribution")
def check_sampler_test(answer: Any) -> str | None:
    """``samples_from(sampler, probs)`` must return True for correct samplers, False for biased ones.

    ``sampler(probs, n, generator)`` returns ``n`` token ids. The biased ones include a sampler that
    only never draws the least likely token (probability 0.02), which a test with too few samples
    cannot see.
    """
    fn = _callable(answer, "samples_from", "5.3")
    probs = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.05, 0.02], dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):  # the reader's test may use the global generator
        torch.manual_seed(53)
        for name, sampler, right, extra in _samplers():
            got = fn(sampler, probs.clone())
            if isinstance(got, Tensor) and got.numel() == 1:
                got = bool(got.item())
            if not isinstance(got, bool):
                return f"return True or False, got {type(got).__name__}"
            if got == right:
                continue
            if right:
                return (
                    f"your test rejected {name}: its threshold is tighter than the sampling noise. "
                    "With n samples a frequency wanders by about sqrt(p(1 - p) / n)"
                )
            return (
                f"your test accepted {name}{extra or ''}; compare the frequency of EVERY token "
                "with its probability"
            )
    return None


# --- 5.4 how large a repetition penalty breaks a loop? -------------------------------------------


@exercise("5.4", "the smallest penalty that changes greedy's choice")
def check_minimum_penalty(answer: Any) -> str | None:
    """``min_penalty(logits, previous)`` must equal :func:`minimum_penalty` (``math.inf`` if none)."""
    fn = _callable(answer, "min_penalty", "5.4")
    gen = torch.Generator().manual_seed(54)
    f64 = torch.float64
    cases = [
        (torch.tensor([3.0, 2.0, 1.0, -1.0], dtype=f64), [0]),  # 1.5
        (torch.tensor([3.0, 2.0, 1.0, -1.0], dtype=f64), [0, 1]),  # seen runner-up: 3.0
        (torch.tensor([-0.5, -2.0, -1.0], dtype=f64), [0]),  # negative logits: 2.0
        (torch.tensor([1.0, 4.0, 0.5], dtype=f64), [0, 0]),  # greedy already unseen: 1.0
        (torch.tensor([2.0, -1.0, -3.0], dtype=f64), [0]),  # unseen all negative: inf
        (torch.tensor([0.0, -1.0], dtype=f64), [0]),  # 0 · θ stays 0: inf
        (torch.tensor([1.0, 2.0], dtype=f64), [0, 1]),  # nothing unseen: inf
        (torch.randn(20, generator=gen, dtype=f64) * 2, [4, 9, 9, 13]),
    ]
    for logits, prev in cases:
        previous = torch.tensor(prev)
        want = minimum_penalty(logits, previous)
        got = _float(fn(logits.clone(), previous.clone()), "min_penalty")
        if got == want or (math.isfinite(want) and abs(got - want) <= 1e-6 * want):
            continue
        case = f"logits {[round(x, 3) for x in logits.tolist()]}, previous {prev}"
        seen = torch.zeros(logits.numel(), dtype=torch.bool)
        seen[previous] = True
        if not math.isfinite(want):
            return (
                f"{case}: no penalty works, return math.inf: dividing a positive logit never "
                "takes it below a logit <= 0, multiplying 0 leaves 0, and with every token seen "
                f"there is nothing else to pick (you returned {got})"
            )
        s = logits[seen].max().item()
        if want == 1.0:
            return f"{case}: greedy already picks an unseen token, so no penalty is needed: 1.0"
        second = logits.topk(2).values[1].item()
        if s > 0 and abs(got - s / second) <= 1e-6 * abs(s / second):
            return (
                f"{case}: compare with the best UNSEEN token, not the runner-up overall: a seen "
                "runner-up is penalised too"
            )
        if s < 0 and abs(got - 1 / want) <= 1e-6 / want:
            return (
                f"{case}: the best seen logit {s} is negative, so the penalty MULTIPLIES it: "
                "s · θ < u gives θ > u / s"
            )
        return f"{case}: expected {want:.6g}, got {got:.6g}"
    return None


# --- 5.5 what the KV cache saves --------------------------------------------------------------------


@exercise("5.5", "count the FLOPs the KV cache saves")
def check_generation_flops(answer: Any) -> str | None:
    """``generation_flops(n_params, prompt_len, new_tokens, use_cache)`` with ``2·n_params`` FLOPs/position."""
    fn = _callable(answer, "generation_flops", "5.5")
    for n_params, P, N in ((1000, 4, 3), (85_056_000, 10, 100), (7, 1, 1), (3, 5, 0), (50, 1, 64)):
        for use_cache in (False, True):
            want = generation_flops(n_params, P, N, use_cache)
            got = fn(n_params, P, N, use_cache)
            if isinstance(got, Tensor) and got.numel() == 1:
                got = got.item()
            if isinstance(got, float) and got.is_integer():
                got = int(got)
            if isinstance(got, bool) or not isinstance(got, int):
                return f"return an int number of FLOPs, got {type(got).__name__}"
            if got == want:
                continue
            case = f"n_params={n_params}, prompt_len={P}, new_tokens={N}, use_cache={use_cache}"
            positions = want // (2 * n_params)
            if use_cache and got == 2 * n_params * (P + N):
                return (
                    f"{case}: the last new token is never fed back in, so the cache runs the "
                    "prompt once and then N - 1 single tokens"
                )
            if use_cache and got == 2 * n_params * N:
                return f"{case}: with a cache, the prompt still has to run once (the prefill)"
            if not use_cache and got == 2 * n_params * N * (P + N):
                return (
                    f"{case}: the step that picks token t runs the t tokens BEFORE it, from P "
                    "up to P + N - 1"
                )
            if not use_cache and got == 2 * n_params * N * P:
                return f"{case}: without a cache the context grows by one token every step"
            if got == want // 2:
                return f"{case}: each parameter costs 2 FLOPs per position (a multiply and an add)"
            return (
                f"{case}: expected {want:,} FLOPs ({positions} positions x 2 x n_params), got "
                f"{got:,}"
            )
    return None
