"""Chapter 6 with the real GPT-2: the notebook's online path, run whenever the hub answers.

The stored notebook uses an offline stand-in (``USE_REAL_GPT2 = False``), which ``pytest --nbval``
checks everywhere. Readers on Colab flip that one line to load the real 124M ``gpt2``; this test
does the same and executes the whole notebook, so the online path cannot rot unnoticed. It is
skipped, with the reason, when a 3-second connection probe to huggingface.co fails.
"""

from __future__ import annotations

import copy
import os
import pathlib
import socket
import threading

import nbformat
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "06_loading_gpt2.ipynb"
SWITCH_OFF = "USE_REAL_GPT2 = False"
SWITCH_ON = "USE_REAL_GPT2 = True"
PROBE_TIMEOUT_S = 3.0


def hub_unreachable(host: str = "huggingface.co", port: int = 443) -> str | None:
    """``None`` when a TCP connection to the hub opens within 3 s, else the reason it did not.

    The probe runs in a daemon thread because name resolution ignores socket timeouts.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{host}:{port}: {err}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S)
    return outcome[0] if outcome else f"{host}:{port}: no answer within {PROBE_TIMEOUT_S:.0f} s"


def with_real_gpt2(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with its one switch cell flipped to the real GPT-2 (papermill-style)."""
    nb = copy.deepcopy(nb)
    cells = [c for c in nb.cells if c.cell_type == "code" and SWITCH_OFF in c.source]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one code cell with {SWITCH_OFF!r}, found {len(cells)}")
    cells[0].source = cells[0].source.replace(SWITCH_OFF, SWITCH_ON)
    return nb


def _stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


def test_the_switch_is_one_marked_line_that_flips():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assigned = [c for c in nb.cells if c.cell_type == "code" and "USE_REAL_GPT2 =" in c.source]
    assert len(assigned) == 1, "USE_REAL_GPT2 must be set in exactly one cell"
    assert "parameters" in assigned[0].metadata.get("tags", [])
    assert SWITCH_OFF in assigned[0].source  # the stored notebook runs offline
    flipped = with_real_gpt2(nb)
    switch = [c for c in flipped.cells if "USE_REAL_GPT2 =" in c.get("source", "")]
    assert [c.source.count(SWITCH_ON) for c in switch] == [1]
    assert SWITCH_OFF in assigned[0].source  # the original is untouched
    with pytest.raises(ValueError, match="exactly one code cell"):
        with_real_gpt2(flipped)


def test_probe_reports_why_a_host_is_unreachable():
    why = hub_unreachable("localhost", 9)  # the discard port: nothing listens there
    assert why is not None and why.startswith("localhost:9")


@pytest.mark.network
@pytest.mark.slow
def test_notebook_runs_with_the_real_gpt2():
    why = hub_unreachable()
    if why is not None:
        pytest.skip(f"hub unreachable: {why}")
    from nbclient import NotebookClient

    nb = with_real_gpt2(nbformat.read(NOTEBOOK, as_version=4))
    client = NotebookClient(
        nb,
        timeout=1200,  # per cell: the first one downloads 548 MB
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError if any assertion in the notebook fails
    out = _stdout(nb)
    assert "checkpoint: the real gpt2 from the hub" in out
    assert "n_positions = 1024" in out and "n_layer = 12" in out
    assert "124,439,808 parameters" in out
    assert "h.0.attn.c_attn.weight" in out  # the hub file's own names (no prefix)
    assert out.count(": correct") == 4  # every exercise solution still passes
