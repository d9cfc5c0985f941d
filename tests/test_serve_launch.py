"""``gptlab.serve.launcher``: the server in a child process for the length of a ``with`` block.

Each test starts a real ``python -m gptlab.serve`` on the shipped reference model (a few
seconds: importing torch and FastAPI), so the file is marked slow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from gptlab.serve import launcher as launch_module
from gptlab.serve.launcher import free_port, launch
from gptlab.serve.server import ServeError

pytestmark = pytest.mark.slow


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if something holds it


def test_launch_serves_until_the_block_ends() -> None:
    with launch("reference", threads=1) as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        assert server.api_url == server.base_url + "/v1"
        assert _get(f"{server.base_url}/health")["status"] == "ok"  # ready means loaded
        models = _get(f"{server.api_url}/models")
        assert [m["id"] for m in models["data"]] == ["gptlab-reference"]
        process, log = server.process, server.log
    assert process.poll() is not None  # stopped ...
    assert not _listening(server.port)  # ... and the port is closed
    assert not log.exists()  # the log file is cleaned up


def test_launch_stops_the_server_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError, match="boom"), launch("reference", threads=1) as server:
        process = server.process
        raise RuntimeError("boom")
    assert process.poll() is not None


def test_a_server_that_cannot_start_raises_with_its_output() -> None:
    with (
        pytest.raises(ServeError, match="exited with status 2") as info,
        launch("no-such-model", timeout=60),
    ):
        pass
    assert "neither a known name" in str(info.value)  # the server's own error message


def test_a_server_that_is_not_ready_in_time_is_stopped(monkeypatch) -> None:
    started = []
    real_popen = launch_module.subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(launch_module.subprocess, "Popen", popen)
    with pytest.raises(TimeoutError, match="not ready after"), launch("reference", timeout=0.01):
        pass
    assert started and started[0].poll() is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [({"port": 0}, "port must be"), ({"port": True}, "port must be"), ({"threads": 0}, "threads")],
)
def test_bad_options_are_refused_before_anything_starts(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message), launch("reference", **options):
        pass


def test_a_server_kept_across_cells_stops_once_and_on_demand() -> None:
    server = launch("reference", threads=1)  # as a notebook holds it: no with block
    assert server.running and repr(server) == f"LaunchedServer({server.base_url!r}, running)"
    server.stop()
    server.stop()  # a second stop is harmless
    assert not server.running and not _listening(server.port)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_the_server_dies_with_the_process_that_started_it() -> None:
    """A kernel that crashes (or is killed) must not leave the model running on its port."""
    code = (
        "import os, signal\n"
        "from gptlab.serve.launcher import launch\n"
        "server = launch('reference', threads=1)\n"
        "print(server.process.pid, server.port, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no finally\n"
    )
    parent = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    pid, port = (int(v) for v in parent.stdout.split())
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the server outlived the process that launched it"
    assert not _listening(port)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A dead child that nobody reaped yet is a zombie: gone for our purposes.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"
