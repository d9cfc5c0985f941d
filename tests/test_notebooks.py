"""Rules every chapter notebook keeps so that `pytest --nbval` proves it on any machine.

A stored output is compared exactly only when it is the same on every CPU, thread count and
device. Where a value drifts (training losses, long float32 reductions, timings, sampled text),
the cell carries ``nbval-ignore-output`` and must then check the value itself with an
``assert`` — an ignored cell without one would test nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
IGNORE_TAG = "nbval-ignore-output"
ASSERTION = re.compile(r"^\s*assert\b|\bassert_close\(|\bcheck\(|\.check\(", re.MULTILINE)


def _code_cells(path: Path) -> list[dict]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _is_setup(cell: dict) -> bool:
    """The first code cell installs gptlab when it is missing (Colab) and prints the device."""
    return 'find_spec("gptlab")' in _source(cell)


def _ignored(cell: dict) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return IGNORE_TAG in tags or "NBVAL_IGNORE_OUTPUT" in _source(cell)


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 12


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_setup_cell(path: Path) -> None:
    cells = _code_cells(path)
    assert cells and _is_setup(cells[0]), f"{path.name}: the first code cell must install gptlab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_ignored_cell_without_an_assertion(path: Path) -> None:
    offenders = [
        f"code cell {i}: {_source(c).splitlines()[0][:60]!r}"
        for i, c in enumerate(_code_cells(path))
        if _ignored(c) and not _is_setup(c) and not ASSERTION.search(_source(c))
    ]
    assert not offenders, (
        f"{path.name}: cells tagged {IGNORE_TAG} must assert their result within a tolerance "
        f"(nbval does not compare their output): {offenders}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_skipped_cells(path: Path) -> None:
    skipped = [
        i
        for i, c in enumerate(_code_cells(path))
        if "nbval-skip" in c.get("metadata", {}).get("tags", []) or "NBVAL_SKIP" in _source(c)
    ]
    assert not skipped, f"{path.name}: cells {skipped} are never run by nbval"


def test_rule_catches_an_ignored_cell_without_assertion() -> None:
    cell = {"cell_type": "code", "metadata": {"tags": [IGNORE_TAG]}, "source": "print(loss)"}
    assert _ignored(cell) and not ASSERTION.search(_source(cell))
    cell["source"] = "print(loss)\nassert abs(loss - 5.25) < 0.15"
    assert ASSERTION.search(_source(cell))


def _solution_code_cells(path: Path) -> list[dict]:
    """Code cells between a ``{solution-start}`` and its ``{solution-end}`` markdown cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    inside, cells = False, []
    for cell in nb["cells"]:
        text = _source(cell)
        if cell["cell_type"] == "markdown":
            if "{solution-start}" in text:
                inside = True
            if "{solution-end}" in text and text.rfind("{solution-end}") > text.rfind(
                "{solution-start}"
            ):
                inside = False
        elif inside:
            cells.append(cell)
    return cells


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_solutions_are_collapsed_in_jupyterlab_and_colab(path: Path) -> None:
    """The book hides solutions in a dropdown; JupyterLab and Colab must not show them either."""
    cells = _solution_code_cells(path)
    assert cells, f"{path.name} has no exercise solutions"
    for cell in cells:
        meta = cell.get("metadata", {})
        assert meta.get("jupyter", {}).get("source_hidden") is True, _source(cell)[:80]
        assert meta.get("cellView") == "form", _source(cell)[:80]  # Colab: a form hides code
        assert _source(cell).startswith("# @title "), _source(cell)[:80]  # Colab's form title
