#!/bin/bash
# Issue 17's lever after bench/calib_fit.py showed the block-wise students overfitting their 33k
# calibration tokens: the rank-2 block-wise run of run7_equal.sh with SAMPLES (default 1024) teacher
# sequences instead of 128, the same steps/batch/learning rates.  Everything is timed in one command:
# the teacher data is generated inside `onebit distill` (a cache miss), then the 30 blocks.
#   bash bench/results/blockwise_smollm2/run8_data.sh
#   bash bench/results/blockwise_smollm2/eval.sh out/smol/rank-bw-<SAMPLES>
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
N=${SAMPLES:-1024}
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/rank-bw-$N --method onebit-rank --rank 2 \
  --samples $N --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --steps 0 --threads 2 --overwrite > bench/results/blockwise_smollm2/run8_rank_$N.log 2>&1
