"""Draw the GPT Lab logo and favicon: a causal attention mask (lower-triangular grid).

Run once when the design changes: ``python book/_scripts/make_logo.py``; the PNGs are committed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "images"
N = 5  # grid size of the mask
COLORS = ["#1b4965", "#2a6f97", "#468faf", "#61a5c2", "#89c2d9"]  # darker = more recent token


def draw_mask(ax: plt.Axes, x0: float, y0: float, size: float) -> None:
    """A lower-triangular N x N grid of rounded squares: query row i may attend to keys j <= i."""
    cell = size / N
    for i in range(N):
        for j in range(i + 1):
            ax.add_patch(
                FancyBboxPatch(
                    (x0 + j * cell + 0.06 * cell, y0 + (N - 1 - i) * cell + 0.06 * cell),
                    0.88 * cell,
                    0.88 * cell,
                    boxstyle=f"round,pad=0,rounding_size={0.18 * cell}",
                    facecolor=COLORS[i - j],
                    edgecolor="none",
                )
            )


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    metadata = {"Software": None}  # keep the PNG bytes free of version strings

    fig = plt.figure(figsize=(4.0, 1.2), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 4.0)
    ax.set_ylim(0, 1.2)
    ax.axis("off")
    draw_mask(ax, 0.1, 0.1, 1.0)
    ax.text(1.3, 0.6, "GPT Lab", fontsize=38, fontweight="bold", color="#1b4965", va="center")
    fig.savefig(IMAGES / "logo.png", transparent=True, metadata=metadata)
    plt.close(fig)

    fig = plt.figure(figsize=(0.64, 0.64), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    draw_mask(ax, 0.0, 0.0, 1.0)
    fig.savefig(IMAGES / "favicon.png", transparent=True, metadata=metadata)
    plt.close(fig)


if __name__ == "__main__":
    main()
