#!/usr/bin/env bash
# Quick start, part 2: install (into .venv) and run the test suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
export PATH="$PWD/.venv/bin:$PATH"  # ninja (pip) for the C++ kernel build
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then echo "test: no tests were collected" >&2; exit 1; fi
exit $rc
