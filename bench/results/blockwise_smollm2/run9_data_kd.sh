#!/bin/bash
# run8_data.sh's finished blocks (--resume from its state), then STEPS (default 180) end-to-end KD steps
# on the same 1024 teacher sequences (run3.sh's settings), so data + blocks + KD fit the 90-minute budget.
#   bash bench/results/blockwise_smollm2/run9_data_kd.sh
#   bash bench/results/blockwise_smollm2/eval.sh out/smol/rank-bw-1024-kd
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/rank-bw-1024-kd --method onebit-rank --rank 2 \
  --samples 1024 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --state-dir out/smol/rank-bw-1024.state --resume \
  --steps ${STEPS:-180} --batch-size 4 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 100 --eval-windows 2 \
  --eval-seqlen 512 --save-every 50 --threads 2 --overwrite > bench/results/blockwise_smollm2/run9_rank_1024_kd.log 2>&1
