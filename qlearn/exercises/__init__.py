"""Exercise checks: immediate feedback in the notebook, and the checks :mod:`qlearn.grade` runs.

A chapter's exercises live in ``qlearn/exercises/<chapter>.py``; each is a function registered
with :func:`exercise` that receives the student's answer (a value or a function the student
wrote) and either returns normally (correct) or raises :class:`Mismatch` saying what was
expected and what came. In the notebook the student calls::

    from qlearn.exercises import check
    check("ch03.sqnr_db", my_sqnr_db)      # prints feedback, never a bare assert

The checks exercise the *student's* code on fresh inputs and compare against qlearn's own
implementation; they never grade the reference solution.

**The checker contract** (what lets the grader run it outside the student's process): a checker
may only *call* a function answer (directly or through :func:`call_student`) with plain data --
None, bools, ints, floats, strings, tuples, lists, dicts, numpy arrays and scalars, torch tensors,
qlearn dataclasses -- and use what comes back; a value answer must itself be such plain data. In
the notebook the checker gets the student's object. Under :mod:`qlearn.grade` it runs in the
grader's own process and gets a proxy: every call of the proxy sends the arguments the checker
just generated to a sandboxed worker process that ran the notebook, calls the student's function
there, and returns the result as plain data, which the checker then compares with a reference it
imported itself. No per-exercise grading code is needed (see :mod:`qlearn.grade`). Two
consequences: a checker cannot see in-place changes the student's function makes to its
arguments (the worker has its own copies), and it cannot inspect the function object itself
(its signature, source or attributes).

**Forbidden functions.** ``@exercise(..., forbid=("qlearn.uniform.sqnr_db",))`` names qlearn
functions the exercise asks the student to write. While the answer is evaluated, calling one of
them (under any alias) fails the exercise with a message saying so. In the notebook this is done
by swapping the function's code for a trap during each call of the student's function (advisory:
the student's kernel is theirs); the grader enforces it in its worker, where the code objects are
replaced before any student code runs and the originals are dropped (see :mod:`qlearn.grade`).
Names inside ``qlearn.exercises`` (a chapter's reference helpers) may be listed too; the grader's
worker cannot import those modules at all.

``QLEARN_GRADE_LOG``: when this environment variable names a file, every check also appends one
JSON line ``{"id", "passed", "message"}`` to it -- a self-report for tools that want one. The
grader never reads it (a student's notebook can write that file).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["check", "exercise", "Mismatch", "Exercise", "CheckResult", "exercises_for",
           "compare_close", "compare_equal", "call_student", "ForbiddenCall", "StudentError",
           "evaluate"]


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


class ForbiddenCall(Exception):
    """Raised when an answer calls a qlearn function its exercise forbids."""


class StudentError(Exception):
    """The student's code raised in another process (the grader's worker); carries what it said.

    Args:
        type_name: the exception's class name, e.g. ``"ZeroDivisionError"``.
        message: ``str()`` of the exception.
        where: ``" (line N of NAME)"`` or ``""``.
    """

    def __init__(self, type_name: str, message: str, where: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.where = type_name, message, where


@dataclass
class Exercise:
    id: str
    checker: Callable[[Any], None]
    hint: str = ""
    points: int = 1
    forbid: tuple[str, ...] = field(default_factory=tuple)  # dotted qlearn names


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


def exercise(exercise_id: str, hint: str = "", points: int = 1, forbid: tuple[str, ...] = ()):
    """Decorator registering ``checker(answer)`` as exercise ``exercise_id`` (``"ch03.name"``).

    Args:
        exercise_id: ``"chNN.name"``.
        hint: shown with every wrong answer.
        points: what a correct answer earns in the grader's gradebook.
        forbid: dotted names of qlearn functions the answer must not call, e.g.
            ``("qlearn.uniform.sqnr_db",)``: the functions the exercise asks the student to write.
    """
    if isinstance(forbid, str):
        forbid = (forbid,)
    if not all(isinstance(f, str) and f.startswith("qlearn.") and f.count(".") >= 2 for f in forbid):
        raise ValueError(f"forbid should be dotted qlearn function names such as "
                         f"'qlearn.uniform.sqnr_db', got {forbid!r}")
    if not (isinstance(points, int) and points >= 0):
        raise ValueError(f"points should be a non-negative int, got {points!r}")

    def wrap(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        if "." not in exercise_id:
            raise ValueError(f"exercise id must look like 'chNN.name', got {exercise_id!r}")
        _REGISTRY[exercise_id] = Exercise(exercise_id, fn, hint, points, tuple(forbid))
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


# --- forbidden functions -------------------------------------------------------------------------

_FORBIDDEN_SEEN: list[str] = []  # names of forbidden functions called since the last reset


def _forbidden_called(name: str) -> None:
    """Called by a trap: record the call (and raise an audit event the grader's worker hears)."""
    _FORBIDDEN_SEEN.append(name)
    sys.audit("qlearn.forbidden", name)
    raise ForbiddenCall(f"{name} is forbidden in this exercise: write it yourself")


def resolve_qualname(name: str) -> Any:
    """The object a dotted name such as ``"qlearn.uniform.sqnr_db"`` refers to (imports it)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                raise ValueError(f"forbidden name {name!r} does not exist")
        return obj
    raise ValueError(f"forbidden name {name!r}: no importable module in it")


def trap_code(name: str):
    """A code object that, put in a function's ``__code__``, makes every call a forbidden call.

    It reaches :func:`_forbidden_called` through ``__import__`` so that it works whatever the
    globals of the function it is put into.
    """
    src = ("def trap(*args, **kwargs):\n"
           f"    __import__('qlearn.exercises', fromlist=['_'])._forbidden_called({name!r})\n")
    ns: dict[str, Any] = {}
    exec(compile(src, f"<forbidden {name}>", "exec"), ns)
    return ns["trap"].__code__


@contextlib.contextmanager
def _forbidden(names: tuple[str, ...]) -> Iterator[None]:
    """While active, the named functions' code is a trap (restored afterwards). Notebook side."""
    swapped = []
    try:
        for name in names:
            fn = resolve_qualname(name)
            fn = getattr(fn, "py_func", fn)  # a numba dispatcher: its Python function
            if hasattr(fn, "__code__") and not getattr(fn, "__closure__", None):
                swapped.append((fn, fn.__code__))
                fn.__code__ = trap_code(name)
        yield
    finally:
        for fn, code in swapped:
            fn.__code__ = code


class _Guarded:
    """The student's function, each call of it made with the exercise's forbidden functions trapped."""

    def __init__(self, fn: Callable, forbid: tuple[str, ...]):
        self._fn, self._forbid = fn, forbid

    def __call__(self, *args, **kwargs):
        with _forbidden(self._forbid):
            return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self._fn)


def forbidden_message(exercise_id: str, names: list[str]) -> str:
    names = sorted(set(names))
    return (f"[not yet] {exercise_id}: your answer calls {', '.join(names)}, which this exercise "
            f"asks you to write yourself (use numpy instead)")


def evaluate(ex: Exercise, answer: Any) -> CheckResult:
    """Run ``ex``'s checker on ``answer`` and turn the outcome into a :class:`CheckResult`.

    ``answer`` is the student's object (notebook) or the grader's proxy of it; exceptions that
    are not ``Exception`` subclasses (the grader's "worker lost") propagate.
    """
    try:
        ex.checker(answer)
        return CheckResult(ex.id, True, f"[correct] {ex.id}: well done.")
    except Mismatch as m:
        hint = m.hint or ex.hint
        msg = (f"[not yet] {ex.id}: {m.what}\n  expected: {_fmt(m.expected)}\n"
               f"  got:      {_fmt(m.got)}")
        if hint:
            msg += f"\n  hint: {hint}"
        return CheckResult(ex.id, False, msg)
    except Exception as e:  # the student's code raised: report it, do not crash the notebook
        if isinstance(e, StudentError):
            kind, text, where = e.type_name, e.message, e.where
        else:
            tb = traceback.extract_tb(e.__traceback__)
            kind, text = type(e).__name__, str(e)
            where = f" (line {tb[-1].lineno} of {tb[-1].name})" if tb else ""
        msg = f"[not yet] {ex.id}: your code raised {kind}: {text}{where}"
        if ex.hint:
            msg += f"\n  hint: {ex.hint}"
        return CheckResult(ex.id, False, msg)


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
    del _FORBIDDEN_SEEN[:]
    guarded = _Guarded(answer, ex.forbid) if ex.forbid and callable(answer) else answer
    result = evaluate(ex, guarded)
    if _FORBIDDEN_SEEN:
        result = CheckResult(exercise_id, False, forbidden_message(exercise_id, _FORBIDDEN_SEEN))
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
