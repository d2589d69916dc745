#!/usr/bin/env bash
# Build llama.cpp's CPU tools once per machine, from the source vendored in the pinned
# llama-cpp-python sdist on PyPI (nothing else is downloaded), into a cache outside the repo.
#
#   bash scripts/llama_cpp.sh          # prints the bin directory on its last line
#
# Cache: $QLEARN_LLAMA_CPP (default ~/.cache/qlearn/llama.cpp-<version>); the tools land in
# its bin/. A second run finds them and returns at once. Tests that need llama.cpp look there
# (qlearn.llama_cpp.bin_dir()) and are skipped with a reason when the tools are absent.
set -euo pipefail
VERSION=0.3.36   # llama-cpp-python sdist; vendors llama.cpp at commit 0c1e570
ROOT=${QLEARN_LLAMA_CPP:-$HOME/.cache/qlearn/llama.cpp-$VERSION}
TOOLS="llama-quantize llama-perplexity llama-imatrix llama-simple llama-bench"
BIN="$ROOT/bin"
have_all() { for t in $TOOLS; do [ -x "$BIN/$t" ] || return 1; done; }
if have_all; then
  echo "llama.cpp: found in $BIN"
  echo "$BIN"
  exit 0
fi
for tool in cmake g++; do
  if ! command -v $tool >/dev/null; then
    echo "llama.cpp: $tool missing; installing it with apt-get" >&2
    apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null
  fi
done
PY=${PYTHON:-python3}
[ -x "$(dirname "$0")/../.venv/bin/python" ] && PY="$(dirname "$0")/../.venv/bin/python"
mkdir -p "$ROOT/src"
SDIST="$ROOT/src/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  echo "llama.cpp: downloading the llama-cpp-python==$VERSION sdist (~50 MB) from PyPI"
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$ROOT/src"
fi
SRC="$ROOT/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -d "$SRC" ] || tar -xzf "$SDIST" -C "$ROOT/src"
echo "llama.cpp: building $TOOLS (about 6 minutes on 2 cores)"
t0=$(date +%s)
cmake -S "$SRC" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DLLAMA_BUILD_TESTS=OFF >"$ROOT/configure.log" 2>&1 \
  || { echo "llama.cpp: configure failed, see $ROOT/configure.log" >&2; tail -20 "$ROOT/configure.log" >&2; exit 1; }
cmake --build "$ROOT/build" -j"${JOBS:-2}" --target $TOOLS >"$ROOT/build.log" 2>&1 \
  || { echo "llama.cpp: build failed, see $ROOT/build.log" >&2; tail -20 "$ROOT/build.log" >&2; exit 1; }
mkdir -p "$BIN"
for t in $TOOLS; do cp "$ROOT/build/bin/$t" "$BIN/"; done
echo "llama.cpp: built in $(( $(date +%s) - t0 )) s"
echo "$BIN"
