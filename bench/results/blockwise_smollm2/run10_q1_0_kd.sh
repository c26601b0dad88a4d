#!/bin/bash
# The Q1_0-native student (run7_equal.sh with METHODS=q1_0: sign + one trained scale per 128 weights,
# llama.cpp's own 1-bit type, exported exactly), its finished blocks resumed, then run3.sh's 100
# end-to-end KD steps on the same 128 teacher sequences: a SmolLM2 1-bit model that runs in stock
# llama.cpp as trained.
#   bash bench/results/blockwise_smollm2/run10_q1_0_kd.sh
#   bash bench/results/blockwise_smollm2/eval.sh out/smol/q1_0-bw-kd
#   onebit export out/smol/q1_0-bw-kd out/smol/q1_0-bw-kd.gguf
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/q1_0-bw-kd --method q1_0 \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --state-dir out/smol/q1_0-bw.state --resume \
  --steps 100 --batch-size 4 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 50 --eval-windows 2 --eval-seqlen 512 \
  --save-every 50 --threads 2 --overwrite > bench/results/blockwise_smollm2/run10_q1_0_kd.log 2>&1
