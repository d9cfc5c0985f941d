"""Shared pytest set-up for unit tests and for the notebooks that `pytest --nbval` re-executes."""

from __future__ import annotations

import os

# Set before any kernel starts, so notebook kernels inherit them: set ordering and plots are
# then reproducible, and no test opens a window.
os.environ.setdefault("PYTHONHASHSEED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
