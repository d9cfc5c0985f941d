"""Serving a model behind the OpenAI API, with a chat page: ``python -m gptlab serve``.

- :mod:`gptlab.serve.backend`: the :class:`Backend` protocol the server talks to, and
  :class:`ModelBackend`, which runs a gptlab model with a chat template;
- :mod:`gptlab.serve.queue`: one generation at a time, a bounded FIFO, deadlines, cancellation;
- :mod:`gptlab.serve.schemas`: OpenAI's request, response and error objects;
- :mod:`gptlab.serve.app`: the FastAPI app (``/v1/models``, ``/v1/chat/completions``,
  ``/v1/completions``, ``/health``, the chat page at ``/``);
- :mod:`gptlab.serve.server`: :func:`serve` and the command line (:func:`add_arguments`,
  :func:`run`);
- :mod:`gptlab.serve.launcher`: :func:`launch`, the server in a child process for the length of a
  ``with`` block (notebooks, tests, benchmarks).

Names load on first use, so the command line can add its options without importing FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backend": "gptlab.serve.backend",
    "ChatTemplate": "gptlab.serve.backend",
    "Delta": "gptlab.serve.backend",
    "GPTLabChatTemplate": "gptlab.serve.backend",
    "Message": "gptlab.serve.backend",
    "ModelBackend": "gptlab.serve.backend",
    "SamplingParams": "gptlab.serve.backend",
    "load_backend": "gptlab.serve.backend",
    "GenerationQueue": "gptlab.serve.queue",
    "create_app": "gptlab.serve.app",
    "ServeError": "gptlab.serve.server",
    "add_arguments": "gptlab.serve.server",
    "run": "gptlab.serve.server",
    "serve": "gptlab.serve.server",
    "LaunchedServer": "gptlab.serve.launcher",
    "free_port": "gptlab.serve.launcher",
    "launch": "gptlab.serve.launcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gptlab.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
