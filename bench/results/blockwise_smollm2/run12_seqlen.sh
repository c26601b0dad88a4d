#!/bin/bash
# Does the calibration sequence length limit the block-wise student?  The run2 settings (OneBit
# --foldable, 120 steps/block, token loss, lr 1e-2 / 3e-3) with the same number of calibration tokens
# (32k) in longer sequences: SAMPLES x SEQLEN (default 32 x 1024) and a block batch of the same 2048
# tokens per step (8 x 256 in run2); or run2's own 128 x 256 sequences, 4 back to back per row (CONCAT=4).
#   SAMPLES=32 SEQLEN=1024 BATCH=2 bash bench/results/blockwise_smollm2/run12_seqlen.sh
#   SAMPLES=128 SEQLEN=256 CONCAT=4 BATCH=2 TAG=fold-bw-cat4 bash bench/results/blockwise_smollm2/run12_seqlen.sh
#   bash bench/results/blockwise_smollm2/eval.sh out/smol/fold-bw-s1024
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
S=${SAMPLES:-32}; L=${SEQLEN:-1024}; B=${BATCH:-2}; M=${METHOD:-onebit --foldable}; TAG=${TAG:-fold-bw-s$L}
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/$TAG --method $M \
  --samples $S --seqlen $L --concat-sequences ${CONCAT:-1} --data-cache out/smol/data \
  --blockwise-steps ${STEPS:-120} --block-batch-size $B --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --steps 0 --threads 2 --overwrite > bench/results/blockwise_smollm2/run12_$TAG.log 2>&1
