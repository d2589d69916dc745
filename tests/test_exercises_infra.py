"""The exercise mechanism and the interview bank themselves."""

import json

import numpy as np
import pytest

from qlearn import exercises, interview
from qlearn.exercises import Mismatch, check, compare_close, exercise


@exercise("chtest.double", hint="multiply by two")
def _double(fn):
    x = np.arange(5.0)
    compare_close("fn(arange(5))", exercises.call_student(fn, x), 2 * x)


def test_check_reports_expected_and_got(capsys):
    bad = check("chtest.double", lambda x: x + 1)
    out = capsys.readouterr().out
    assert not bad.passed and "expected" in out and "got" in out and "multiply by two" in out
    assert check("chtest.double", lambda x: 2 * x).passed


def test_check_survives_student_exceptions_and_non_functions():
    assert not check("chtest.double", lambda x: 1 / 0).passed
    assert "ZeroDivisionError" in check("chtest.double", lambda x: 1 / 0).message
    assert not check("chtest.double", 42).passed
    assert "None" in check("chtest.double", lambda x: None).message


def test_unknown_id_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown exercise id"):
        check("chtest.nope", 1)


def test_grade_log_is_written(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("QLEARN_GRADE_LOG", str(log))
    check("chtest.double", lambda x: 2 * x)
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec == {"id": "chtest.double", "passed": True, "message": rec["message"]}


def test_shape_mismatch_named():
    with pytest.raises(Mismatch, match="wrong shape"):
        compare_close("x", np.zeros(3), np.zeros(4))


def test_every_interview_question_renders_with_computed_numbers():
    qs = interview.bank()
    for q in qs:
        text = q.model_answer()
        assert "{" not in text, f"{q.id}: unfilled field in {text!r}"
        assert q.difficulty in interview.DIFFICULTIES and q.tags and q.question.strip()
        if "{" in q.answer:
            assert q.compute is not None, f"{q.id}: a numeric answer needs compute()"


def test_interview_registration_validates():
    with pytest.raises(ValueError, match="difficulty"):
        interview.question(id="chx.a", chapter="chx", difficulty="trivial", tags=("a",),
                           question="q", answer="a")
