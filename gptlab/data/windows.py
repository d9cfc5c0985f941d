"""What a GPT trains on: train/validation splits, windows of token ids, loaders and batches."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from gptlab.data.documents import Document

__all__ = ["TokenWindowDataset", "get_batch", "make_loader", "split_documents", "train_val_split"]

# --------------------------------------------------------------------------------------------
# Train / validation splits
# --------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _check_fraction(val_fraction: float) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")


def train_val_split(data: _T, val_fraction: float = 0.1) -> tuple[_T, _T]:
    """Split a text, list or 1-D tensor into (head, tail): the last ``val_fraction`` validates.

    The tail rather than a random sample, because neighbouring windows overlap: a random split
    would let the model see most of every validation window during training.
    """
    _check_fraction(val_fraction)
    if isinstance(data, torch.Tensor) and data.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of token ids, got shape {tuple(data.shape)}")
    n = len(data)  # type: ignore[arg-type]
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise ValueError(
            f"cannot split {n} items with val_fraction={val_fraction}: one side would be "
            "empty; use more data or a fraction nearer 0.5"
        )
    return data[: n - n_val], data[n - n_val :]  # type: ignore[index]


def split_documents(
    documents: Sequence[Document], val_fraction: float = 0.2, seed: int = 0, stratify: bool = True
) -> tuple[list[Document], list[Document]]:
    """Split whole documents into train and validation, so no play is on both sides.

    With ``stratify=True`` each genre is split on its own (with at least one validation document
    per genre that has two or more), so a classifier is validated on every label. The draw is
    seeded; each side keeps the input order.
    """
    _check_fraction(val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    documents = list(documents)
    if len(documents) < 2:
        raise ValueError(f"need at least 2 documents to split, got {len(documents)}")
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(documents):
        groups.setdefault(doc.genre if stratify else "", []).append(i)
    rng = random.Random(seed)
    val_indices: set[int] = set()
    for key in sorted(groups):
        members = groups[key]
        n_val = round(len(members) * val_fraction)
        n_val = min(max(n_val, 1 if len(members) >= 2 else 0), len(members) - 1)
        val_indices.update(rng.sample(members, n_val))
    if not val_indices:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no validation document; raise it or set "
            "stratify=False"
        )
    train = [d for i, d in enumerate(documents) if i not in val_indices]
    val = [d for i, d in enumerate(documents) if i in val_indices]
    return train, val


# --------------------------------------------------------------------------------------------
# Windows of token ids
# --------------------------------------------------------------------------------------------


def _as_ids(ids: Any, what: str = "ids") -> torch.Tensor:
    tensor = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
    if tensor.numel() == 0 and not isinstance(ids, torch.Tensor):
        tensor = tensor.long()  # an empty list has no dtype to infer; report its length instead
    if tensor.dim() != 1:
        raise ValueError(
            f"{what} must be 1-D (one long stream of token ids), got shape {tuple(tensor.shape)}"
        )
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{what} must hold integer token ids, got dtype {tensor.dtype}")
    return tensor


def _check_positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, got {value}")


class TokenWindowDataset(Dataset):
    """Windows of ``context_length`` ids taken every ``stride`` ids, with next-token targets.

    Item ``i`` is ``(x, y)`` with ``x = ids[s : s + T]`` and ``y = ids[s + 1 : s + T + 1]``,
    ``s = i * stride``: the target at every position is the token that follows it. A stride
    equal to the context length gives windows that do not overlap.
    """

    def __init__(self, ids: Any, context_length: int, stride: int) -> None:
        _check_positive_int(context_length, "context_length")
        _check_positive_int(stride, "stride")
        self.ids = _as_ids(ids).long()
        self.context_length = context_length
        self.stride = stride
        n = len(self.ids)
        if n < context_length + 1:
            raise ValueError(
                f"{n} token ids are too few for one window of context_length={context_length}: "
                f"a window needs {context_length + 1} (its inputs plus one target); use more "
                "text or a smaller context_length"
            )
        self._len = (n - context_length - 1) // stride + 1

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = index * self.stride
        window = self.ids[start : start + self.context_length + 1]  # (T + 1,)
        return window[:-1], window[1:]


def make_loader(
    ids: Any,
    context_length: int,
    stride: int,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
) -> DataLoader:
    """A DataLoader of ``(x, y)`` batches of shape ``(batch_size, context_length)``.

    Shuffling draws from a generator seeded with ``seed``, so two loaders built alike yield the
    same batches in the same order.
    """
    _check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    dataset = TokenWindowDataset(ids, context_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise ValueError(
            f"only {len(dataset)} windows but batch_size={batch_size} with drop_last=True: the "
            "loader would yield no batch; lower batch_size or stride, or pass drop_last=False"
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=generator
    )


def get_batch(
    ids: torch.Tensor,
    batch_size: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` random windows: ``x`` and its next-token targets ``y``, each (B, T).

    Starts are drawn uniformly from every position where a full window plus its target fits;
    pass a seeded ``torch.Generator`` (on the CPU) to make the draw reproducible.
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a 1-D torch.Tensor of token ids, got {type(ids).__name__}")
    ids = _as_ids(ids)
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(block_size, "block_size")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    if len(ids) < block_size + 1:
        raise ValueError(
            f"{len(ids)} token ids are too few for block_size={block_size}: a window needs "
            f"{block_size + 1}; use more text or a smaller block_size"
        )
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = (starts[:, None] + torch.arange(block_size)).to(ids.device)  # (B, T)
    x = ids[offsets].long()  # (B, T)
    y = ids[offsets + 1].long()  # (B, T)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
