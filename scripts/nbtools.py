"""Notebook tools for authors of the book (not part of the package).

    python scripts/nbtools.py frompy SRC.py OUT.ipynb [--chapter chNN]
        Build a notebook from a py:percent file (``# %%`` code cells, ``# %% [markdown]`` Markdown
        cells whose lines start with ``# ``; ``# %% tags=["nbval-ignore-output"]`` sets tags).
    python scripts/nbtools.py topy NB.ipynb OUT.py       the reverse, for editing
    python scripts/nbtools.py colab NB.ipynb [...]       (re)write the Colab install cell (first cell)
    python scripts/nbtools.py run NB.ipynb [...]         execute in place (cwd = the notebook's folder),
                                                          saving outputs; fails on any error. Saves
                                                          no widget state and no tqdm bars.
    python scripts/nbtools.py strip NB.ipynb [...]       drop saved widget state/views (no execution)
    python scripts/nbtools.py lint NB.ipynb [...]        report what the book's tests reject: code
                                                          lines over 79 characters, saved widget
                                                          state, figures without caption/alt text
                                                          or wider than 7 in,
                                                          a missing skeleton section; exit 1 if any
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
MAX_LINE = 79  # characters per code line: what the book's column shows without a scrollbar
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
# Widest PNG a figure may save: 7 in at the inline backend's 100 dpi, plus what bbox "tight"
# adds. Wider, and the book shrinks it (labels unreadable); the browser check sees that too.
MAX_FIGURE_PX = 720
# The chapter skeleton (DEVELOPING.md, "Session 3"): level-2 headings every chapter has, in order.
SKELETON = ("Goals", "Summary", "Exercises", "Interview questions")


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


def strip_widgets(nb) -> int:
    """Drop saved widget state (notebook metadata) and widget views (outputs); return how many
    outputs were dropped. The static book has no kernel: a saved widget renders as dead controls."""
    nb.metadata.pop("widgets", None)
    dropped = 0
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        keep = [o for o in c.outputs if WIDGET_VIEW not in o.get("data", {})]
        dropped += len(c.outputs) - len(keep)
        c.outputs = keep
    return dropped


def long_lines(nb) -> list[tuple[int, str]]:
    """(cell index, line) for every code line over MAX_LINE characters."""
    return [(i, line) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for line in c.source.split("\n") if len(line) > MAX_LINE]


def widget_leftovers(nb) -> list[str]:
    """Where widget state or views are saved in ``nb`` (empty if none)."""
    found = ["notebook metadata 'widgets'"] if nb.metadata.get("widgets") else []
    found += [f"cell {i}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and any(WIDGET_VIEW in o.get("data", {}) or WIDGET_STATE in o.get("data", {})
                      for o in c.outputs)]
    return found


def uncaptioned_figures(nb) -> list[str]:
    """Cells with an image output but no figure caption or no image alt text in their metadata."""
    bad = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code" or not any(
                m in o.get("data", {}) for o in c.outputs for m in IMAGE_MIMES):
            continue
        meta = c.metadata.get("mystnb", {})
        caption = meta.get("figure", {}).get("caption", "").strip()
        alt = meta.get("image", {}).get("alt", "").strip()
        if not caption or not alt:
            bad.append(f"cell {i}: caption {bool(caption)}, alt {bool(alt)}")
    return bad


def wide_figures(nb) -> list[str]:
    """PNG outputs wider than MAX_FIGURE_PX (the width is read from the PNG header)."""
    import base64
    import struct

    bad = []
    for i, c in enumerate(nb.cells):
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            data = o.get("data", {}).get("image/png")
            if data:
                width = struct.unpack(">I", base64.b64decode(data[:32])[16:20])[0]
                if width > MAX_FIGURE_PX:
                    bad.append(f"cell {i}: {width} px")
    return bad


def skeleton_problems(nb) -> list[str]:
    """What is missing from the chapter skeleton: an unnumbered '# Title' first, then the
    SKELETON level-2 sections in order, and an interview.show cell."""
    heads = [line for c in nb.cells if c.cell_type == "markdown"
             for line in c.source.split("\n") if line.startswith("#")]
    problems = []
    if not heads or not heads[0].startswith("# "):
        problems.append("the first heading is not a level-1 '# Title'")
    elif re.match(r"# (Chapter )?\d", heads[0]):
        problems.append(f"the title carries a number (the toc numbers chapters): {heads[0]!r}")
    h2 = [h[3:].strip() for h in heads if h.startswith("## ")]
    pos = -1
    for name in SKELETON:
        if name not in h2:
            problems.append(f"no '## {name}' section")
        elif h2.index(name) < pos:
            problems.append(f"'## {name}' is out of order")
        else:
            pos = h2.index(name)
    if not any(c.cell_type == "code" and "interview.show(" in c.source for c in nb.cells):
        problems.append("no interview.show(...) cell")
    return problems


def lint(nb) -> list[str]:
    out = [f"cell {i}: {len(line)} chars: {line}" for i, line in long_lines(nb)]
    out += [f"widget state saved: {w}" for w in widget_leftovers(nb)]
    out += [f"figure without caption/alt: {b}" for b in uncaptioned_figures(nb)]
    out += [f"figure wider than {MAX_FIGURE_PX} px: {b}" for b in wide_figures(nb)]
    out += [f"skeleton: {p}" for p in skeleton_problems(nb)]
    return out


def run(nb_path: Path) -> None:
    from nbclient import NotebookClient

    import os

    nb = nbformat.read(nb_path, as_version=4)
    set_colab_cell(nb)
    # The kernel inherits our environment: MPLBACKEND=Agg there would silently drop every figure.
    os.environ.pop("MPLBACKEND", None)
    # waiting OpenMP threads sleep rather than spin (same results; see scripts/test.sh)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # No progress bars in saved outputs (tqdm >= 4.66 reads TQDM_* variables); Colab keeps them.
    os.environ["TQDM_DISABLE"] = "1"
    t = time.time()
    # (nbclient needs its widget bookkeeping while it runs: the state is dropped afterwards)
    NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    strip_widgets(nb)
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
    elif cmd == "strip":
        for p in map(Path, rest):
            nb = nbformat.read(p, as_version=4)
            print(f"{p}: dropped {strip_widgets(nb)} widget outputs")
            nbformat.write(nb, p)
    elif cmd == "lint":
        bad = 0
        for p in map(Path, rest):
            for problem in lint(nbformat.read(p, as_version=4)):
                print(f"{p}: {problem}")
                bad += 1
        sys.exit(1 if bad else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
