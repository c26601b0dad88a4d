#!/bin/bash
# SmolLM2-135M, OneBit (foldable) block-wise 150 steps/block, then end-to-end KD to a 90-minute total
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/onebit-bw --method onebit --foldable \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 150 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 \
  --steps ${1:-160} --batch-size 4 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 25 --eval-windows 4 --eval-seqlen 512 \
  --save-every 25 --overwrite
