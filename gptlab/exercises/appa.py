"""Checkers for the exercises of appendix A, "A PyTorch primer".

Each checker compares the reader's answer with what PyTorch computes itself (``torch.cdist``,
autograd on ``F.cross_entropy``, ``nn.Linear``, the least-squares line from ``torch.linalg``)
and recognises the usual beginner's mistakes -- a shape that broadcast the wrong way, a missing
``zero_grad``, a forgotten ``super().__init__()`` -- so that the hint names the one made.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.exercises import NotSolved, exercise

__all__ = [
    "check_cross_entropy_grad",
    "check_fit_line",
    "check_mlp_module",
    "check_pairwise_sq_dists",
    "check_to_device",
]


def _callable(answer: Any, example: str) -> Callable[..., Any]:
    if not callable(answer):
        raise NotSolved(f"pass your function or class itself, e.g. {example}, not its result")
    return answer


def _tensor(result: Any, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(result, torch.Tensor):
        raise NotSolved(f"{what} must return a torch.Tensor, got {type(result).__name__}")
    if tuple(result.shape) != shape:
        raise NotSolved(f"{what} returned shape {tuple(result.shape)}, expected {shape}")
    return result


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-5))


# -- A.1 broadcasting --------------------------------------------------------------------------


@exercise("A.1", "pairwise distances by broadcasting")
def check_pairwise_sq_dists(pairwise_sq_dists: Any) -> str | None:
    """``pairwise_sq_dists(a, b)``: (N, D) and (M, D) -> (N, M) squared Euclidean distances."""
    fn = _callable(pairwise_sq_dists, "check('A.1', pairwise_sq_dists)")
    gen = torch.Generator().manual_seed(0)
    for n, m, d in ((5, 5, 3), (4, 3, 5), (1, 6, 2), (3, 2, 1)):
        a = torch.randn(n, d, generator=gen, dtype=torch.float64)
        b = torch.randn(m, d, generator=gen, dtype=torch.float64)
        call = f"pairwise_sq_dists(a, b) for a of shape {(n, d)} and b of shape {(m, d)}"
        try:
            got = fn(a.clone(), b.clone())
        except RuntimeError as err:
            if "must match the size" in str(err):
                raise NotSolved(
                    f"{call} failed: {err}. Give a an axis for the columns, a[:, None, :], and b "
                    "one for the rows, b[None, :, :], so that broadcasting pairs every i with every j"
                ) from None
            raise
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
        if shape == (n, m, d):
            return (
                f"{call} returned shape (N, M, D) = {(n, m, d)}: sum the squared differences over "
                "the last axis (.sum(dim=-1))"
            )
        if shape == (n,) and n == m:
            return (
                f"{call} returned shape {(n,)}: you compared a[i] with b[i] only. Give a an axis "
                "for the columns, a[:, None, :], and b one for the rows, b[None, :, :]"
            )
        if shape == (m, n) and n != m:
            return f"{call} is transposed: row i must belong to a[i], column j to b[j]"
        got = _tensor(got, call, (n, m))
        want = torch.cdist(a, b) ** 2
        if _close(got, want, atol=1e-9):
            continue
        if _close(got, want.T, atol=1e-9):
            return f"{call} is transposed: row i must belong to a[i], column j to b[j]"
        if _close(got, want.sqrt(), atol=1e-9):
            return "these are distances, not squared distances: do not take the square root"
        return (
            f"{call} differs from the squared distances by up to "
            f"{(got.double() - want).abs().max().item():.3g}: entry (i, j) must be sum_k (a[i, k] - b[j, k])**2"
        )
    return None


# -- A.2 a gradient by hand --------------------------------------------------------------------


@exercise("A.2", "the gradient of cross-entropy by hand")
def check_cross_entropy_grad(cross_entropy_grad: Any) -> str | None:
    """``cross_entropy_grad(logits, targets)`` = d F.cross_entropy(logits, targets) / d logits.

    The answer must be derived, not obtained from autograd: the checker calls it under
    ``torch.no_grad()`` with inputs that do not require gradients.
    """
    fn = _callable(cross_entropy_grad, "check('A.2', cross_entropy_grad)")
    gen = torch.Generator().manual_seed(0)
    for n, v in ((4, 5), (1, 3), (7, 2)):
        logits = torch.randn(n, v, generator=gen, dtype=torch.float64) * 2
        targets = torch.randint(v, (n,), generator=gen)
        leaf = logits.clone().requires_grad_(True)
        F.cross_entropy(leaf, targets).backward()
        want = leaf.grad
        try:
            with torch.no_grad():
                got = fn(logits.clone(), targets.clone())
        except RuntimeError as err:
            if "grad" in str(err):
                return (
                    "your function calls autograd (backward); derive the gradient by hand: "
                    "softmax(logits) minus the one-hot targets, divided by N"
                )
            raise
        call = f"cross_entropy_grad for logits of shape {(n, v)}"
        got = _tensor(got, call, (n, v))
        if _close(got, want):
            continue
        probs = torch.softmax(logits, dim=-1)
        onehot = F.one_hot(targets, v).double()
        if _close(got, probs - onehot):
            return (
                "right shape of the gradient, but F.cross_entropy takes the MEAN over the N rows: "
                "divide by N"
            )
        if _close(got, (onehot - probs) / n) or _close(got, onehot - probs):
            return (
                "the sign is flipped: the gradient is softmax(logits) - one_hot(targets) (over N)"
            )
        if _close(got, (torch.exp(logits) - onehot) / n):
            return "use the softmax probabilities, exp(z) / sum(exp(z)), not exp(z) alone"
        return (
            f"{call} differs from autograd's gradient by up to "
            f"{(got.double() - want).abs().max().item():.3g}; the answer is "
            "(softmax(logits) - one_hot(targets)) / N"
        )
    return None


# -- A.3 nn.Module -----------------------------------------------------------------------------


def _build(cls: Callable[..., Any], *args: int) -> nn.Module:
    try:
        module = cls(*args)
    except AttributeError as err:
        if "__init__" in str(err):
            raise NotSolved(
                "call super().__init__() first thing in __init__, before assigning any layer"
            ) from None
        raise
    if not isinstance(module, nn.Module):
        raise NotSolved(f"MLP must subclass nn.Module, got a {type(module).__name__}")
    return module


@exercise("A.3", "a two-layer MLP module")
def check_mlp_module(mlp_class: Any) -> str | None:
    """``MLP(d_in, d_hidden, d_out)``: ``fc1`` (Linear), GELU, ``fc2`` (Linear), any leading dims."""
    if not isinstance(mlp_class, type):
        return "pass the class itself, check('A.3', MLP), not an instance"
    _callable(mlp_class, "check('A.3', MLP)")
    module = _build(mlp_class, 3, 8, 2)
    expected_keys = ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    keys = sorted(module.state_dict())
    n_params = sum(p.numel() for p in module.parameters())
    if n_params == 0:
        return (
            "the module has no parameters: create the layers as attributes in __init__ "
            "(self.fc1 = nn.Linear(...)) so that nn.Module registers them"
        )
    if keys != expected_keys:
        return f"state_dict keys are {keys}; name the layers fc1 and fc2, giving {expected_keys}"
    if n_params != 3 * 8 + 8 + 8 * 2 + 2:
        return f"MLP(3, 8, 2) has {n_params} parameters, expected 50: fc1 is Linear(3, 8), fc2 Linear(8, 2)"
    gen = torch.Generator().manual_seed(0)
    for d_in, d_hidden, d_out in ((3, 8, 2), (4, 16, 4)):
        module = _build(mlp_class, d_in, d_hidden, d_out)
        state = {
            "fc1.weight": torch.randn(d_hidden, d_in, generator=gen),
            "fc1.bias": torch.randn(d_hidden, generator=gen),
            "fc2.weight": torch.randn(d_out, d_hidden, generator=gen),
            "fc2.bias": torch.randn(d_out, generator=gen),
        }
        try:
            module.load_state_dict(state)
        except RuntimeError:
            return (
                f"MLP({d_in}, {d_hidden}, {d_out}) has the wrong layer shapes: fc1 must be "
                f"nn.Linear({d_in}, {d_hidden}) and fc2 nn.Linear({d_hidden}, {d_out})"
            )
        x = torch.randn(2, 5, d_in, generator=gen)  # (B, T, d_in): a batch of sequences
        with torch.no_grad():
            got = _tensor(
                module(x), f"MLP({d_in}, {d_hidden}, {d_out}) on (2, 5, {d_in})", (2, 5, d_out)
            )
        hidden = F.linear(x, state["fc1.weight"], state["fc1.bias"])
        out = {
            act: F.linear(fn(hidden), state["fc2.weight"], state["fc2.bias"])
            for act, fn in (
                ("gelu", F.gelu),
                ("gelu_tanh", lambda h: F.gelu(h, approximate="tanh")),
                ("relu", F.relu),
                ("none", lambda h: h),
            )
        }
        if _close(got, out["gelu"], atol=1e-5):
            continue
        if _close(got, out["gelu_tanh"], atol=1e-5):
            return "use the exact GELU, F.gelu(h) (or nn.GELU()), not the tanh approximation"
        if _close(got, out["relu"], atol=1e-5):
            return "use GELU between the layers, not ReLU"
        if _close(got, out["none"], atol=1e-5):
            return (
                "you forgot the activation: without GELU two Linear layers are just one linear map"
            )
        return "the output differs from fc2(gelu(fc1(x))): check the order of the layers"
    return None


# -- A.4 a training loop -----------------------------------------------------------------------


@exercise("A.4", "fit a line with a training loop")
def check_fit_line(fit_line: Any) -> str | None:
    """``fit_line(x, y) -> (w, b)``: gradient descent on the mean squared error reaches least squares."""
    fn = _callable(fit_line, "check('A.4', fit_line)")
    gen = torch.Generator().manual_seed(0)
    for w_true, b_true in ((3.0, -2.0), (-0.5, 1.5)):
        x = torch.rand(64, generator=gen) * 2 - 1  # (N,) in [-1, 1]
        y = w_true * x + b_true + 0.1 * torch.randn(64, generator=gen)  # (N,)
        design = torch.stack([x, torch.ones_like(x)], dim=1).double()  # (N, 2)
        w_ls, b_ls = torch.linalg.lstsq(design, y.double()[:, None]).solution.flatten().tolist()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mse_loss warns about mismatched shapes: we say why
            result = fn(x.clone(), y.clone())
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            return "return a tuple (w, b) of two numbers"
        try:
            w, b = (float(v) for v in result)
        except (TypeError, ValueError, RuntimeError):
            return (
                "return (w, b) as two plain numbers, e.g. (model.weight.item(), model.bias.item())"
            )
        if not (math.isfinite(w) and math.isfinite(b)):
            return (
                "the fit diverged to inf or nan: lower the learning rate, and call "
                "optimizer.zero_grad() every step so that gradients do not pile up"
            )
        if abs(w - w_ls) < 0.01 and abs(b - b_ls) < 0.01:
            continue
        if abs(w) < 0.05 and abs(b - float(y.mean())) < 0.05:
            return (
                f"you found w = {w:.3f}, b = {b:.3f} (about the mean of y): your loss compared a "
                "(N, 1) prediction with an (N,) target, which broadcasts to (N, N). Make the "
                "shapes equal, e.g. model(x[:, None]).squeeze(1)"
            )
        return (
            f"for data around y = {w_true} x + {b_true} you found w = {w:.3f}, b = {b:.3f}; least "
            f"squares gives w = {w_ls:.3f}, b = {b_ls:.3f}. Train for more steps, check the "
            "learning rate, and zero the gradients every step"
        )
    return None


# -- A.5 devices -------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor on {value.device.type}"
    return type(value).__name__


@exercise("A.5", "move a nested batch to a device")
def check_to_device(to_device: Any) -> str | None:
    """``to_device(batch, device)``: every tensor inside dicts/lists/tuples moved, the rest kept.

    The checker moves to the ``meta`` device, which every PyTorch build has (tensors with a
    shape and a dtype but no data), so it works on a machine without a GPU.
    """
    fn = _callable(to_device, "check('A.5', to_device)")
    ids = torch.arange(6).reshape(2, 3)
    batch = {
        "ids": ids,
        "labels": [torch.tensor([0, 1]), torch.tensor([1, 0])],
        "pair": (torch.ones(2), "keep me"),
        "lengths": [3, 2],
        "meta": {"source": "tiny", "weight": torch.zeros(1)},
    }
    moved = fn(batch, torch.device("meta"))
    if not isinstance(moved, dict):
        return (
            f"to_device must return a batch of the same kind (here a dict), got {_describe(moved)}"
        )
    if sorted(moved) != sorted(batch):
        return f"the returned dict has keys {sorted(moved)}, expected {sorted(batch)}"
    if not isinstance(moved["ids"], torch.Tensor) or moved["ids"].device.type != "meta":
        return "top-level tensors were not moved: return value.to(device) for a tensor"
    if not isinstance(moved["labels"], list) or len(moved["labels"]) != 2:
        return f"a list must stay a list of the same length, got {_describe(moved['labels'])}"
    if any(not isinstance(t, torch.Tensor) or t.device.type != "meta" for t in moved["labels"]):
        return "tensors inside lists were not moved: recurse into every element of a list"
    if not isinstance(moved["pair"], tuple):
        return (
            f"a tuple must stay a tuple, got {_describe(moved['pair'])}: rebuild it with tuple(...)"
        )
    if not isinstance(moved["pair"][0], torch.Tensor) or moved["pair"][0].device.type != "meta":
        return "tensors inside tuples were not moved: recurse into tuples too"
    if moved["pair"][1] != "keep me" or moved["lengths"] != [3, 2]:
        return "values that are not tensors (strings, ints) must be returned unchanged"
    inner = moved["meta"]
    if not isinstance(inner, dict) or inner.get("source") != "tiny":
        return "nested dicts must stay dicts with the same keys and values"
    if not isinstance(inner["weight"], torch.Tensor) or inner["weight"].device.type != "meta":
        return "tensors inside nested dicts were not moved: recurse into dict values"
    if batch["ids"] is not ids or ids.device.type != "cpu":
        return "do not modify the input batch: build and return a new container"
    if tuple(moved["ids"].shape) != (2, 3) or moved["ids"].dtype != torch.long:
        return "moving must keep each tensor's shape and dtype: use tensor.to(device) only"
    return None
