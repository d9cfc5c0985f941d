"""Figures: titles, axis labels, the tokens-seen axis, heatmap tick labels, top-k bars."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from gptlab.plotting import plot_attention, plot_loss_curves, plot_next_token_probs  # noqa: E402
from gptlab.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def make_history(n: int = 50, tokens_per_step: int = 512) -> History:
    steps = list(range(1, n + 1))
    return History(
        steps=steps,
        train_loss=[4.0 * 0.97**s for s in steps],
        lr=[1e-3] * n,
        tokens_seen=[s * tokens_per_step for s in steps],
        grad_norm=[1.0] * n,
        eval_steps=[0, 25, 50],
        val_loss=[4.2, 2.1, 1.1],
    )


def secondary_axes(ax):
    return [child for child in ax.get_children() if type(child).__name__ == "SecondaryAxis"]


def test_loss_curves_have_labels_title_and_tokens_axis():
    ax = plot_loss_curves(make_history())
    assert ax.figure in map(plt.figure, plt.get_fignums())  # a pyplot figure: notebooks show it
    assert ax.get_title() == "Training and validation loss"
    assert ax.get_xlabel() == "optimizer step"
    assert "loss" in ax.get_ylabel()
    labels = [line.get_label() for line in ax.get_lines()]
    assert "validation" in labels and any(label.startswith("train") for label in labels)
    val_line = ax.get_lines()[labels.index("validation")]
    np.testing.assert_array_equal(val_line.get_xdata(), [0, 25, 50])
    np.testing.assert_array_equal(val_line.get_ydata(), [4.2, 2.1, 1.1])
    (top,) = secondary_axes(ax)
    assert top.get_xlabel() == "tokens seen"
    forward, inverse = top._functions
    np.testing.assert_allclose(forward(np.array([10.0, 50.0, 0.0])), [5120, 25600, 0])
    np.testing.assert_allclose(inverse(np.array([5120.0])), [10.0])


def test_loss_curves_accept_a_dict_and_an_existing_axes():
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_loss_curves(make_history(3).to_dict(), ax=ax, title="my run")
    assert out is ax and ax.get_title() == "my run"


def test_loss_curves_reject_bad_input():
    with pytest.raises(TypeError, match="History"):
        plot_loss_curves([1, 2, 3])
    with pytest.raises(ValueError, match="empty"):
        plot_loss_curves(History())
    bad = make_history(3).to_dict()
    bad["train_loss"] = bad["train_loss"][:2]
    with pytest.raises(ValueError, match="equal lengths"):
        plot_loss_curves(bad)


def test_attention_heatmap_tick_labels_are_the_tokens():
    tokens = ["The", " cat", " sat", " $5", " down"]
    w = torch.softmax(
        torch.randn(5, 5).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf")), -1
    )
    ax = plot_attention(w, tokens, title="layer 0, head 1")
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == tokens
    assert ax.get_title() == "layer 0, head 1"
    assert ax.get_xlabel().startswith("key") and ax.get_ylabel().startswith("query")
    np.testing.assert_allclose(ax.get_images()[0].get_array(), w.numpy(), rtol=1e-6)
    ax.figure.canvas.draw()  # renders ("$" must not be parsed as mathtext)


def test_attention_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"select one example and one head"):
        plot_attention(torch.rand(1, 2, 3, 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="got 2 tokens for 3 key positions"):
        plot_attention(torch.rand(3, 3), ["a", "b"])


def test_next_token_bars_show_the_top_k():
    vocab = [f"tok{i}" for i in range(20)]
    probs = torch.softmax(torch.arange(20, dtype=torch.float32) / 3, dim=-1)
    ax = plot_next_token_probs(probs, vocab, k=5)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["'tok19'", "'tok18'", "'tok17'", "'tok16'", "'tok15'"]
    widths = [bar.get_width() for bar in ax.patches]
    np.testing.assert_allclose(widths, probs.sort(descending=True).values[:5].numpy(), rtol=1e-6)
    assert ax.yaxis_inverted()  # most likely on top
    assert ax.get_title() == "Top-5 next-token probabilities" and ax.get_xlabel() == "probability"


def test_next_token_bars_with_a_tokenizer():
    class Chars:
        def decode(self, ids):
            return "".join("ab c"[i] for i in ids)

    ax = plot_next_token_probs(torch.tensor([0.1, 0.2, 0.6, 0.1]), Chars(), k=2)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["' '", "'b'"]
    with pytest.raises(ValueError, match="look like logits"):
        plot_next_token_probs(torch.tensor([2.0, -1.0, 0.5]), Chars())
