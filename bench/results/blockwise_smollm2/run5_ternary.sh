#!/bin/bash
# The same block-wise stage as run2.sh (same teacher data cache, steps, batch, learning rates, token
# loss) for ternary (BitNet b1.58, W1.58A8): the equal-budget comparison of issue 17
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/ternary-bw --method ternary \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --steps 0 --threads 2 --overwrite
