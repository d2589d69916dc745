#!/usr/bin/env bash
# The whole test suite (CI runs exactly this via .ci/run). Installs what it needs first, then:
#   - pytest over tests/ (unit + hypothesis property tests, the exercise grader over solutions,
#     blanks and crafted attacks, install and book consistency checks);
#   - nbval over every notebook in notebooks/ (saved outputs must match a fresh run);
#   - a strict book build (warnings are errors) from a clean _build.
# Each stage prints one header line and ends with its time; failures print in full.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
TIMINGS=""
stage_begin() { echo "=== $1"; STAGE_T=$(date +%s); STAGE_NAME=$2; }
stage_end() {
  local dt=$(( $(date +%s) - STAGE_T ))
  TIMINGS="$TIMINGS${TIMINGS:+, }$STAGE_NAME $dt s"
  echo "--- $STAGE_NAME: done in $dt s"
}

stage_begin "install (scripts/install.sh)" install
bash scripts/install.sh
stage_end

export PIP_CONSTRAINT="$PWD/.venv/qlearn/constraints.txt"
# no MPLBACKEND here: notebook kernels inherit it and Agg would drop every figure under nbval
unset MPLBACKEND
export PYTHONHASHSEED=0
# OpenMP threads (torch's, numba's) sleep instead of spinning while they wait: with two
# notebooks or test workers sharing two cores, spinning threads slowed whole-model GPTQ on the
# tiny model 27x (31.3 s vs 1.2 s CPU, measured); results are the same (only the thread count
# changes the arithmetic, not the wait policy)
export OMP_WAIT_POLICY=PASSIVE
# numba's on-disk cache lives in the clone, so a second run skips compilation
export NUMBA_CACHE_DIR="$PWD/.cache/numba"
# no download progress bars in test output or in outputs compared by nbval
export QLEARN_PROGRESS=0
PY=.venv/bin/python

stage_begin "llama.cpp tools (scripts/llama_cpp.sh; built once per machine, ~3-6 min)" llama.cpp
bash scripts/llama_cpp.sh
stage_end

stage_begin "unit, property and grader tests (pytest tests/)" tests
$PY -m pytest tests -q -p no:cacheprovider -n 2 --dist loadfile
stage_end

stage_begin "saved outputs of every chapter (nbval notebooks/)" nbval
$PY -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
    -p no:cacheprovider -q -n 2 --dist loadfile notebooks/
stage_end

stage_begin "strict book build (jupyter-book -W -n)" book
rm -rf _build
.venv/bin/jupyter-book build . -W -n --keep-going --quiet >/tmp/qlearn-book-build.log 2>&1 \
  || { cat /tmp/qlearn-book-build.log; echo "book build failed"; exit 1; }
echo "book: $(find _build/html -name '*.html' | wc -l) HTML pages under _build/html"
stage_end

stage_begin "browser check and link check of _build/html" browser
# every page in headless Chromium, screenshots as artifacts under _build/screenshots
$PY scripts/browser_check.py _build/html --shots _build/screenshots
# linkchecker follows every local link and anchor (external urls: syntax only, offline)
.venv/bin/linkchecker --no-status --no-warnings _build/html/index.html \
  >/tmp/qlearn-linkcheck.log 2>&1 || { cat /tmp/qlearn-linkcheck.log; echo "link check failed"; exit 1; }
echo "linkchecker: $(grep -E 'URLs checked' /tmp/qlearn-linkcheck.log)"
stage_end

echo "timings: $TIMINGS, total $(( $(date +%s) - T0 )) s"
