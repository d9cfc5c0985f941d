"""The sinusoidal position encoding of the original Transformer (chapter 3)."""

from __future__ import annotations

import math

import pytest
import torch

from gptlab.model import sinusoidal_positions


def test_matches_the_papers_formula_element_by_element():
    pe = sinusoidal_positions(7, 6)
    assert pe.shape == (7, 6) and pe.dtype == torch.float64
    for pos in range(7):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-15)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-15)


def test_position_zero_and_the_base():
    pe = sinusoidal_positions(3, 8, base=100.0, dtype=torch.float32)
    assert pe.dtype == torch.float32
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 4))
    # the slowest pair has frequency base^(-(dim-2)/dim)
    assert pe[1, 6].item() == pytest.approx(math.sin(100.0 ** (-6 / 8)), abs=1e-7)


def test_a_shift_is_a_rotation_of_each_pair():
    d, k = 16, 5
    pe = sinusoidal_positions(40, d)
    omega = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.zeros(d, d, dtype=torch.float64)
    for i, w in enumerate(omega.tolist()):
        c, s = math.cos(k * w), math.sin(k * w)
        rot[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor(
            [[c, -s], [s, c]], dtype=torch.float64
        )
    torch.testing.assert_close(pe[k:], pe[:-k] @ rot, atol=1e-12, rtol=0)
    # and the dot product of two positions depends only on their distance
    dots = (pe[:-k] * pe[k:]).sum(-1)
    torch.testing.assert_close(dots, torch.full_like(dots, torch.cos(k * omega).sum().item()))


@pytest.mark.parametrize(("n", "d"), [(0, 4), (4, 0), (4, 5), (2.0, 4), (True, 4)])
def test_rejects_bad_sizes(n, d):
    with pytest.raises(ValueError, match="positive int|even"):
        sinusoidal_positions(n, d)
