#!/bin/bash
# SmolLM2-135M, OneBit (foldable), block-wise only: token-relative loss, half the sequences without the start token
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/onebit-bw2 --method onebit --foldable \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --steps 0 --threads 2 --overwrite
