#!/usr/bin/env bash
# Install qlearn and everything its tests and book need into ./.venv (a virtual environment
# that can see the interpreter's site-packages, so an already-installed torch is reused).
#
#   bash scripts/install.sh          # idempotent; re-running only installs what is missing
#
# torch: if the interpreter already has torch, that exact version is pinned for every pip call
# (a constraint, so no dependency can pull another build); otherwise torch==2.13.0 is installed
# first (a CPU wheel on the project's machines). Nothing here pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python
mkdir -p .venv/qlearn
CONSTRAINTS=.venv/qlearn/constraints.txt
if TV=$("$VPY" -c 'import torch, sys; sys.stdout.write(torch.__version__.split("+")[0])' 2>/dev/null); then
  echo "install: reusing installed torch $TV"
else
  TV=2.13.0
  echo "install: no torch found, installing torch==$TV (CPU wheel)"
  "$VPY" -m pip install -q "torch==$TV"
fi
echo "torch==$TV" > "$CONSTRAINTS"
export PIP_CONSTRAINT="$PWD/$CONSTRAINTS"
"$VPY" -m pip install -q -e ".[dev]"
"$VPY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (qlearn)" >/dev/null
# --- browser check (scripts/browser_check.py, issue #13): headless Chromium + its driver from
# Debian (only when missing), and the CDN scripts the book's pages load, from npm, into the
# ignored .cache/browser (the check serves them locally: it runs offline).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "install: apt-get install chromium chromium-driver"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if [ ! -f .cache/browser/node_modules/mathjax/es5/tex-mml-chtml.js ] \
   || [ ! -f .cache/browser/node_modules/plotly.js-basic-dist-min/plotly-basic.min.js ]; then
  mkdir -p .cache/browser
  npm install --prefix .cache/browser --silent --no-audit --no-fund --no-save \
    mathjax@3 requirejs@2 plotly.js-basic-dist-min >/dev/null
fi
# --- end browser check
echo "install: done ($("$VPY" -c 'import qlearn; print("qlearn", qlearn.__version__)'))"
