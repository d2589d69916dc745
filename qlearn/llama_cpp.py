"""Find llama.cpp's command-line tools, built by ``scripts/llama_cpp.sh``.

The tools live in a cache outside the repository, ``$QLEARN_LLAMA_CPP/bin`` (default
``~/.cache/qlearn/llama.cpp-0.3.36/bin``). qlearn never needs them; tests and chapters that
compare with llama.cpp call :func:`available` and skip (saying why) when it is False.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["VERSION", "bin_dir", "tool", "available", "run"]

VERSION = "0.3.36"  # the llama-cpp-python sdist whose vendored llama.cpp scripts/llama_cpp.sh builds


def bin_dir() -> Path:
    """The folder that holds (or will hold) the built tools."""
    root = os.environ.get("QLEARN_LLAMA_CPP") or Path.home() / ".cache" / "qlearn" / f"llama.cpp-{VERSION}"
    return Path(root) / "bin"


def tool(name: str) -> Path:
    """Path of one tool, e.g. ``tool("llama-quantize")``; ``FileNotFoundError`` names the fix."""
    if not isinstance(name, str) or not name.startswith("llama-"):
        raise ValueError(f"expected a llama.cpp tool name such as 'llama-quantize', got {name!r}")
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} not found: build llama.cpp with `bash scripts/llama_cpp.sh`")
    return path


def available(*names: str) -> bool:
    """True when every named tool (default: all the ones the tests use) is built."""
    names = names or ("llama-quantize", "llama-perplexity", "llama-imatrix", "llama-simple", "llama-bench")
    return all(os.access(bin_dir() / n, os.X_OK) for n in names)


def run(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a tool with arguments; raise ``RuntimeError`` with its stderr tail if it fails."""
    proc = subprocess.run([str(tool(name)), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
    return proc
