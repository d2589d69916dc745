"""Notebook tools for authors of the book (not part of the package).

    python scripts/nbtools.py frompy SRC.py OUT.ipynb [--chapter chNN]
        Build a notebook from a py:percent file (``# %%`` code cells, ``# %% [markdown]`` Markdown
        cells whose lines start with ``# ``; ``# %% tags=["nbval-ignore-output"]`` sets tags).
    python scripts/nbtools.py topy NB.ipynb OUT.py       the reverse, for editing
    python scripts/nbtools.py colab NB.ipynb [...]       (re)write the Colab install cell (first cell)
    python scripts/nbtools.py run NB.ipynb [...]         execute in place (cwd = the notebook's folder),
                                                          saving outputs; fails on any error
The repository url comes from _config.yml (the one place it is set).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
COLAB_MARK = "# Colab only: install qlearn"


def repo_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    m = re.search(r"^repository:\s*\n(?:\s+#.*\n)*\s+url:\s*(\S+)", text, re.M)
    if not m:
        raise ValueError("_config.yml: expected repository.url")
    return m.group(1)


def colab_source() -> str:
    return (f"{COLAB_MARK} (a no-op everywhere else).\n"
            "import sys\n"
            "if \"google.colab\" in sys.modules:\n"
            f"    %pip install -q \"qlearn @ git+{repo_url()}@main\"")


def set_colab_cell(nb) -> None:
    cell = nbformat.v4.new_code_cell(colab_source())
    # hidden in the rendered book (Sphinx/myst-nb drops remove-cell), kept for Colab
    cell.metadata["tags"] = ["remove-cell"]
    if nb.cells and nb.cells[0].cell_type == "code" and nb.cells[0].source.startswith(COLAB_MARK):
        nb.cells[0].source = cell.source
        nb.cells[0].outputs = []
        tags = nb.cells[0].metadata.setdefault("tags", [])
        if "remove-cell" not in tags:
            tags.append("remove-cell")
    else:
        nb.cells.insert(0, cell)


def frompy(src: Path, out: Path, chapter: str | None) -> None:
    nb = nbformat.v4.new_notebook()
    cells, cur, kind, tags = [], [], None, []

    def flush():
        if kind is None:
            return
        text = "\n".join(cur).strip("\n")
        if kind == "markdown":
            text = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in text.split("\n"))
            c = nbformat.v4.new_markdown_cell(text)
        else:
            c = nbformat.v4.new_code_cell(text)
        if tags:
            c.metadata["tags"] = list(tags)
        cells.append(c)

    for line in src.read_text().split("\n"):
        m = re.match(r"^# %%\s*(\[markdown\])?\s*(tags=(\[.*\]))?\s*$", line)
        if m:
            flush()
            kind = "markdown" if m.group(1) else "code"
            tags = json.loads(m.group(3)) if m.group(3) else []
            cur = []
        elif kind is not None:
            cur.append(line)
    flush()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    if chapter:
        nb.metadata["qlearn"] = {"chapter": chapter}
    set_colab_cell(nb)
    nbformat.write(nb, out)


def topy(nb_path: Path, out: Path) -> None:
    nb = nbformat.read(nb_path, as_version=4)
    parts = []
    for c in nb.cells:
        tags = c.metadata.get("tags")
        t = f" tags={json.dumps(tags)}" if tags else ""
        if c.cell_type == "markdown":
            parts.append(f"# %% [markdown]{t}\n" + "\n".join("# " + l if l else "#" for l in c.source.split("\n")))
        elif c.source.startswith(COLAB_MARK):
            continue
        else:
            parts.append(f"# %%{t}\n{c.source}")
    out.write_text("\n\n".join(parts) + "\n")


def run(nb_path: Path) -> None:
    from nbclient import NotebookClient

    import os

    nb = nbformat.read(nb_path, as_version=4)
    set_colab_cell(nb)
    # The kernel inherits our environment: MPLBACKEND=Agg there would silently drop every figure.
    os.environ.pop("MPLBACKEND", None)
    t = time.time()
    NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    nbformat.write(nb, nb_path)
    print(f"{nb_path}: executed in {time.time() - t:.1f} s")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "frompy":
        chapter = rest[rest.index("--chapter") + 1] if "--chapter" in rest else None
        frompy(Path(rest[0]), Path(rest[1]), chapter)
    elif cmd == "topy":
        topy(Path(rest[0]), Path(rest[1]))
    elif cmd == "colab":
        for p in map(Path, rest):
            nb = nbformat.read(p, as_version=4)
            set_colab_cell(nb)
            nbformat.write(nb, p)
    elif cmd == "run":
        for p in map(Path, rest):
            run(p)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
