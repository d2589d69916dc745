#!/usr/bin/env bash
# Install qlearn and everything its tests and book need into ./.venv.
#
#   bash scripts/install.sh          # idempotent: a second run only checks (a few seconds)
#
# What it does, stage by stage (each stage prints one line and its time):
#   1. venv: creates .venv, isolated from the interpreter's own site-packages, so unrelated
#      system packages (their pytest plugins, warnings and pip conflicts) stay out.
#      QLEARN_VENV_SYSTEM_SITE=1 makes it see them instead (e.g. to reuse a system-wide torch).
#   2. torch: the CPU build, never a CUDA one, unless you ask. With torch already in the venv
#      (or visible through QLEARN_VENV_SYSTEM_SITE=1) that version is kept. Otherwise
#      $QLEARN_TORCH (default torch==2.13.0) is installed from a wheel already on this machine
#      (pip's find-links) if there is one, else from PyTorch's CPU wheel index,
#      $QLEARN_TORCH_INDEX (default https://download.pytorch.org/whl/cpu, about 200 MB).
#      Set QLEARN_TORCH_INDEX to another index (e.g. .../whl/cu128) to get a CUDA build.
#      The chosen version is written to .venv/qlearn/constraints.txt and pinned for every later
#      pip call, so no dependency can pull another torch.
#   3. qlearn: `pip install -e ".[dev]"` (tests, book, bitsandbytes; about 1.3 GB in all).
#   4. kernel: registers the venv as the "python3" Jupyter kernel inside the venv.
#
# Disk: about 1.5 GB for .venv, plus ~100 MB of model and text files that chapters download on
# first use into ~/.cache/qlearn (or $QLEARN_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEFAULT_TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC=${QLEARN_TORCH:-torch==2.13.0}
TORCH_INDEX=${QLEARN_TORCH_INDEX:-$DEFAULT_TORCH_INDEX}
# pip's own noise (version checks, resolver complaints) off; our lines say what happens
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1

stage_start=$(date +%s)
stage() {  # stage NAME MESSAGE: print the finished stage with its time
  local now; now=$(date +%s)
  printf 'install: %-7s %s (%d s)\n' "$1" "$2" $((now - stage_start))
  stage_start=$now
}
quiet_pip() {  # run pip quietly; on failure print its output and stop
  local log; log=$(mktemp)
  if ! "$VPY" -m pip "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    echo "install: pip $* failed (output above)" >&2
    exit 1
  fi
  rm -f "$log"
}

# --- 1. the virtual environment ---------------------------------------------------------------
if [ ! -x .venv/bin/python ]; then
  if [ "${QLEARN_VENV_SYSTEM_SITE:-0}" = 1 ]; then
    "$PY" -m venv --system-site-packages .venv
    stage venv "created .venv (sees the interpreter's site-packages)"
  else
    "$PY" -m venv .venv
    stage venv "created .venv (isolated from the interpreter's site-packages)"
  fi
else
  stage venv "found .venv"
fi
VPY=.venv/bin/python
mkdir -p .venv/qlearn
CONSTRAINTS=.venv/qlearn/constraints.txt

# --- 2. torch, CPU build --------------------------------------------------------------------------
torch_version() {  # the installed torch's version, from its metadata (its deps may come later)
  "$VPY" -c 'import importlib.metadata as m, sys; sys.stdout.write(m.version("torch"))' 2>/dev/null
}
if TV=$(torch_version); then
  stage torch "keeping the installed torch $TV"
else
  if [ "${QLEARN_INSTALL_DRY_RUN:-0}" = 1 ]; then
    # for tests: resolve torch as a fresh machine would, download nothing, print the choice
    echo "install: torch   would resolve $TORCH_SPEC from $TORCH_INDEX"
    exec "$VPY" -m pip install --dry-run --ignore-installed --no-deps --quiet \
      --report - --index-url "$TORCH_INDEX" "$TORCH_SPEC"
  fi
  if [ -z "${QLEARN_TORCH_INDEX:-}" ] && \
     "$VPY" -m pip install -q --no-index --no-deps "$TORCH_SPEC" >/dev/null 2>&1; then
    # its dependencies (sympy, networkx, ...) come from the index with qlearn's in stage 3
    stage torch "installed $(torch_version) from a wheel already on this machine"
  else
    echo "install: torch   downloading $TORCH_SPEC from $TORCH_INDEX (CPU build: ~200 MB;" \
         "CUDA builds only if you point QLEARN_TORCH_INDEX at one)"
    "$VPY" -m pip install --progress-bar on --index-url "$TORCH_INDEX" "$TORCH_SPEC" \
      | grep -v -E '^(Requirement already satisfied|Looking in indexes)' || true
    TV=$(torch_version) || { echo "install: torch could not be installed from $TORCH_INDEX" >&2; exit 1; }
    stage torch "installed torch $TV from $TORCH_INDEX"
  fi
  TV=$(torch_version)
fi
echo "torch==${TV%%+*}" > "$CONSTRAINTS"
export PIP_CONSTRAINT="$PWD/$CONSTRAINTS"

# --- 3. qlearn and its extras -----------------------------------------------------------------------
STAMP=.venv/qlearn/installed.sha256
WANT=$(cat pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-64)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VPY" -c 'import qlearn' 2>/dev/null; then
  stage qlearn "already installed (pyproject.toml unchanged)"
else
  echo "install: qlearn  installing qlearn[dev] and its dependencies (about 1 minute)"
  quiet_pip install -e ".[dev]"
  echo "$WANT" > "$STAMP"
  stage qlearn "installed $("$VPY" -c 'import qlearn; print("qlearn", qlearn.__version__)')"
fi

# --- 4. Jupyter kernel --------------------------------------------------------------------------------
"$VPY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (qlearn)" >/dev/null
stage kernel "registered the python3 kernel of .venv"
echo "install: done. Activate with: source .venv/bin/activate"
