"""gptlab.evaluate.sandbox: runaway, harmful and wrong programs are stopped and counted, never crash."""

from __future__ import annotations

import os
import sys

import pytest

from gptlab.evaluate.sandbox import run_many, run_tests

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs POSIX limits")

ADD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_a_correct_solution_passes():
    result = run_tests(ADD, TESTS)
    assert (result.passed, result.reason) == (True, "passed")


def test_a_wrong_solution_fails_and_names_the_assert():
    result = run_tests("def add(a, b):\n    return a - b\n", TESTS)
    assert (result.passed, result.reason) == (False, "failed")
    assert "assert add(2, 3) == 5" in result.detail


def test_an_infinite_loop_times_out():
    result = run_tests("def add(a, b):\n    while True:\n        pass\n", TESTS, timeout=1.0)
    assert (result.passed, result.reason) == (False, "timeout")
    assert result.seconds < 5


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS does not enforce RLIMIT_AS")
def test_a_memory_bomb_is_stopped():
    bomb = "def add(a, b):\n    hoard = []\n    while True:\n        hoard.append(bytearray(50 << 20))\n"
    result = run_tests(bomb, TESTS, memory_mb=256, timeout=5.0)
    assert (result.passed, result.reason) == (False, "memory")


def test_writing_outside_the_working_directory_is_forbidden(tmp_path):
    target = tmp_path / "escaped.txt"
    program = f"open({str(target)!r}, 'w').write('x')\n" + ADD
    result = run_tests(program, TESTS)
    assert (result.passed, result.reason) == (False, "forbidden")
    assert not target.exists()


def test_a_swallowed_violation_is_still_forbidden(tmp_path):
    target = tmp_path / "escaped.txt"
    program = f"try:\n    open({str(target)!r}, 'a')\nexcept Exception:\n    pass\n" + ADD
    result = run_tests(program, TESTS)
    assert result.reason == "forbidden" and not target.exists()


def test_writing_inside_the_working_directory_is_allowed():
    program = "with open('scratch.txt', 'w') as f:\n    f.write('ok')\nprint(open('scratch.txt').read())\n"
    result = run_tests(program + ADD, TESTS)
    assert result.passed and result.stdout == "ok\n"


def test_a_socket_connect_is_forbidden():
    program = (
        "import socket\n"
        "def add(a, b):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "    s.connect(('127.0.0.1', 9))\n"
        "    return a + b\n"
    )
    result = run_tests(program, TESTS)
    assert (result.passed, result.reason) == (False, "forbidden")
    assert "socket" in result.detail


def test_starting_a_process_is_forbidden():
    program = "import subprocess\nsubprocess.run(['true'])\n" + ADD
    assert run_tests(program, TESTS).reason == "forbidden"


def test_errors_exits_and_output_are_reported_not_raised():
    assert run_tests("def add(a, b):\n    return a +\n", TESTS).reason == "error"  # syntax
    assert run_tests("import os\nos._exit(3)\n", TESTS).reason == "error"
    noisy = "while True:\n    print('x' * 10000)\n"
    result = run_tests(noisy, TESTS, file_mb=1, max_output_bytes=100)
    assert result.reason == "error" and "more bytes cut" in result.stdout
    assert len(result.stdout) < 200


def test_run_many_keeps_order_with_two_workers():
    jobs = [(ADD, TESTS), ("def add(a, b):\n    return 0\n", TESTS), (ADD, TESTS)]
    assert [r.reason for r in run_many(jobs, workers=2)] == ["passed", "failed", "passed"]


def test_bad_arguments():
    with pytest.raises(TypeError):
        run_tests(None, TESTS)
    with pytest.raises(ValueError):
        run_tests(ADD, TESTS, timeout=0)
    with pytest.raises(TypeError):
        run_many([ADD], workers=1)
