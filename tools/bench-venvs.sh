#!/usr/bin/env bash
# Benchmark-only virtual environments, kept apart from the product's .venv.
#
#   .venv-mlserver   Seldon MLServer 1.7 + onnxruntime, the comparison server of `make bench`.
#
# MLServer pins its own versions of FastAPI, uvicorn, pydantic, ...; installing it into .venv would
# change what phiserve runs on and so what the benchmark measures. Idempotent: a stamp file records
# a finished install, so a second run costs nothing. Packages come from the configured pip index.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
MLSERVER_VENV="${MLSERVER_VENV:-$ROOT/.venv-mlserver}"
MLSERVER_SPEC="${MLSERVER_SPEC:-mlserver==1.7.*}"
# MLServer 1.7.1's parallel workers call asyncio.get_event_loop() with no loop running, which
# uvloop >= 0.22 refuses ("There is no current event loop"): every worker dies at start-up
# (SeldonIO/MLServer issue 2286, fix not released). Pin uvloop below 0.22 until it is.
EXTRA_SPECS="${MLSERVER_EXTRA_SPECS:-uvloop<0.22}"
WANT="$MLSERVER_SPEC $EXTRA_SPECS"
STAMP="$MLSERVER_VENV/.bench-installed"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "bench-venvs: $MLSERVER_VENV is ready ($(cat "$STAMP"))"
  exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "bench-venvs: need $PYTHON on PATH" >&2; exit 1; }
echo "bench-venvs: creating $MLSERVER_VENV with $WANT and onnxruntime"
"$PYTHON" -m venv "$MLSERVER_VENV"
# pip warns about every local find-links folder that lacks a package: keep only real messages.
quiet() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; }
quiet "$MLSERVER_VENV/bin/pip" install -q --upgrade pip
# onnxruntime (CPU) like the main venv: the same kernels on both sides of the comparison.
# shellcheck disable=SC2086 # EXTRA_SPECS is a list of requirement specifiers
quiet "$MLSERVER_VENV/bin/pip" install -q "$MLSERVER_SPEC" onnxruntime $EXTRA_SPECS
"$MLSERVER_VENV/bin/mlserver" --help >/dev/null
echo "$WANT" >"$STAMP"
"$MLSERVER_VENV/bin/pip" list 2>/dev/null | grep -iE '^(mlserver|onnxruntime|uvicorn|fastapi|uvloop|numpy) '
