#!/usr/bin/env bash
# The exact AVX2 paths on a real 1-bit model, onebit capped at AVX2 (MKL/oneDNN too): the SmolLM2
# student of run19 (bench/results/blockwise_smollm2/run19_one_command.sh -> out/smol/one-command),
# fp32 tied head, WikiText-2, 8 windows x 2048 tokens, 1 thread.  Each window is one batched call
# per layer (2048 rows): `table` (the AVX2 default before fxlut, and still on Intel) takes the
# ±1 fp32 tiles + MKL GEMM path there; `simd` (the default: fxlut off Intel) the fixed-point tables
# at every batch size.  Both are exact: the perplexities must agree to rounding, and the elapsed
# times compare the two batched paths.
#   bash bench/results/fxlut_avx2_zen4/run.sh [STUDENT] > bench/results/fxlut_avx2_zen4/ppl.log 2>&1
set -euo pipefail
M=${1:-out/smol/one-command}
EVAL=(onebit eval ppl --data wikitext2 --seqlen 2048 --max-windows 8 --threads 1)
export ONEBIT_CPU_ISA=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
lscpu | grep -E "Model name|^CPU family|^Model:" || true
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== $M"
for algo in table simd; do echo "ONEBIT_CPU_ALGO=$algo"; ONEBIT_CPU_ALGO=$algo "${EVAL[@]}" "$M"; done
