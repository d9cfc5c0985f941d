"""dev.sh's argument handling and its PyTorch install choice, without Jupyter, pip or network.

The book/lab/test commands are checked under ``GPTLAB_DEV_DRY_RUN=1`` (dev.sh prints the
command instead of running it); the torch install runs for real against a fake ``python`` in a
fake venv, which logs its arguments and plays an unreachable CPU index, and stub ``id`` /
``nvidia-smi`` commands on ``PATH``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DEV_SH = REPO / "dev.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="dev.sh needs bash")


def stub(folder: pathlib.Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def dev_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEV_SH), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_every_command():
    result = dev_sh("help")
    assert result.returncode == 0
    for command in ("book", "lab", "test", "setup", "torch", "GPTLAB_DEV_DRY_RUN"):
        assert command in result.stdout, command
    assert not result.stdout.startswith("#!")  # the header comment, not the shebang
    assert dev_sh("no-such-command").returncode == 2


@pytest.mark.parametrize(("uid", "flag"), [("0", ["--allow-root"]), ("1000", [])])
def test_lab_allows_root_and_passes_arguments_through(tmp_path, uid, flag):
    """Fails on the old dev.sh: as root Jupyter refused to start, and arguments were dropped."""
    stub(tmp_path, "id", f'[ "$1" = -u ] && echo {uid} || /usr/bin/id "$@"')
    env = {"GPTLAB_DEV_DRY_RUN": "1", "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = dev_sh("lab", "--port", "9999", "--no-browser", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        ".venv/bin/jupyter",
        "lab",
        "notebooks/",
        *flag,
        "--port",
        "9999",
        "--no-browser",
    ]


def test_book_and_test_pass_arguments_through():
    env = {"GPTLAB_DEV_DRY_RUN": "1"}
    book = dev_sh("book", "--mathjax-only", env=env)
    assert book.stdout.split() == [
        ".venv/bin/python",
        "book/_scripts/build_book.py",
        "--mathjax-only",
    ]
    test = dev_sh("test", "-x", "tests/test_cli.py", env=env)
    assert test.stdout.split() == [".venv/bin/pytest", "--nbval", "-x", "tests/test_cli.py"]


@pytest.fixture
def fake_venv(tmp_path):
    """A venv whose python has no torch, logs each call, and fails when given --index-url."""
    venv, log = tmp_path / "venv", tmp_path / "pip.log"
    (venv / "bin").mkdir(parents=True)
    stub(
        venv / "bin",
        "python",
        f'[ "$1" = -c ] && exit 1\necho "$*" >> {log}\n'
        'case "$*" in *--index-url*) [ -n "$FAKE_CPU_INDEX_UP" ] || exit 1 ;; esac\nexit 0',
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub(bin_dir, "uname", "echo Linux")
    env = {"GPTLAB_VENV": str(venv), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, bin_dir, log


def test_torch_from_the_cpu_index_without_an_nvidia_gpu(fake_venv):
    env, bin_dir, log = fake_venv
    stub(bin_dir, "nvidia-smi", "exit 9")  # present but failing: no usable GPU
    result = dev_sh("torch", env={**env, "FAKE_CPU_INDEX_UP": "1"})
    assert result.returncode == 0, result.stderr
    (call,) = log.read_text().splitlines()
    assert "--index-url https://download.pytorch.org/whl/cpu" in call
    assert "--timeout 5 --retries 0" in call and call.endswith("torch==2.13.0")


def test_torch_falls_back_to_the_default_index_when_the_cpu_index_is_unreachable(fake_venv):
    """The path taken on these machines: the CPU index cannot be reached, pip's default works."""
    env, _, log = fake_venv
    result = dev_sh("torch", env=env)
    assert result.returncode == 0, result.stderr
    first, second = log.read_text().splitlines()
    assert "--index-url" in first
    assert second == "-m pip install -q -c constraints.txt torch==2.13.0"
    assert "CPU index" in result.stderr and "default index" in result.stderr


def test_torch_with_an_nvidia_gpu_uses_the_default_index(fake_venv):
    env, bin_dir, log = fake_venv
    stub(bin_dir, "nvidia-smi", "echo 'GPU 0: NVIDIA H200'")
    assert dev_sh("torch", env=env).returncode == 0
    assert log.read_text().splitlines() == ["-m pip install -q -c constraints.txt torch==2.13.0"]
