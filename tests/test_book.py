"""Consistency of the book: toc, Colab cells, notebook metadata, exercise pairs."""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import nbtools  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STUDENT = sorted((ROOT / "exercises").glob("*.ipynb"))


def toc_files() -> list[str]:
    return re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text())


def test_every_notebook_is_in_the_toc():
    listed = set(toc_files())
    missing = [p.stem for p in NOTEBOOKS if f"notebooks/{p.stem}" not in listed]
    assert not missing, f"notebooks not in _toc.yml: {missing}"


def test_every_toc_entry_exists():
    for f in toc_files():
        assert any((ROOT / (f + ext)).exists() for ext in (".md", ".ipynb")), f


@pytest.mark.parametrize("path", NOTEBOOKS + STUDENT + sorted((ROOT / "exercises/solutions").glob("*.ipynb")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_first_cell_installs_qlearn_only_in_colab(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "code" and first.source == nbtools.colab_source(), (
        f"{path.name}: first cell must be the Colab install cell; run scripts/nbtools.py colab")
    assert nbtools.repo_url() in first.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_notebook_has_saved_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"][1:]
    assert code and all(c.execution_count for c in code), f"{path.name}: run it with scripts/nbtools.py run"


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.name)
def test_every_student_notebook_has_a_solution_and_a_chapter(path):
    sol = ROOT / "exercises" / "solutions" / path.name
    assert sol.exists(), f"missing solution notebook {sol}"
    for p in (path, sol):
        assert nbformat.read(p, as_version=4).metadata.get("qlearn", {}).get("chapter")
