"""Re-run only the interview cells (``interview.show(...)``) of chapter notebooks and save
their outputs, leaving every other cell as it is.

    PYTHONPATH=$PWD python scripts/refresh_interview_cells.py notebooks/0*.ipynb notebooks/10_*.ipynb

The interview bank changes more often than the chapters; this keeps each chapter's saved
interview output equal to what a fresh run gives (nbval compares it) without re-executing the
whole chapter. The cells run in a real kernel (nbclient), so outputs match a full run's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

MARK = "interview.show("


def refresh(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and MARK in c.source]
    if not cells:
        return 0
    tmp = nbformat.v4.new_notebook(metadata=nb.metadata)
    tmp.cells = [nbformat.v4.new_code_cell(c.source) for c in cells]
    NotebookClient(tmp, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    for old, new in zip(cells, tmp.cells):
        old.outputs = new.outputs
    nbformat.write(nb, path)
    return len(cells)


def main(paths) -> None:
    if not paths:
        raise SystemExit(__doc__)
    for p in map(Path, paths):
        print(f"{p}: {refresh(p)} interview cell(s) refreshed")


if __name__ == "__main__":
    main(sys.argv[1:])
