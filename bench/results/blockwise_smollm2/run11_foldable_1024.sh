#!/bin/bash
# An exactly exportable SmolLM2 student with the 1024-sequence data of run8_data.sh: OneBit --foldable
# (llama.cpp Q1_0 after folding), half of run8's steps per block (60) and the time saved spent on
# end-to-end KD (STEPS, default 120; run9's settings).  Reads run8's teacher data cache (generated
# there in 13:54, inside run8's timed command: add that to this run's wall time for the budget).
#   bash bench/results/blockwise_smollm2/run11_foldable_1024.sh
#   bash bench/results/blockwise_smollm2/eval.sh out/smol/fold-bw60-1024-kd
#   bash bench/results/blockwise_smollm2/agreement.sh fold=out/smol/fold-bw60-1024-kd
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/fold-bw60-1024-kd --method onebit --foldable \
  --samples 1024 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 60 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --steps ${STEPS:-120} --batch-size 4 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 60 --eval-windows 2 \
  --eval-seqlen 512 --save-every 60 --threads 2 --overwrite > bench/results/blockwise_smollm2/run11_foldable_1024.log 2>&1
