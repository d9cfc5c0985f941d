"""Shared pytest set-up for unit tests and for the notebooks that `pytest --nbval` re-executes."""

from __future__ import annotations

import os

import pytest

# Set before any kernel starts, so notebook kernels inherit them and set ordering is reproducible.
# MPLBACKEND is removed: kernels must keep the inline backend, or figure cells produce no
# output and nbval fails. Without a display, matplotlib picks Agg in unit tests anyway.
os.environ.pop("MPLBACKEND", None)
os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# Property tests draw the same examples on every run (CI must not turn red by chance); run
# `pytest --hypothesis-profile=explore` to search with fresh random examples instead.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is a test extra; the notebooks do not need it
    pass
else:
    _hypothesis_settings.register_profile("ci", derandomize=True, database=None)
    _hypothesis_settings.register_profile("explore", max_examples=500)
    _hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module's tiny models on one torch thread (fastest for them; the cores are shared).

    Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load_recipe():
    """``load_recipe("dpo")`` imports ``recipes/dpo.py`` as a module (recipes are scripts, not
    a package), so a test can call its ``main(argv)`` or its functions."""
    import importlib.util
    import pathlib

    folder = pathlib.Path(__file__).resolve().parents[1] / "recipes"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"recipe_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
