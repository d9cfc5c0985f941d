"""Self-checking exercises: ``check("1.2", my_function)`` tells a reader at once whether they got it.

Each chapter registers its checkers in ``gptlab/exercises/chNN.py`` with the :func:`exercise`
decorator. A checker receives the reader's answer and returns ``None`` when it is right or a
hint (a string) when it is not; it may raise :class:`NotSolved` from deep inside a test too.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NotSolved",
    "Exercise",
    "as_number",
    "check",
    "exercise",
    "registered",
    "require_callable",
]


class NotSolved(Exception):
    """Raised by a checker to say the answer is not right yet; the message is the hint."""


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    checker: Callable[[Any], str | None]


_REGISTRY: dict[str, Exercise] = {}
_ID = re.compile(r"^(?:[1-9]\d*|[A-Z])\.[1-9]\d*$")


def exercise(exercise_id: str, title: str) -> Callable[[Callable[[Any], str | None]], Callable]:
    """Register ``checker`` under ``exercise_id`` ("chapter.number", e.g. "1.3" or "A.2")."""
    if not _ID.match(exercise_id):
        raise ValueError(f"exercise id {exercise_id!r} must look like '3.2' or 'A.1'")

    def register(checker: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        if exercise_id in _REGISTRY:
            raise ValueError(f"exercise {exercise_id} is registered twice")
        _REGISTRY[exercise_id] = Exercise(exercise_id, title, checker)
        return checker

    return register


def _load_chapter(exercise_id: str) -> None:
    chapter = exercise_id.split(".")[0]
    name = f"ch{int(chapter):02d}" if chapter.isdigit() else f"app{chapter.lower()}"
    try:
        importlib.import_module(f"gptlab.exercises.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"gptlab.exercises.{name}":
            raise


def registered() -> dict[str, Exercise]:
    """All exercises of every chapter module present, by id (imports them all)."""
    import pkgutil

    import gptlab.exercises as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"gptlab.exercises.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def require_callable(answer: Any, name: str, exercise_id: str) -> Callable[..., Any]:
    """Return ``answer`` if it is a function; otherwise tell the reader to pass the function itself.

    Checkers of exercises that ask for a function call this first, so that a reader who passes
    ``f(x)`` instead of ``f`` gets a hint rather than a ``TypeError`` from inside the checker.
    """
    if not callable(answer):
        raise NotSolved(
            f"pass your function itself, e.g. check({exercise_id!r}, {name}), not its result"
        )
    return answer


def as_number(value: Any, name: str) -> float:
    """The reader's answer ``value`` as a finite float; otherwise :class:`NotSolved` naming ``name``.

    Numbers, NumPy scalars and one-element tensors pass. A bool is refused (``True`` is not the
    answer 1), and so are strings (``"0.5"`` is text, not a number), anything else ``float()``
    cannot read, and NaN or infinity.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string that names the answer, got {type(name).__name__}")
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):
        raise NotSolved(f"{name} must return a number, got a bool")
    if isinstance(value, (str, bytes)):
        raise NotSolved(f"{name} must return a number, got {type(value).__name__}")
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
        raise NotSolved(f"{name} must return a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise NotSolved(f"{name} returned {number}; the answer is a finite number")
    return number


def check(exercise_id: str, answer: Any, *, quiet: bool = False) -> bool:
    """Run the checker of ``exercise_id`` on ``answer``; print a verdict and return whether it passed.

    A stub that still raises ``NotImplementedError``, or an answer left at ``None``, counts as
    "not solved yet", so a reader can run the stub cell before writing anything. Any other answer
    that fails is a "wrong answer", and the verdict says what is wrong with it; an answer whose
    code crashes is reported with its exception.
    """
    if not isinstance(exercise_id, str):
        raise TypeError(
            f"exercise_id must be a string like '1.2', got {type(exercise_id).__name__}"
        )
    if exercise_id not in _REGISTRY and _ID.match(exercise_id):
        _load_chapter(exercise_id)
    if exercise_id not in _REGISTRY:
        known = ", ".join(registered()) or "none"
        raise ValueError(f"no exercise {exercise_id!r}; known exercises: {known}")
    ex = _REGISTRY[exercise_id]
    unanswered = answer is None or (
        isinstance(answer, (tuple, list)) and len(answer) > 0 and all(a is None for a in answer)
    )
    verdict = "not solved yet. Hint" if unanswered else "wrong answer"
    try:
        hint = ex.checker(answer)
    except NotSolved as exc:
        hint = str(exc) or "the checker found it wrong"
    except NotImplementedError:
        verdict = "not solved yet. Hint"
        hint = "the function still raises NotImplementedError: replace the stub with your code"
    except Exception as exc:  # the reader's code crashed: show what and where to look
        if unanswered:
            hint = "the answer is still None: replace it with yours"
        else:
            verdict = "your code crashed"
            hint = f"your answer raised {type(exc).__name__}: {exc}"
    ok = hint is None
    if not quiet:
        if ok:
            print(f"✅ Exercise {exercise_id} ({ex.title}): correct")
        else:
            print(f"❌ Exercise {exercise_id} ({ex.title}): {verdict}: {hint}")
    return ok
