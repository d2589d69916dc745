"""The grader gives full marks to the reference solutions and not to the blank notebooks."""

from pathlib import Path

import pytest

from qlearn.grade import grade_paths

ROOT = Path(__file__).resolve().parent.parent
STUDENT = sorted((ROOT / "exercises").glob("*.ipynb"))


@pytest.fixture(scope="module")
def grades():
    """Every blank and every solution notebook, graded in one batch, two at a time."""
    paths = [str(p) for p in STUDENT] + [str(ROOT / "exercises" / "solutions" / p.name) for p in STUDENT]
    return {g.path: g for g in grade_paths(paths, jobs=2)}


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.stem)
def test_solution_full_marks_student_not(grades, path):
    sol = grades[str(ROOT / "exercises" / "solutions" / path.name)]
    assert sol.status_text == "ok", (sol.status_text, sol.error)
    assert sol.full_marks, {k: v["message"] for k, v in sol.results.items() if not v["passed"]}
    blank = grades[str(path)]
    assert blank.total == sol.total
    assert blank.score < blank.total, "the blank student notebook should not pass every check"
