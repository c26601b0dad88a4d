#!/usr/bin/env bash
# Quick start, part 1: install (into .venv) and run the demo.  Extra arguments go to `onebit demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/onebit demo "$@"
