#!/usr/bin/env bash
# Install the project with its test extras into .venv and run the whole test suite.
# Extra arguments go to pytest (e.g. -k parity, -x).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: the suite is broken (exit 5)" >&2
  exit 1
fi
exit "$rc"
