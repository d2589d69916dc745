"""Exercise checks: immediate feedback in the notebook, and a record the grader reads.

A chapter's exercises live in ``qlearn/exercises/<chapter>.py``; each is a function registered
with :func:`exercise` that receives the student's answer (a value or a function the student
wrote) and either returns normally (correct) or raises :class:`Mismatch` saying what was
expected and what came. In the notebook the student calls::

    from qlearn.exercises import check
    check("ch03.sqnr_db", my_sqnr_db)      # prints feedback, never a bare assert

The checks exercise the *student's* code on fresh inputs and compare against qlearn's own
implementation; they never grade the reference solution.

When the environment variable ``QLEARN_GRADE_LOG`` names a file, every check also appends one
JSON line ``{"id", "passed", "message"}`` to it; :mod:`qlearn.grade` uses that to score a
notebook it executes.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["check", "exercise", "Mismatch", "Exercise", "CheckResult", "exercises_for",
           "compare_close", "compare_equal", "call_student"]


class Mismatch(Exception):
    """Raised by an exercise checker when the answer is wrong.

    Args:
        what: which part of the answer is wrong, e.g. ``"quantize(x, bits=4)"``.
        expected: what a correct answer gives (shown to the student).
        got: what the student's answer gave.
        hint: an optional nudge (defaults to the exercise's hint).
    """

    def __init__(self, what: str, expected: Any, got: Any, hint: str | None = None):
        super().__init__(what)
        self.what, self.expected, self.got, self.hint = what, expected, got, hint


@dataclass
class Exercise:
    id: str
    checker: Callable[[Any], None]
    hint: str = ""
    points: int = 1


@dataclass
class CheckResult:
    id: str
    passed: bool
    message: str

    def _repr_html_(self) -> str:  # shown in Jupyter when check(...) is the last expression
        colour = "#1a7f37" if self.passed else "#cf222e"
        body = self.message.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")
        return f'<div style="border-left:4px solid {colour};padding:4px 8px">{body}</div>'

    def __repr__(self) -> str:
        return self.message


_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def exercise(exercise_id: str, hint: str = "", points: int = 1):
    """Decorator registering ``checker(answer)`` as exercise ``exercise_id`` (``"ch03.name"``)."""

    def wrap(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        if "." not in exercise_id:
            raise ValueError(f"exercise id must look like 'chNN.name', got {exercise_id!r}")
        _REGISTRY[exercise_id] = Exercise(exercise_id, fn, hint, points)
        return fn

    return wrap


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    _LOADED = True


def exercises_for(chapter: str) -> list[Exercise]:
    """All registered exercises of a chapter prefix such as ``"ch03"``, in id order."""
    _load_all()
    return [e for k, e in sorted(_REGISTRY.items()) if k.split(".")[0] == chapter]


def _fmt(v: Any) -> str:
    if isinstance(v, np.ndarray):
        with np.printoptions(precision=6, threshold=12, edgeitems=3):
            return f"array(shape={v.shape}, dtype={v.dtype}) {v}"
    if hasattr(v, "detach"):  # torch tensor
        return _fmt(v.detach().cpu().numpy())
    return repr(v)


def check(exercise_id: str, answer: Any) -> CheckResult:
    """Check ``answer`` for exercise ``exercise_id`` and print feedback.

    Returns a :class:`CheckResult`; never raises for a wrong answer (a typo in the id raises
    ``ValueError`` listing the valid ids).
    """
    _load_all()
    if exercise_id not in _REGISTRY:
        chapter = exercise_id.split(".")[0]
        known = [e.id for e in exercises_for(chapter)] or sorted(_REGISTRY)
        raise ValueError(f"unknown exercise id {exercise_id!r}; expected one of {known}")
    ex = _REGISTRY[exercise_id]
    try:
        ex.checker(answer)
        result = CheckResult(exercise_id, True, f"[correct] {exercise_id}: well done.")
    except Mismatch as m:
        hint = m.hint or ex.hint
        msg = (f"[not yet] {exercise_id}: {m.what}\n  expected: {_fmt(m.expected)}\n"
               f"  got:      {_fmt(m.got)}")
        if hint:
            msg += f"\n  hint: {hint}"
        result = CheckResult(exercise_id, False, msg)
    except Exception as e:  # the student's code raised: report it, do not crash the notebook
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (line {tb[-1].lineno} of {tb[-1].name})" if tb else ""
        msg = f"[not yet] {exercise_id}: your code raised {type(e).__name__}: {e}{where}"
        if ex.hint:
            msg += f"\n  hint: {ex.hint}"
        result = CheckResult(exercise_id, False, msg)
    log = os.environ.get("QLEARN_GRADE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"id": result.id, "passed": result.passed,
                                "message": result.message}) + "\n")
    print(result.message)
    return result


# --- helpers for writing checkers -------------------------------------------------------------

def call_student(fn: Any, *args, what: str | None = None, **kwargs) -> Any:
    """Call the student's function, turning 'not a function' into a clear Mismatch."""
    if not callable(fn):
        raise Mismatch(what or "your answer should be a function", "a function", fn)
    return fn(*args, **kwargs)


def compare_close(what: str, got: Any, expected: Any, rtol: float = 1e-6, atol: float = 0.0,
                  hint: str | None = None) -> None:
    """Raise :class:`Mismatch` unless ``got`` equals ``expected`` within tolerances (and shape)."""
    if got is None:
        raise Mismatch(what, expected, got, hint or "your code returned None: did you forget `return`?")
    if hasattr(got, "detach"):
        got = got.detach().cpu().numpy()
    exp = np.asarray(expected.detach().cpu().numpy() if hasattr(expected, "detach") else expected)
    try:
        g = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        raise Mismatch(what, exp, got, hint) from None
    if g.shape != exp.shape:
        raise Mismatch(f"{what}: wrong shape", exp.shape, g.shape, hint)
    if not np.allclose(g, exp.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True):
        raise Mismatch(what, exp, np.asarray(got), hint)


def compare_equal(what: str, got: Any, expected: Any, hint: str | None = None) -> None:
    """Raise :class:`Mismatch` unless ``got == expected`` exactly (arrays: same shape, all equal)."""
    if isinstance(expected, np.ndarray) or hasattr(expected, "detach"):
        exp = np.asarray(expected.detach().cpu().numpy() if hasattr(expected, "detach") else expected)
        g = np.asarray(got.detach().cpu().numpy() if hasattr(got, "detach") else got)
        if g.shape != exp.shape or not np.array_equal(g, exp):
            raise Mismatch(what, exp, g, hint)
    elif got != expected:
        raise Mismatch(what, expected, got, hint)
