#!/usr/bin/env bash
# Create .venv and install onebit into it (idempotent).  torch is installed FIRST and pinned:
# an unpinned torch would pull GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${ONEBIT_TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.onebit-installed
want="$(cat pyproject.toml | sha256sum | cut -c1-16)-$TORCH_VERSION"
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: installing torch==$TORCH_VERSION, then onebit[test,plot,triton,lmeval] (editable)" >&2
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION"
  .venv/bin/python -m pip install -q -e ".[test,plot,triton,lmeval]"  # triton: kernel tests run in its CPU interpreter; lmeval: tests/eval/test_harness.py
  # llama.cpp for the export tests, built from source (a few minutes on 2 cores).  AMX is left out:
  # llama.cpp's AMX Q4_0/Q8_0 path crashes on AMX CPUs (ggml-org/llama.cpp#20824).
  echo "setup: building llama-cpp-python (llama.cpp) from source, a few minutes" >&2
  amx="-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$amx' -DCMAKE_CXX_FLAGS='$amx'" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    .venv/bin/python -m pip install -q --no-cache-dir -e ".[llamacpp]"  # no cached wheel: it may have AMX
  echo "$want" > $stamp
fi
