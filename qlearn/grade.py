"""Grade exercise notebooks by executing them: ``python -m qlearn.grade PATH [PATH ...]``.

Each notebook (or every ``*.ipynb`` under a folder) is executed top to bottom in a fresh kernel,
in a temporary copy, with errors allowed, so one broken cell costs only the exercises that
depend on it. Every ``qlearn.exercises.check(...)`` call made while it runs is recorded; an
exercise that was never checked (its cell raised before ``check``, or the call was deleted)
scores zero. The set of exercises a notebook is graded on comes from its metadata
(``metadata.qlearn.chapter``, e.g. ``"ch03"``), not from the notebook's own calls, so deleting a
check cannot raise the score.

Output: one line per notebook, ``score/total``, and with ``--verbose`` the feedback of every
exercise; ``--json FILE`` writes the full report. Exit status 0, or 1 with ``--require-full``
when any notebook scores below full marks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qlearn.exercises import exercises_for

__all__ = ["grade_notebook", "grade_paths", "NotebookGrade"]


@dataclass
class NotebookGrade:
    path: str
    chapter: str
    score: int
    total: int
    results: dict[str, dict] = field(default_factory=dict)  # id -> {"passed", "message"}
    error: str | None = None

    @property
    def full_marks(self) -> bool:
        return self.total > 0 and self.score == self.total


def grade_notebook(path: str | os.PathLike, timeout: int = 300) -> NotebookGrade:
    """Execute one notebook and score it against its chapter's registered exercises."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    chapter = nb.metadata.get("qlearn", {}).get("chapter")
    if not chapter:
        raise ValueError(f"{path}: expected notebook metadata qlearn.chapter (e.g. 'ch03'), got none")
    expected = exercises_for(chapter)
    if not expected:
        raise ValueError(f"{path}: chapter {chapter!r} has no registered exercises")
    with tempfile.TemporaryDirectory(prefix="qlearn-grade-") as tmp:
        log = Path(tmp) / "checks.jsonl"
        work = Path(tmp) / path.name
        shutil.copy(path, work)
        env_before = os.environ.get("QLEARN_GRADE_LOG")
        os.environ["QLEARN_GRADE_LOG"] = str(log)  # inherited by the kernel process
        error = None
        try:
            client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                                    resources={"metadata": {"path": tmp}})
            client.execute()
        except Exception as e:  # kernel died, timeout: score what was recorded
            error = f"{type(e).__name__}: {e}"
        finally:
            if env_before is None:
                os.environ.pop("QLEARN_GRADE_LOG", None)
            else:
                os.environ["QLEARN_GRADE_LOG"] = env_before
        records = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    results: dict[str, dict] = {}
    for r in records:  # the last check of an exercise counts
        results[r["id"]] = {"passed": r["passed"], "message": r["message"]}
    score, total = 0, 0
    for ex in expected:
        total += ex.points
        r = results.setdefault(ex.id, {"passed": False, "message": f"{ex.id}: never checked"})
        if r["passed"]:
            score += ex.points
    return NotebookGrade(str(path), chapter, score, total, results, error)


def grade_paths(paths: list[str], timeout: int = 300) -> list[NotebookGrade]:
    """Grade every notebook named, or found under a named folder (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.suffix == ".ipynb":
            files.append(p)
        else:
            raise ValueError(f"expected a .ipynb file or a folder, got {p}")
    if not files:
        raise ValueError(f"no notebooks found under {paths}")
    return [grade_notebook(f, timeout) for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qlearn.grade", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="notebooks or folders of notebooks")
    ap.add_argument("--json", help="write the full report to this file")
    ap.add_argument("--verbose", "-v", action="store_true", help="print every exercise's feedback")
    ap.add_argument("--require-full", action="store_true", help="exit 1 unless every notebook has full marks")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per cell (default 300)")
    args = ap.parse_args(argv)
    grades = grade_paths(args.paths, args.timeout)
    for g in grades:
        print(f"{g.score:3d}/{g.total:<3d} {g.path}" + (f"  [{g.error}]" if g.error else ""))
        if args.verbose:
            for ex_id, r in sorted(g.results.items()):
                print("      " + r["message"].replace("\n", "\n      "))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(g) for g in grades], indent=1))
    return 1 if args.require_full and not all(g.full_marks for g in grades) else 0


if __name__ == "__main__":
    sys.exit(main())
