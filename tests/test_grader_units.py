"""The grader's parts: forbidden functions, the plain-data codec, today-style checkers run remotely."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from qlearn import uniform
from qlearn.exercises import (_REGISTRY, _load_all, call_student, check, compare_close, exercise,
                              resolve_qualname)
from qlearn.grade import grade_notebook, write_csv, write_feedback
from qlearn.grade_worker import Opaque, ProtocolError, Unsendable, decode, encode


# A checker in today's style (one function taking the answer), with a forbid list.
@exercise("chgtest.sqnr", hint="10 log10 of the power ratio", points=2, forbid=("qlearn.uniform.sqnr_db",))
def _sqnr(fn):
    rng = np.random.default_rng()
    x = rng.standard_normal(50)
    x_hat = x + rng.normal(0, 0.1, 50)
    compare_close("sqnr(x, x_hat)", call_student(fn, x, x_hat), uniform.sqnr_db(x, x_hat), rtol=1e-6)


@exercise("chgtest.pair")
def _pair(answer):
    compare_close("the pair", np.asarray(answer, float), np.array([1.5, 2.5]))


@exercise("chgtest.unsendable")
def _unsendable(fn):
    call_student(fn, lambda v: v)  # a function as an argument breaks the checker contract


def _mine(x, x_hat):
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    return 10 * np.log10(np.sum(x**2) / np.sum((x - x_hat) ** 2))


def test_forbidden_call_fails_in_the_notebook_and_is_restored():
    alias = uniform.sqnr_db
    bad = check("chgtest.sqnr", lambda x, x_hat: alias(x, x_hat))
    assert not bad.passed and "calls qlearn.uniform.sqnr_db" in bad.message
    assert check("chgtest.sqnr", _mine).passed
    x = np.ones(4)
    assert np.isfinite(uniform.sqnr_db(x, x * 1.01))  # the trap is gone after the check


def test_every_forbid_name_resolves():
    _load_all()
    names = [(e.id, n) for e in _REGISTRY.values() for n in e.forbid]
    assert any(i.startswith("ch03.") for i, _ in names)
    for _, n in names:
        assert callable(resolve_qualname(n)), n


def test_exercise_validates_forbid_and_points():
    with pytest.raises(ValueError, match="forbid"):
        exercise("chgtest.x", forbid=("sqnr_db",))
    with pytest.raises(ValueError, match="points"):
        exercise("chgtest.x", points=-1)


def test_codec_round_trip():
    import torch
    from qlearn.memory import MODELS
    value = {"a": [1, 2.5, None, True, "s", float("nan"), 2**70], "t": (np.float32(3), np.arange(4)),
             "torch": torch.arange(3, dtype=torch.bfloat16), "cfg": MODELS["SmolLM2-135M"]}
    back = decode(*encode(value))
    assert back["a"][:5] == [1, 2.5, None, True, "s"] and np.isnan(back["a"][5]) and back["a"][6] == 2**70
    assert isinstance(back["t"], tuple) and back["t"][0] == np.float32(3) and back["t"][0].dtype == np.float32
    assert np.array_equal(back["t"][1], np.arange(4))
    assert back["torch"].dtype == torch.bfloat16 and back["cfg"] == MODELS["SmolLM2-135M"]


def test_codec_never_unpickles():
    assert isinstance(decode(*encode(np.array([object()]))), Opaque)
    assert isinstance(decode(*encode(lambda: 1)), Opaque)
    with pytest.raises(Unsendable):
        encode(lambda: 1, strict=True)
    buf = io.BytesIO()
    np.savez(buf, np.array([{"x": 1}], dtype=object))  # an object array is stored pickled
    with pytest.raises(ProtocolError):
        decode({"$": "nd", "i": 0}, buf.getvalue())
    for bad in ({"$": "nd", "i": 3}, {"$": "nope"}, {"$": "dc", "cls": "os:system", "f": {}}, [1]):
        with pytest.raises(ProtocolError):
            decode(bad, b"")


def _notebook(tmp_path: Path, cells: list[str], chapter="chgtest") -> Path:
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": c}
                    for c in cells],
          "metadata": {"qlearn": {"chapter": chapter}}, "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path / "student.ipynb"
    p.write_text(json.dumps(nb))
    return p


def test_today_style_checkers_run_in_the_grader(tmp_path):
    src = ["import numpy as np\nfrom qlearn import uniform\nfrom qlearn.exercises import check",
           "def sqnr(x, x_hat):\n    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)\n"
           "    return 10 * np.log10(np.sum(x**2) / np.sum((x - x_hat) ** 2))\ncheck('chgtest.sqnr', sqnr)",
           "check('chgtest.pair', (1.5, 2.5))",
           "check('chgtest.unsendable', lambda f: 1)"]
    g = grade_notebook(_notebook(tmp_path, src), timeout=60)
    assert g.results["chgtest.sqnr"]["points"] == 2 and g.results["chgtest.pair"]["passed"]
    assert not g.results["chgtest.unsendable"]["passed"] and "grader-error" in g.status_text
    assert g.score == 3 and g.total == 4
    cheat = src[:1] + ["check('chgtest.sqnr', lambda x, x_hat: uniform.sqnr_db(x, x_hat))"]
    g = grade_notebook(_notebook(tmp_path, cheat), timeout=60)
    assert g.results["chgtest.sqnr"]["points"] == 0
    assert "calls qlearn.uniform.sqnr_db" in g.results["chgtest.sqnr"]["message"]
    write_csv([g], tmp_path / "g.csv")
    write_feedback([g], tmp_path / "fb")
    text = (tmp_path / "fb" / "student.md").read_text()
    assert "## chgtest.sqnr: 0 / 2" in text and "calls qlearn.uniform.sqnr_db" in text
    header, row = (tmp_path / "g.csv").read_text().splitlines()[:2]
    assert header.startswith("student,file,chapter,chgtest.pair,chgtest.sqnr,chgtest.unsendable,total,max")
    assert row.startswith("student,") and ",chgtest,0,0,0,0,4," in row


def test_budget_and_cell_timeouts_still_give_a_row(tmp_path):
    src = ["from qlearn.exercises import check\ncheck('chgtest.pair', (1.5, 2.5))",
           "while True:\n    pass", "while True:\n    pass", "check('chgtest.pair', (0, 0))"]
    g = grade_notebook(_notebook(tmp_path, src), timeout=3, budget=5)
    assert "cell-timeout" in g.status_text and "budget-exceeded" in g.status_text
    assert g.total == 4 and g.score == 0 and set(g.results) == {"chgtest.pair", "chgtest.sqnr",
                                                                "chgtest.unsendable"}
    assert g.runtime_s < 30


def test_plain_sandbox_grades_too(tmp_path):
    src = ["from qlearn.exercises import check", "check('chgtest.pair', (1.5, 2.5))",
           "import os\nos._exit(3)", "check('chgtest.sqnr', lambda x, y: 0.0)"]
    g = grade_notebook(_notebook(tmp_path, src), timeout=60, sandbox="plain")
    assert g.sandbox == "plain" and "crashed" in g.status_text
    assert g.results["chgtest.pair"]["passed"] and not g.results["chgtest.sqnr"]["passed"]
    assert "expected" in g.results["chgtest.sqnr"]["message"]


def test_ipython_magics(tmp_path):
    src = ["%%time\nfrom qlearn.exercises import check\npair = (1.5, 2.5)", "!echo hi\n%matplotlib inline",
           "%time x = 1\ncheck('chgtest.pair', (pair[0] * x, pair[1]))"]
    g = grade_notebook(_notebook(tmp_path, src), timeout=60)
    assert g.results["chgtest.pair"]["passed"], (g.results, g.cell_errors)
    assert not g.cell_errors


def test_reports_neutralise_student_text(tmp_path):
    from qlearn.grade import SubmissionGrade
    g = SubmissionGrade("x.ipynb", "=HYPERLINK(1)", "ch03", error="line\none",
                        results={"ch03.a": {"passed": False, "message": "```\n# injected", "points": 0, "max": 1}})
    write_csv([g], tmp_path / "g.csv")
    row = (tmp_path / "g.csv").read_text().splitlines()[1]
    assert row.startswith("'=HYPERLINK(1)") and "line?one" in row
    write_feedback([g], tmp_path / "fb")
    text = next((tmp_path / "fb").glob("*.md")).read_text()
    assert "````text\n```\n# injected\n````" in text
