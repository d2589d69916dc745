#!/usr/bin/env bash
# Build the book (HTML under _build/html) from the notebooks' saved outputs, strictly:
# any Sphinx warning fails the build. Installs what it needs first (scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
start=$(date +%s)
.venv/bin/jupyter-book build . -W -n --keep-going
echo "book: built in $(( $(date +%s) - start )) s -> _build/html/index.html"
