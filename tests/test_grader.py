"""The grader gives full marks to the reference solutions and not to the blank notebooks."""

from pathlib import Path

import pytest

from qlearn.grade import grade_notebook

ROOT = Path(__file__).resolve().parent.parent
STUDENT = sorted((ROOT / "exercises").glob("*.ipynb"))


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.stem)
def test_solution_full_marks_student_not(path):
    sol = grade_notebook(ROOT / "exercises" / "solutions" / path.name)
    assert sol.full_marks, {k: v["message"] for k, v in sol.results.items() if not v["passed"]}
    blank = grade_notebook(path)
    assert blank.total == sol.total
    assert blank.score < blank.total, "the blank student notebook should not pass every check"
