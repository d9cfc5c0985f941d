"""Run ``gptlab serve`` in a child process, stopped when you are done: :func:`launch`.

A notebook, a test or a benchmark that talks to the server over HTTP needs the same three
steps: pick a free loopback port, start ``python -m gptlab.serve`` and wait until ``/health``
says the model is loaded, and stop the process afterwards even when the code in between
fails (or the Python process that started it dies). :func:`launch` does all three::

    with launch("smollm2-135m-instruct") as server:
        client = openai.OpenAI(base_url=server.api_url, api_key="unused")
        ...

or, for a server that lives across several notebook cells, ``server = launch(...)`` and later
``server.stop()``.

The server's output goes to a temporary log file (a pipe nobody reads would fill up and block
the server); when it fails to start, its last lines are part of the error.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from gptlab.serve.server import PARENT_PID_ENV, ServeError

__all__ = ["LaunchedServer", "free_port", "launch", "wait_ready"]

LOG_TAIL = 2000  # characters of the server's log shown when it fails to start


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _health(base_url: str) -> dict | None:
    """The ``/health`` body when the server answers 200, else None (not up or still loading)."""
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_ready(base_url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``base_url/health`` answers 200 (the model is loaded).

    Raises :class:`ServeError` if ``process`` exits first, ``TimeoutError`` after ``timeout``
    seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServeError(
                f"the server exited with status {process.returncode} before it was ready"
            )
        if _health(base_url) is not None:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the server at {base_url} was not ready after {timeout:g} s")


class LaunchedServer:
    """A ``gptlab serve`` child process that :func:`launch` started and found ready.

    ``base_url`` is ``http://127.0.0.1:PORT``, ``api_url`` the same plus ``/v1`` (what an
    OpenAI client takes). :meth:`stop` ends it; so does leaving a ``with`` block, the end of
    this Python process (``atexit``), and even this process being killed (the server watches
    its parent process).
    """

    def __init__(self, process: subprocess.Popen, port: int, log: pathlib.Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.base_url}/v1"

    def output(self) -> str:
        """Everything the server has written to stdout and stderr so far ("" once stopped)."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self.process.poll() is None

    def stop(self, grace: float = 30.0) -> None:
        """Stop the server: SIGTERM (requests in flight finish), SIGKILL after ``grace`` s.

        Safe to call more than once.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LaunchedServer({self.base_url!r}, {state})"


def launch(
    model: str | os.PathLike[str] = "reference",
    *,
    port: int | None = None,
    api_key: str | None = None,
    threads: int | None = None,
    timeout: float = 120.0,
    extra_args: Sequence[str] = (),
) -> LaunchedServer:
    """Start ``python -m gptlab.serve --model MODEL`` on 127.0.0.1 and wait until it is ready.

    Use it in a ``with`` block (the server stops when the block ends, also with an exception),
    or keep the result and call :meth:`LaunchedServer.stop` (as a notebook does: a server that
    lives over several cells). ``port=None`` takes a free one; ``api_key`` is passed as
    ``--api-key``; ``threads`` sets the server's ``OMP_NUM_THREADS`` (``None`` inherits this
    process's environment); ``extra_args`` are more ``gptlab serve`` options, e.g.
    ``["--max-queue", "4"]``. Raises :class:`ServeError` (with the end of the server's log) if
    it exits before it is ready and ``TimeoutError`` if it is not ready within ``timeout`` s.
    """
    if port is None:
        port = free_port()
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
        raise ValueError(f"port must be an int in [1, 65535] or None, got {port!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be None or an int >= 1, got {threads!r}")
    command = [sys.executable, "-m", "gptlab.serve", "--model", os.fspath(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if api_key is not None:
        command += ["--api-key", api_key]
    command += [str(arg) for arg in extra_args]
    # The server watches this process and stops when it is gone (no preexec_fn: unsafe in a
    # process with threads, such as a Jupyter kernel).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid())}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log = pathlib.Path(tempfile.mkstemp(prefix="gptlab-serve-", suffix=".log")[1])
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = LaunchedServer(process, port, log)
    atexit.register(server.stop)
    try:
        wait_ready(server.base_url, process, timeout)
    except (ServeError, TimeoutError) as err:
        tail = server.output()[-LOG_TAIL:]
        server.stop()
        raise type(err)(f"{err}; its output ends with:\n{tail}") from None
    except BaseException:  # e.g. Ctrl-C while waiting
        server.stop()
        raise
    return server
