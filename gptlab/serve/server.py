"""Starting the server: :func:`serve`, and the ``gptlab serve`` command line (add_arguments, run).

The port opens at once and the model loads in a background thread (requests get a 503 until it
is ready; a model that fails to load stops the server with its error). By default the server
listens on 127.0.0.1 only. Listening anywhere else without an API key is refused: anyone who
can reach the port could use the model.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
import time
from typing import Any

__all__ = ["ServeError", "add_arguments", "check_bind", "is_loopback", "run", "serve"]

API_KEY_ENV = "GPTLAB_API_KEY"
#: Set by :func:`gptlab.serve.launch` to its own process id: the server stops when that process
#: is gone (even killed with SIGKILL), so a notebook or test never leaves a server behind.
PARENT_PID_ENV = "GPTLAB_SERVE_PARENT_PID"


class ServeError(RuntimeError):
    """The server could not start or stopped because the model failed to load."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse (ValueError, one line) to listen beyond loopback without an API key."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be an address such as 127.0.0.1, got {host!r}")
    if not is_loopback(host) and api_key is None:
        raise ValueError(
            f"refusing to listen on {host} without an API key (anyone who can reach it could use "
            f"the model); pass --api-key KEY or set {API_KEY_ENV}, or listen on 127.0.0.1"
        )


def serve(
    model: str | os.PathLike[str] = "reference",
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = 32,
    request_timeout: float = 120.0,
    *,
    device: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``model`` behind the OpenAI API at ``http://host:port/v1`` until stopped.

    ``model`` is ``"reference"`` or a checkpoint folder; ``api_key`` (if set) is required as
    ``Authorization: Bearer KEY`` on ``/v1/*``; ``max_queue`` requests may wait for the model
    (429 beyond); each request has ``request_timeout`` seconds. SIGTERM or Ctrl-C stop it
    gracefully: requests in flight finish, then the worker stops. Raises :class:`ServeError`
    if the model fails to load.
    """
    import uvicorn

    from gptlab.serve.app import create_app
    from gptlab.serve.backend import load_backend, resolve_model

    if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
        raise ValueError("api_key must be a non-empty string, or None for no authentication")
    check_bind(host, api_key)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    resolve_model(model)  # a wrong name fails now, not after the port opened
    failure: list[BaseException] = []
    server: Any = None

    def loader() -> Any:
        try:
            return load_backend(model, device)
        except Exception as err:
            failure.append(err)
            server.should_exit = True
            raise

    app = create_app(
        loader=loader,
        api_key=api_key,
        max_queue=max_queue,
        request_timeout=request_timeout,
        loopback_only=is_loopback(host),
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(request_timeout) + 5,  # no request lasts longer
    )
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"gptlab serve: chat page http://{shown}:{port}/, API http://{shown}:{port}/v1",
        file=sys.stderr,
    )
    _stop_with_parent(server)
    server.run()
    if failure:
        raise ServeError(f"the model failed to load: {failure[0]}")


def _stop_with_parent(server: Any) -> None:
    """If :data:`PARENT_PID_ENV` names the process that started us, stop gracefully (as on
    SIGTERM) once it is gone: an orphan is re-parented, so ``os.getppid()`` changes."""
    text = os.environ.get(PARENT_PID_ENV)
    if not text:
        return
    try:
        parent = int(text)
    except ValueError:
        print(
            f"gptlab serve: note: ignoring {PARENT_PID_ENV}={text!r} (not a pid)", file=sys.stderr
        )
        return

    def watch() -> None:
        while not server.should_exit:
            if os.getppid() != parent:
                server.should_exit = True
                return
            time.sleep(0.25)

    threading.Thread(target=watch, name="gptlab-parent-watch", daemon=True).start()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``gptlab serve``'s options to ``parser`` (the CLI's ``serve`` sub-command)."""
    parser.add_argument(
        "--model",
        default="reference",
        metavar="NAME|DIR",
        help="'reference' (the book's shipped model), 'smollm2-135m-instruct' or a checkpoint folder from 'gptlab train'",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (beyond loopback needs --api-key)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV} if set)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=32,
        metavar="N",
        help="requests that may wait for the model; more get HTTP 429",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds a request may wait and run before it fails",
    )
    parser.add_argument("--device", default=None, help="'cpu' (default), 'cuda', 'mps' or 'auto'")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="how much the server logs",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``gptlab serve`` with parsed ``args``; return the exit status (2: bad arguments)."""
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    try:
        serve(
            model=args.model,
            host=args.host,
            port=args.port,
            api_key=api_key,
            max_queue=args.max_queue,
            request_timeout=args.request_timeout,
            device=args.device,
            log_level=args.log_level,
        )
    except (ValueError, TypeError) as err:
        print(f"gptlab serve: error: {err}", file=sys.stderr)
        return 2
    except ServeError as err:
        print(f"gptlab serve: error: {err}", file=sys.stderr)
        return 1
    return 0
