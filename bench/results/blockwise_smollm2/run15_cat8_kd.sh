#!/bin/bash
# run12's CONCAT=8 blocks (out/smol/fold-bw-cat8.state, --resume), then STEPS (default 50) end-to-end KD steps
# on the same rows of 8 x 256 teacher tokens, one row (2040 tokens) per step: the tokens of run13's 100 steps
# of 1020.  Then eval.sh (WikiText-2 and C4) into eval17_cat8_kd.log.
#   bash bench/results/blockwise_smollm2/run15_cat8_kd.sh
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf; R=bench/results/blockwise_smollm2
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/fold-bw-cat8-kd --method onebit --foldable \
  --samples 128 --seqlen 256 --concat-sequences 8 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 1 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --state-dir out/smol/fold-bw-cat8.state --resume \
  --steps ${STEPS:-50} --batch-size 1 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 25 --eval-windows 2 --eval-seqlen 512 \
  --save-every 25 --threads 2 --overwrite > $R/run15_cat8_kd.log 2>&1 || exit 1
bash $R/eval.sh out/smol/fold-bw-cat8-kd > $R/eval17_cat8_kd.log 2>&1
