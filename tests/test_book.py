"""Consistency of the book: toc, Colab cells, notebook metadata, exercise pairs."""

import base64
import re
import struct
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


# --- The rendered book (issue #13). Generic over every notebook in notebooks/: chapters that
# land later must pass these too. `scripts/nbtools.py lint` prints the same findings.

COLAB_EXERCISE = re.compile(
    r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/"
    r"(exercises/[\w.-]+\.ipynb)")


# what each check finds, as a list of places (empty: the notebook passes)
NOTEBOOK_CHECKS = {
    f"code lines over {nbtools.MAX_LINE} characters":
        lambda nb: [f"cell {i}: {line!r}" for i, line in nbtools.long_lines(nb)],
    "saved widget state (run scripts/nbtools.py strip)": nbtools.widget_leftovers,
    "figure outputs without mystnb.figure.caption and mystnb.image.alt":
        nbtools.uncaptioned_figures,
    f"figures wider than {nbtools.MAX_FIGURE_PX} px (figsize over 7 in)": nbtools.wide_figures,
    "chapter skeleton (DEVELOPING.md, Session 3)": nbtools.skeleton_problems,
}


@pytest.mark.parametrize("check", NOTEBOOK_CHECKS)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_passes_the_book_lint(path, check):
    found = NOTEBOOK_CHECKS[check](nbformat.read(path, as_version=4))
    assert not found, f"{path.name}: {check}: {len(found)}, first {found[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_are_linked_to_colab(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    section = text.split("## Exercises", 1)[-1].split("\n## ", 1)[0]
    links = COLAB_EXERCISE.findall(section)
    assert links, f"{path.name}: the Exercises section links no exercise notebook on Colab"
    for rel in links:
        assert (ROOT / rel).exists(), f"{path.name}: links {rel}, which does not exist"


def test_no_tqdm_bars_in_saved_outputs():
    bar = re.compile(r"\d+%\|[^|]*\|")  # tqdm's text bar: ' 40%|####      | 4/10'
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for i, c in enumerate(nb.cells):
            for o in c.get("outputs", []):
                assert not bar.search(o.get("text", "")), f"{path.name} cell {i}: tqdm bar"


def test_chapters_are_numbered_consecutively():
    """Every part holding a chapter notebook is numbered, so the chapters read 1, 2, ... across
    parts (sphinx-multitoc-numbering continues the count); prose-only parts are not."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    seen = []
    for part in toc["parts"]:
        files = [c["file"] for c in part["chapters"]]
        has_chapter = any(f.startswith("notebooks/") for f in files)
        assert bool(part.get("numbered")) == has_chapter, (
            f"part {part['caption']!r}: numbered must be {has_chapter}")
        seen += [f for f in files if f.startswith("notebooks/")]
    assert seen == sorted(seen), f"chapters out of order in _toc.yml: {seen}"
    numbers = [int(Path(f).name.split("_")[0]) for f in seen]
    assert numbers == list(range(1, len(numbers) + 1)), numbers


def test_multitoc_numbering_is_on():
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config.get("sphinx", {}).get("config", {}).get("use_multitoc_numbering", True)


def test_the_book_lint_finds_each_problem():
    """A test of the tests above: a notebook with one of each problem fails every check."""
    nb = nbformat.v4.new_notebook()
    wide = nbformat.v4.new_code_cell("x = 1" + " " * 80 + "# too wide")
    widget = nbformat.v4.new_code_cell("explore(W)")
    widget.outputs = [nbformat.v4.new_output(
        "display_data", {nbtools.WIDGET_VIEW: {"model_id": "m"}, "text/plain": "w"})]
    figure = nbformat.v4.new_code_cell("plt.show()")
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + struct.pack(">II", 1100, 400)
                           + b"\x08\x02\0\0\0").decode()
    figure.outputs = [nbformat.v4.new_output("display_data", {"image/png": png})]
    nb.cells = [nbformat.v4.new_markdown_cell("# 3. Title\n\n## Summary\n\n## Goals"),
                wide, widget, figure]
    nb.metadata["widgets"] = {nbtools.WIDGET_STATE: {"state": {}}}
    for check, find in NOTEBOOK_CHECKS.items():
        assert find(nb), f"{check} found nothing"
    skeleton = nbtools.skeleton_problems(nb)
    assert any("carries a number" in p for p in skeleton)
    assert "'## Summary' is out of order" in skeleton
    assert "no '## Exercises' section" in skeleton
    assert nbtools.strip_widgets(nb) == 1 and not nbtools.widget_leftovers(nb)
