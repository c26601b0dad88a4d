#!/bin/bash
# run12's CONCAT=4 blocks (out/smol/fold-bw-cat4.state, --resume), then run3's 100 end-to-end KD steps on the
# same rows of 4 x 256 teacher tokens: batch 1 row (1020 tokens) per step, where run3 had 4 x 256.
#   bash bench/results/blockwise_smollm2/run13_cat4_kd.sh
#   bash bench/results/blockwise_smollm2/eval.sh out/smol/fold-bw-cat4-kd
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/fold-bw-cat4-kd --method onebit --foldable \
  --samples 128 --seqlen 256 --concat-sequences 4 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 2 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --state-dir out/smol/fold-bw-cat4.state --resume \
  --steps 100 --batch-size 1 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 50 --eval-windows 2 --eval-seqlen 512 \
  --save-every 50 --threads 2 --overwrite > bench/results/blockwise_smollm2/run13_cat4_kd.log 2>&1
