#!/bin/bash
# run2's finished blocks (--resume), then 100 end-to-end KD steps on the same teacher data
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/onebit-bw2-kd --method onebit --foldable \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --state-dir out/smol/onebit-bw2.state --resume \
  --steps 100 --batch-size 4 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 50 --eval-windows 2 --eval-seqlen 512 \
  --save-every 50 --threads 2 --overwrite
