#!/usr/bin/env bash
# The fixed-point exact GEMVs (ONEBIT_CPU_ALGO=fxlut, the default on AVX-512 CPUs other than Intel's,
# and fx, its digit-plane twin) against the fp32 `shift` GEMV on a real 1-bit model: the SmolLM2 student of run19
# (bench/results/blockwise_smollm2/run19_one_command.sh -> out/smol/one-command), fp32 tied head.
# Every packed matmul is forced onto the GEMV kernels (the path decode takes; batched input takes
# the exact GEMM path whatever ONEBIT_CPU_ALGO says).  WikiText-2, 8 windows x 2048 tokens, 1 thread.
#   bash bench/results/fx_zen4/run.sh [STUDENT] > bench/results/fx_zen4/ppl.log 2>&1
set -euo pipefail
M=${1:-out/smol/one-command}
EVAL=(onebit eval ppl --data wikitext2 --seqlen 2048 --max-windows 8 --threads 1)
export ONEBIT_CPU_MM_THRESHOLD=1000000000
lscpu | grep -E "Model name|^CPU family|^Model:" || true
echo "== $M"
for algo in shift fx fxlut; do echo "ONEBIT_CPU_ALGO=$algo"; ONEBIT_CPU_ALGO=$algo "${EVAL[@]}" "$M"; done
