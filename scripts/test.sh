#!/usr/bin/env bash
# The whole test suite. Installs what it needs first (scripts/install.sh), then runs:
#   1. pytest over tests/ (unit + hypothesis property tests, the exercise grader over the
#      solution notebooks and the blank student notebooks, book consistency checks);
#   2. nbval over every notebook in notebooks/ (saved outputs must match a fresh run);
#   3. a strict book build (warnings are errors) from a clean _build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PIP_CONSTRAINT="$PWD/.venv/qlearn/constraints.txt"
# no MPLBACKEND here: notebook kernels inherit it and Agg would drop every figure under nbval
unset MPLBACKEND
export PYTHONHASHSEED=0
# numba's on-disk cache lives in the clone, so a second run skips compilation
export NUMBA_CACHE_DIR="$PWD/.cache/numba"
PY=.venv/bin/python
t0=$(date +%s)

echo "=== 0/3 llama.cpp tools (built once per machine; tests/test_export.py compares against them)"
bash scripts/llama_cpp.sh

echo "=== 1/3 unit, property and grader tests"
$PY -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile
t1=$(date +%s)

echo "=== 2/3 nbval over notebooks/"
$PY -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
    -p no:cacheprovider -q -n 2 --dist loadfile notebooks/
t2=$(date +%s)

echo "=== 3/3 strict book build"
rm -rf _build
.venv/bin/jupyter-book build . -W -n --keep-going --quiet
t3=$(date +%s)
echo "timings: tests $((t1-t0)) s, nbval $((t2-t1)) s, book $((t3-t2)) s, total $((t3-t0)) s"
