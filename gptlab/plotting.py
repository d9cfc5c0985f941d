"""Pictures the chapters draw: loss curves, attention heatmaps and next-token probability bars.

Every function uses matplotlib's object-oriented API: it draws on the ``ax`` you pass (or on a
new figure), returns the Axes, and never calls ``plt.show()``, so notebooks and scripts decide
when and where a figure appears.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes

__all__ = ["plot_attention", "plot_loss_curves", "plot_next_token_probs"]


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """Return ``ax``, or the Axes of a new pyplot figure (so notebooks display it inline)."""
    if ax is None:
        import matplotlib.pyplot as plt  # imported late: choosing a backend is the caller's call

        _, ax = plt.subplots(figsize=figsize, layout="constrained")
        return ax
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """Accept a torch tensor, NumPy array or nested sequence of numbers; return float64 NumPy."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be numbers (a tensor, array or list), got {values!r:.60}"
        ) from err


def _display_token(token: str) -> str:
    """Make whitespace visible in a tick label: a newline would otherwise break the label."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


# --------------------------------------------------------------------------------------------
# Loss curves
# --------------------------------------------------------------------------------------------


def _history_dict(history: Any) -> Mapping[str, Any]:
    if hasattr(history, "to_dict"):
        history = history.to_dict()
    if not isinstance(history, Mapping):
        raise TypeError(
            "history must be a gptlab.train.History or its to_dict() mapping, "
            f"got {type(history).__name__}"
        )
    for key in ("steps", "train_loss", "tokens_seen"):
        if key not in history:
            raise ValueError(f"history has no {key!r} list; pass History.to_dict() output")
    return history


def plot_loss_curves(history: Any, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Plot training and validation loss against the optimizer step.

    A second x axis on top shows how many tokens the model had seen by then, because "loss
    after N tokens" is how language-model runs are usually compared. The y axis is the mean
    cross-entropy in nats per token; exp(loss) is the perplexity.
    """
    h = _history_dict(history)
    steps = _to_numpy(h["steps"], "history['steps']")
    train_loss = _to_numpy(h["train_loss"], "history['train_loss']")
    tokens = _to_numpy(h["tokens_seen"], "history['tokens_seen']")
    eval_steps = _to_numpy(h.get("eval_steps", []), "history['eval_steps']")
    val_loss = _to_numpy(h.get("val_loss", []), "history['val_loss']")
    if not (len(steps) == len(train_loss) == len(tokens)):
        raise ValueError(
            "history['steps'], ['train_loss'] and ['tokens_seen'] must have equal lengths, got "
            f"{len(steps)}, {len(train_loss)}, {len(tokens)}"
        )
    if len(eval_steps) != len(val_loss):
        raise ValueError(
            f"history['eval_steps'] ({len(eval_steps)}) and ['val_loss'] ({len(val_loss)}) "
            "must have equal lengths"
        )
    if len(steps) == 0 and len(val_loss) == 0:
        raise ValueError("history is empty: train for at least one step before plotting")

    ax = _new_axes(ax, (7.0, 4.0))
    if len(steps):
        ax.plot(steps, train_loss, color="C0", alpha=0.35, linewidth=1.0, label="train (per step)")
        window = max(1, len(steps) // 20)
        if window > 1:  # a moving average shows the trend through the per-batch noise
            kernel = np.ones(window) / window
            smooth = np.convolve(train_loss, kernel, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color="C0", label=f"train ({window}-step mean)")
    if len(val_loss):
        ax.plot(eval_steps, val_loss, "o-", color="C1", markersize=4, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title or "Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()

    # Secondary axis: tokens seen. The map step -> tokens is monotone (usually linear), so
    # interpolating through the recorded points gives both directions of the conversion.
    if len(steps) >= 2:
        xs = np.concatenate([[0.0], steps]) if steps[0] > 0 else steps
        ts = np.concatenate([[0.0], tokens]) if steps[0] > 0 else tokens
        rate = (ts[-1] - ts[0]) / max(xs[-1] - xs[0], 1e-12)

        def step_to_tokens(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=float)
            # extend linearly beyond the data so axis margins get sensible labels
            return np.interp(x, xs, ts) + rate * (
                np.clip(x - xs[-1], 0, None) + np.clip(x - xs[0], None, 0)
            )

        def tokens_to_step(t: np.ndarray) -> np.ndarray:
            t = np.asarray(t, dtype=float)
            extra = (np.clip(t - ts[-1], 0, None) + np.clip(t - ts[0], None, 0)) / max(rate, 1e-12)
            return np.interp(t, ts, xs) + extra

        top = ax.secondary_xaxis("top", functions=(step_to_tokens, tokens_to_step))
        top.set_xlabel("tokens seen")
    elif len(steps) == 1 and steps[0] > 0:
        per_step = tokens[0] / steps[0]
        top = ax.secondary_xaxis(
            "top", functions=(lambda x: x * per_step, lambda t: t / max(per_step, 1e-12))
        )
        top.set_xlabel("tokens seen")
    return ax


# --------------------------------------------------------------------------------------------
# Attention heatmap
# --------------------------------------------------------------------------------------------


def plot_attention(
    weights: Any,
    tokens: Sequence[str],
    ax: Axes | None = None,
    *,
    title: str = "Attention weights",
    query_tokens: Sequence[str] | None = None,
    colorbar: bool = True,
) -> Axes:
    """Heatmap of one head's attention: row i shows how query token i spreads its attention.

    ``weights`` is (T_query, T_key), e.g. ``weights[batch, head]`` from
    ``CausalSelfAttention(..., return_weights=True)``. ``tokens`` label the key axis (and the
    query axis too unless ``query_tokens`` is given). Each row of a softmax sums to one.
    """
    w = _to_numpy(weights, "weights")
    if w.ndim != 2:
        raise ValueError(
            f"weights must be 2-D (T_query, T_key), got shape {tuple(w.shape)}; "
            "select one example and one head first, e.g. weights[0, head]"
        )
    if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
        raise TypeError("tokens must be a list of strings, one per key position")
    queries = list(tokens) if query_tokens is None else list(query_tokens)
    if len(tokens) != w.shape[1]:
        raise ValueError(
            f"got {len(tokens)} tokens for {w.shape[1]} key positions; pass one per column"
        )
    if len(queries) != w.shape[0]:
        raise ValueError(
            f"got {len(queries)} query tokens for {w.shape[0]} query positions; pass one per row"
        )

    ax = _new_axes(ax, (1.0 + 0.45 * w.shape[1], 0.8 + 0.4 * w.shape[0]))
    image = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-12), aspect="auto")
    ax.set_xticks(range(w.shape[1]))
    ax.set_yticks(range(w.shape[0]))
    # parse_math=False: a "$" inside a token must not switch matplotlib into LaTeX mode
    ax.set_xticklabels([_display_token(t) for t in tokens], rotation=90, parse_math=False)
    ax.set_yticklabels([_display_token(t) for t in queries], parse_math=False)
    ax.set_xlabel("key (token attended to)")
    ax.set_ylabel("query (token attending)")
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="attention weight")
    return ax


# --------------------------------------------------------------------------------------------
# Next-token probabilities
# --------------------------------------------------------------------------------------------


def plot_next_token_probs(
    probs: Any,
    tokens: Any,
    k: int = 10,
    ax: Axes | None = None,
    *,
    title: str | None = None,
) -> Axes:
    """Horizontal bars of the ``k`` most likely next tokens, most likely on top.

    ``probs`` is a 1-D probability vector over the vocabulary (apply softmax to logits
    first). ``tokens`` is either a list of token strings indexed by id, or a tokenizer with
    ``decode(list[int]) -> str`` (CharTokenizer, BPETokenizer, tiktoken Encoding).
    """
    p = _to_numpy(probs, "probs")
    if p.ndim != 1:
        raise ValueError(
            f"probs must be 1-D (vocab_size,), got shape {tuple(p.shape)}; "
            "take the last position of one sequence, e.g. probs[0, -1]"
        )
    if p.size == 0:
        raise ValueError("probs is empty")
    if np.any(p < 0) or np.any(p > 1 + 1e-6) or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-3):
        raise ValueError(
            "probs must be probabilities (non-negative, summing to 1); these look like logits: "
            "pass torch.softmax(logits, dim=-1)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(k, p.size)
    top = np.argsort(-p, kind="stable")[:k]

    if hasattr(tokens, "decode"):
        labels = [tokens.decode([int(i)]) for i in top]
    elif isinstance(tokens, Sequence) and not isinstance(tokens, str):
        if len(tokens) != p.size:
            raise ValueError(f"got {len(tokens)} token strings for a vocabulary of {p.size}")
        labels = [str(tokens[int(i)]) for i in top]
    else:
        raise TypeError("tokens must be a list of token strings or a tokenizer with decode()")
    labels = [repr(s) for s in labels]  # quotes make leading spaces and newlines visible

    ax = _new_axes(ax, (6.0, 0.9 + 0.35 * k))
    positions = np.arange(k)
    bars = ax.barh(positions, p[top], color="C2")
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, parse_math=False)
    ax.invert_yaxis()  # most likely token on top
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in p[top]], padding=3, fontsize=8)
    ax.set_xlim(0, min(1.0, float(p[top].max()) * 1.2 + 1e-9))
    ax.set_xlabel("probability")
    ax.set_ylabel("next token")
    ax.set_title(title or f"Top-{k} next-token probabilities")
    return ax
