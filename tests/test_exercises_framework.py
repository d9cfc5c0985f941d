import numpy as np
import pytest
import torch

from gptlab import exercises
from gptlab.exercises import NotSolved, as_number, check, exercise


@pytest.fixture
def sandbox(monkeypatch):
    monkeypatch.setattr(exercises, "_REGISTRY", {})

    @exercise("9.9", "double it")
    def _checker(fn):
        for x in (0, 1, -3, 7):
            if fn(x) != 2 * x:
                raise NotSolved(f"fn({x}) returned {fn(x)}, expected {2 * x}")

    return _checker


def test_correct_answer_prints_correct(sandbox, capsys):
    assert check("9.9", lambda x: 2 * x) is True
    assert "correct" in capsys.readouterr().out


def test_wrong_answer_prints_hint(sandbox, capsys):
    assert check("9.9", lambda x: x + x + 1) is False
    out = capsys.readouterr().out
    assert "wrong answer: " in out and "fn(0) returned 1" in out  # says what is wrong
    assert "not solved yet" not in out  # that is for stubs


def test_stub_counts_as_not_solved(sandbox, capsys):
    def stub(x):
        raise NotImplementedError

    assert check("9.9", stub) is False
    assert "NotImplementedError" in capsys.readouterr().out


def test_crashing_answer_reports_the_exception(sandbox, capsys):
    assert check("9.9", lambda x: 1 / 0) is False
    out = capsys.readouterr().out
    assert "your code crashed" in out and "ZeroDivisionError" in out


def test_an_answer_left_at_none_is_not_solved_yet(sandbox, capsys):
    for unanswered in (None, (None, None), [None]):
        assert check("9.9", unanswered) is False
        out = capsys.readouterr().out
        assert "not solved yet" in out and "wrong answer" not in out
    assert check("9.9", (None, 1)) is False  # half an answer is an answer, not a stub
    assert "not solved yet" not in capsys.readouterr().out


def test_unknown_and_malformed_ids(sandbox):
    with pytest.raises(ValueError, match="no exercise '9.8'"):
        check("9.8", None)
    with pytest.raises(TypeError, match="string like '1.2'"):
        check(1.2, None)
    with pytest.raises(ValueError, match="must look like"):
        exercise("chapter one", "x")


def test_duplicate_registration_is_an_error(sandbox):
    with pytest.raises(ValueError, match="registered twice"):
        exercise("9.9", "again")(lambda a: None)


def test_require_callable_passes_functions_and_names_the_mistake():
    def f(x):
        return x

    assert exercises.require_callable(f, "f", "3.1") is f
    with pytest.raises(NotSolved, match=r"check\('3.1', f\), not its result"):
        exercises.require_callable(f(2), "f", "3.1")


@pytest.mark.parametrize(
    "value, want",
    [
        (3, 3.0),
        (0.25, 0.25),
        (np.float32(0.5), 0.5),
        (torch.tensor(2.5), 2.5),
        (torch.tensor([[4.0]]), 4.0),
    ],
)
def test_as_number_accepts_numbers_and_one_element_tensors(value, want):
    got = as_number(value, "f")
    assert type(got) is float and got == want


@pytest.mark.parametrize(
    "value, hint",
    [
        (True, "f must return a number, got a bool"),
        (torch.tensor(False), "f must return a number, got a bool"),
        ("0.5", "f must return a number, got str"),
        (None, "f must return a number, got NoneType"),
        (torch.tensor([1.0, 2.0]), "f must return a number, got Tensor"),
        (float("nan"), "f returned nan; the answer is a finite number"),
        (-float("inf"), "f returned -inf; the answer is a finite number"),
    ],
)
def test_as_number_refuses_bools_text_and_non_finite_values(value, hint):
    with pytest.raises(NotSolved) as info:
        as_number(value, "f")
    assert str(info.value) == hint
