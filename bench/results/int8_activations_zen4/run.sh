#!/usr/bin/env bash
# The perplexity cost of int8 activations (ONEBIT_CPU_ALGO=i8: integer block scales s_b = S*u_b, and
# with AVX512-VNNI the int4 head's GEMV on int8 activations too) on a real 1-bit model: the SmolLM2
# student of run19 (bench/results/blockwise_smollm2/run19_one_command.sh -> out/smol/one-command).
# Every matmul is forced onto the GEMV kernels (the paths decode takes; batched input would take the
# exact GEMM path whatever ONEBIT_CPU_ALGO says).  WikiText-2, 8 windows x 2048 tokens, 1 thread.
#   bash bench/results/int8_activations_zen4/run.sh [STUDENT] > bench/results/int8_activations_zen4/ppl.log 2>&1
set -euo pipefail
M=${1:-out/smol/one-command}
EVAL=(onebit eval ppl --data wikitext2 --seqlen 2048 --max-windows 8 --threads 1)
export ONEBIT_CPU_MM_THRESHOLD=1000000000 ONEBIT_CPU_QMM_THRESHOLD=1000000000
lscpu | grep -E "Model name|^CPU family|^Model:" || true
echo "== $M, fp32 head (tied embedding)"
for algo in simd i8; do echo "ONEBIT_CPU_ALGO=$algo"; ONEBIT_CPU_ALGO=$algo "${EVAL[@]}" "$M"; done
for kind in int8 int4; do   # the embedding / tied head quantized to int8 / int4 g32, as --embed-quant
  H="${M%/}-embed-$kind"
  if [ ! -d "$H" ]; then
    python - "$M" "$H" "$kind" <<'PY'
import sys
import onebit
from onebit.embeddings import EmbedQuantConfig
from onebit.pipelines.embeddings import quantize_embeddings
m = onebit.load(sys.argv[1])
quantize_embeddings(m, EmbedQuantConfig(sys.argv[3], group_size=32, head=True))
onebit.save(m, sys.argv[2], source=sys.argv[1])
PY
  fi
  echo "== $H, $kind g32 embedding and head"
  for algo in simd i8; do echo "ONEBIT_CPU_ALGO=$algo"; ONEBIT_CPU_ALGO=$algo "${EVAL[@]}" "$H"; done
done
