"""Run model-written code against unit tests in a separate, fenced-in Python process.

A generated function must be *run* to know whether it works, and code written by a model can
loop forever, eat memory, delete files or open connections. :func:`run_tests` runs the program
and its tests in a fresh ``python -I -B`` process (isolated: no user site-packages, no
``PYTHON*`` variables, no bytecode written) and always comes back with an
:class:`ExecutionResult` whose ``reason`` is one of ``passed``, ``failed`` (an ``assert``
failed), ``timeout``, ``memory``, ``error`` (any other exception, a crash) or ``forbidden``.

What is enforced by the operating system (Linux; macOS enforces all but the memory limit):

- wall time: the process group is killed after ``timeout`` seconds;
- CPU time (``RLIMIT_CPU``), address space (``RLIMIT_AS``: allocations past it raise
  ``MemoryError``), size of any file written, stdout and stderr included (``RLIMIT_FSIZE``),
  no core dumps;
- a fresh temporary working directory (also ``HOME`` and ``TMPDIR``), deleted afterwards, and an
  environment with nothing of the parent's in it;
- stdout and stderr captured, and cut to ``max_output_bytes`` each.

What is enforced by an audit hook (PEP 578) installed before the program runs: creating or
resolving sockets, starting processes (``subprocess``, ``os.system``, ``fork``, ``exec``),
sending signals, loading ``ctypes``, changing resource limits, and opening, creating, renaming
or deleting files outside the working directory are refused with ``PermissionError`` and
recorded, so the run is counted ``forbidden`` even when the program catches the exception.

What is *not* guaranteed: audit hooks are not a security boundary. They stop accidents and
ordinary code, not a program written to escape (for example through ``os.open`` with
``dir_fd``, or by reading the harness's own memory); reading files is allowed. For code you do
not trust at all, run this inside a container or virtual machine without network access.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gptlab.evaluate._checks import check_int

__all__ = ["REASONS", "ExecutionResult", "run_many", "run_tests"]

REASONS = ("passed", "failed", "timeout", "memory", "error", "forbidden")
_DETAIL_CHARS = 2000

# The program that runs inside the child. It reads its job from stdin, sets the limits, installs
# the audit hook, runs the program and the tests, and reports on a pipe of its own (not stdout,
# which the program may print anything to).
_RUNNER = r"""
import json, os, resource, sys, traceback

def main():
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    sys.stdin = open(os.devnull)
    channel = os.fdopen(job["result_fd"], "w", encoding="utf-8")
    root = os.path.realpath(os.getcwd())
    unenforced = []
    for name, soft, hard in (("RLIMIT_AS", job["memory_bytes"], job["memory_bytes"]),
                             ("RLIMIT_CPU", job["cpu_seconds"], job["cpu_seconds"] + 1),
                             ("RLIMIT_FSIZE", job["file_bytes"], job["file_bytes"]),
                             ("RLIMIT_CORE", 0, 0)):
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError):
            unenforced.append(name)
    violations = []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked = {
        "socket.__new__": "creating a socket", "socket.connect": "connecting a socket",
        "socket.bind": "binding a socket", "socket.getaddrinfo": "resolving a host name",
        "socket.gethostbyname": "resolving a host name", "subprocess.Popen": "starting a process",
        "os.system": "starting a process", "os.exec": "starting a process",
        "os.posix_spawn": "starting a process", "os.spawn": "starting a process",
        "os.fork": "forking", "os.forkpty": "forking", "os.kill": "sending a signal",
        "os.killpg": "sending a signal", "signal.pthread_kill": "sending a signal",
        "ctypes.dlopen": "loading a C library", "ctypes.dlsym": "loading a C library",
        "resource.setrlimit": "changing resource limits", "resource.prlimit": "changing resource limits",
    }
    path_events = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,),
                   "os.chmod": (0,), "os.chown": (0,), "os.link": (1,), "os.symlink": (1,),
                   "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,)}

    def inside(path):
        if isinstance(path, int):
            return True  # a descriptor the process already holds
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(root + os.sep) or full == os.devnull

    def refuse(what):
        violations.append(what)
        raise PermissionError("sandbox: " + what + " is not allowed")

    def hook(event, args):
        if event in blocked:
            refuse(blocked[event])
        elif event == "import" and args[0] in ("ctypes", "_ctypes"):
            refuse("importing ctypes")
        elif event == "open":
            path, mode, flags = args
            writing = bool((flags or 0) & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing and not inside(path):
                refuse("writing " + repr(os.fsdecode(path)) + " outside the working directory")
        elif event in path_events:
            for i in path_events[event]:
                if not inside(args[i]):
                    refuse(event + " on " + repr(args[i]) + " outside the working directory")

    def describe(exc, source, filename):
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        tb = exc.__traceback__
        line = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == filename:
                line = tb.tb_lineno
            tb = tb.tb_next
        lines = source.splitlines()
        if line is not None and 0 < line <= len(lines):
            text = filename + " line " + str(line) + ": " + lines[line - 1].strip() + "\n" + text
        return text

    sys.addaudithook(hook)
    namespace = {"__name__": "__sandbox__"}
    reason, detail = "passed", ""
    for source, filename in ((job["program"], "<program>"), (job["tests"], "<tests>")):
        try:
            exec(compile(source, filename, "exec"), namespace)
        except MemoryError as exc:
            reason, detail = "memory", describe(exc, source, filename)
        except AssertionError as exc:
            failed = "failed" if filename == "<tests>" else "error"
            reason, detail = failed, describe(exc, source, filename)
        except BaseException as exc:
            reason, detail = "error", describe(exc, source, filename)
        if reason != "passed":
            break
    if violations:
        reason, detail = "forbidden", "; ".join(dict.fromkeys(violations))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    channel.write("\n" + json.dumps({"reason": reason, "detail": detail[: job["detail_chars"]],
                                     "unenforced": unenforced}) + "\n")
    channel.flush()
    os._exit(0)  # skip atexit handlers and threads the program may have left behind

main()
"""


@dataclass(frozen=True)
class ExecutionResult:
    """What happened to one program: ``passed`` is True only when every test passed."""

    passed: bool
    reason: str
    detail: str
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


def _check_limit(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite number > 0, got {value}")
    return float(value)


def _read_capped(handle: Any, limit: int) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    text = handle.read(limit).decode("utf-8", errors="replace")
    if size > limit:
        text += f"\n[... {size - limit:,} more bytes cut]"
    return text


def _read_channel(fd: int) -> dict[str, Any] | None:
    data = b""
    while len(data) < (1 << 20):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line]
    try:
        report = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None
    return report if isinstance(report, dict) and report.get("reason") in REASONS else None


def run_tests(
    program: str,
    tests: str,
    *,
    timeout: float = 5.0,
    memory_mb: int = 512,
    file_mb: int = 16,
    max_output_bytes: int = 10_000,
) -> ExecutionResult:
    """Run ``program`` then ``tests`` (plain ``assert`` statements) in one sandboxed process.

    ``timeout`` is wall-clock seconds (the CPU limit is the same, rounded up); ``memory_mb``
    bounds the address space; ``file_mb`` any file written, captured output included.
    """
    if not isinstance(program, str) or not isinstance(tests, str):
        raise TypeError("program and tests must both be str (Python source)")
    timeout = _check_limit(timeout, "timeout")
    check_int(memory_mb, "memory_mb", 32)
    check_int(file_mb, "file_mb")
    check_int(max_output_bytes, "max_output_bytes", 0)
    if os.name != "posix":
        raise RuntimeError("the sandbox needs a POSIX system (Linux or macOS) for its limits")
    workdir = tempfile.mkdtemp(prefix="gptlab-sandbox-")
    read_fd, write_fd = os.pipe()
    job = {
        "program": program,
        "tests": tests,
        "result_fd": write_fd,
        "memory_bytes": memory_mb << 20,
        "cpu_seconds": math.ceil(timeout),
        "file_bytes": file_mb << 20,
        "detail_chars": _DETAIL_CHARS,
    }
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    start = time.monotonic()
    timed_out = False
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _RUNNER],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env=env,
                pass_fds=(write_fd,),
                start_new_session=True,  # its own process group, killed as a whole
            )
            os.close(write_fd)
            write_fd = -1
            try:
                try:
                    proc.communicate(json.dumps(job).encode("utf-8"), timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            seconds = time.monotonic() - start
            report = _read_channel(read_fd)
            stdout = _read_capped(out, max_output_bytes)
            stderr = _read_capped(err, max_output_bytes)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        shutil.rmtree(workdir, ignore_errors=True)
    if timed_out:
        reason, detail = "timeout", f"still running after {timeout:g} s (wall clock); killed"
    elif report is not None:
        reason, detail = report["reason"], report["detail"]
    elif proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        reason, detail = "timeout", f"used more than {math.ceil(timeout)} s of CPU time; killed"
    elif "MemoryError" in stderr:
        reason, detail = "memory", "ran out of memory before it could report"
    elif proc.returncode < 0:
        reason = "error"
        detail = f"killed by signal {signal.Signals(-proc.returncode).name} (a crash)"
    else:
        reason = "error"
        detail = f"exited (code {proc.returncode}) before reporting; last stderr: {stderr[-300:]}"
    return ExecutionResult(reason == "passed", reason, detail, stdout, stderr, seconds)


def run_many(
    jobs: Sequence[tuple[str, str]],
    *,
    workers: int = 1,
    **limits: Any,
) -> list[ExecutionResult]:
    """:func:`run_tests` for each ``(program, tests)`` pair, ``workers`` at a time, in order.

    Each job is its own process, so threads are enough to run several at once; keep ``workers``
    at or below your CPU cores or the wall-clock limits start to bite correct programs.
    """
    if isinstance(jobs, (str, bytes)) or not isinstance(jobs, Sequence):
        raise TypeError("jobs must be a list of (program, tests) pairs")
    for i, job in enumerate(jobs):
        if not (isinstance(job, tuple) and len(job) == 2):
            raise TypeError(f"jobs[{i}] must be a (program, tests) pair, got {type(job).__name__}")
    check_int(workers, "workers")
    if workers == 1:
        return [run_tests(program, tests, **limits) for program, tests in jobs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: run_tests(job[0], job[1], **limits), jobs))
