"""Each appendix-A checker accepts a right answer and rejects the usual wrong ones with a useful hint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gptlab.exercises import NotSolved, appa, check, registered


def _hint(checker, answer) -> str | None:
    """The checker's verdict as ``check`` sees it: None when right, else the hint text."""
    try:
        return checker(answer)
    except NotSolved as exc:
        return str(exc)


def test_all_appendix_a_exercises_are_registered():
    ids = [k for k in registered() if k.startswith("A.")]
    assert ids == ["A.1", "A.2", "A.3", "A.4", "A.5"]


def test_stub_reports_not_solved(capsys):
    def stub(*args):
        raise NotImplementedError

    assert check("A.1", stub) is False
    assert "not solved yet" in capsys.readouterr().out


# A.1 pairwise distances ----------------------------------------------------------------------


def test_pairwise_accepts_broadcasting_and_cdist(capsys):
    def broadcast(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(dim=-1)

    assert check("A.1", broadcast) is True
    assert "correct" in capsys.readouterr().out
    assert _hint(appa.check_pairwise_sq_dists, lambda a, b: torch.cdist(a, b) ** 2) is None


def test_pairwise_rejects_common_mistakes():
    assert "sum the squared" in _hint(
        appa.check_pairwise_sq_dists, lambda a, b: (a[:, None, :] - b[None, :, :]) ** 2
    )
    assert "square root" in _hint(appa.check_pairwise_sq_dists, torch.cdist)
    assert "transposed" in _hint(
        appa.check_pairwise_sq_dists, lambda a, b: ((b[:, None] - a[None]) ** 2).sum(-1)
    )
    assert "a[i] with b[i]" in _hint(
        appa.check_pairwise_sq_dists, lambda a, b: ((a - b) ** 2).sum(-1)
    )
    assert "expected (5, 5)" in _hint(appa.check_pairwise_sq_dists, lambda a, b: a - b)
    assert "pass your function" in _hint(appa.check_pairwise_sq_dists, torch.zeros(2))


# A.2 cross-entropy gradient ------------------------------------------------------------------


def ce_grad(logits, targets):
    onehot = F.one_hot(targets, logits.size(-1)).to(logits.dtype)
    return (torch.softmax(logits, dim=-1) - onehot) / logits.size(0)


def test_ce_grad_accepts_the_derivation(capsys):
    assert check("A.2", ce_grad) is True
    assert "correct" in capsys.readouterr().out


def test_ce_grad_rejects_missing_mean_sign_and_autograd():
    def no_mean(logits, targets):
        return ce_grad(logits, targets) * logits.size(0)

    assert "divide by N" in _hint(appa.check_cross_entropy_grad, no_mean)
    assert "sign" in _hint(appa.check_cross_entropy_grad, lambda z, t: -ce_grad(z, t))

    def with_autograd(logits, targets):
        z = logits.clone().requires_grad_(True)
        F.cross_entropy(z, targets).backward()
        return z.grad

    assert "by hand" in _hint(appa.check_cross_entropy_grad, with_autograd)


# A.3 MLP module ------------------------------------------------------------------------------


class GoodMLP(nn.Module):
    def __init__(self, d_in, d_hidden, d_out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def test_mlp_accepts_a_right_module(capsys):
    assert check("A.3", GoodMLP) is True
    assert "correct" in capsys.readouterr().out


def test_mlp_rejects_wrong_modules():
    class NoSuper(nn.Module):
        def __init__(self, d_in, d_hidden, d_out):
            self.fc1 = nn.Linear(d_in, d_hidden)

    assert "super().__init__()" in _hint(appa.check_mlp_module, NoSuper)

    class ReLUMLP(GoodMLP):
        def forward(self, x):
            return self.fc2(F.relu(self.fc1(x)))

    assert "ReLU" in _hint(appa.check_mlp_module, ReLUMLP)

    class Linear2(GoodMLP):
        def forward(self, x):
            return self.fc2(self.fc1(x))

    assert "forgot the activation" in _hint(appa.check_mlp_module, Linear2)

    class Renamed(nn.Module):
        def __init__(self, d_in, d_hidden, d_out):
            super().__init__()
            self.layer1 = nn.Linear(d_in, d_hidden)
            self.layer2 = nn.Linear(d_hidden, d_out)

    assert "fc1 and fc2" in _hint(appa.check_mlp_module, Renamed)

    class PlainTensors(nn.Module):
        def __init__(self, d_in, d_hidden, d_out):
            super().__init__()
            self.w = [torch.randn(d_hidden, d_in)]

    assert "no parameters" in _hint(appa.check_mlp_module, PlainTensors)
    assert "class itself" in _hint(appa.check_mlp_module, GoodMLP(3, 8, 2))


# A.4 training loop ---------------------------------------------------------------------------


def fit_line(x, y, *, zero_grad=True, steps=300, broadcast_bug=False):
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        pred = model(x[:, None])
        pred = pred if broadcast_bug else pred.squeeze(1)
        loss = F.mse_loss(pred, y)
        if zero_grad:
            optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.weight.item(), model.bias.item()


def test_fit_line_accepts_a_loop_and_least_squares(capsys):
    assert check("A.4", fit_line) is True
    assert "correct" in capsys.readouterr().out


def test_fit_line_rejects_broadcast_bug_missing_zero_grad_and_few_steps():
    assert "broadcasts to (N, N)" in _hint(
        appa.check_fit_line, lambda x, y: fit_line(x, y, broadcast_bug=True)
    )
    no_zero = _hint(appa.check_fit_line, lambda x, y: fit_line(x, y, zero_grad=False))
    assert no_zero is not None and "zero" in no_zero
    assert "least squares gives" in _hint(appa.check_fit_line, lambda x, y: fit_line(x, y, steps=3))
    assert "tuple (w, b)" in _hint(appa.check_fit_line, lambda x, y: 1.0)


# A.5 devices ---------------------------------------------------------------------------------


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def test_to_device_accepts_a_recursive_mover(capsys):
    assert check("A.5", to_device) is True
    assert "correct" in capsys.readouterr().out


def test_to_device_rejects_shallow_and_in_place_movers():
    def shallow(batch, device):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    assert "inside lists" in _hint(appa.check_to_device, shallow)

    def tuples_to_lists(batch, device):
        if isinstance(batch, dict):
            return {k: tuples_to_lists(v, device) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return [tuples_to_lists(v, device) for v in batch]
        return batch.to(device) if torch.is_tensor(batch) else batch

    assert "tuple must stay a tuple" in _hint(appa.check_to_device, tuples_to_lists)

    def in_place(batch, device):
        moved = to_device(batch, device)
        batch.clear()
        batch.update(moved)
        return batch

    assert "do not modify" in _hint(appa.check_to_device, in_place)
