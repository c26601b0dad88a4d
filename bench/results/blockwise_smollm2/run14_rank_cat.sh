#!/bin/bash
# run8 + run9 (rank-2 OneBit, 1024 teacher sequences of 256, 120 steps/block) with the sequences put
# CONCAT (default 8) back to back per row, as run12/run13 did for the foldable form: block batch 8/CONCAT
# rows (2048 tokens/step, as run8), then STEPS (default 60) end-to-end KD steps of one row each.  The
# teacher data comes from run8's cache (its 13:54 generation is not repeated here; add it to the total).
#   bash bench/results/blockwise_smollm2/run14_rank_cat.sh
#   (it then runs eval.sh on both models into eval16_rank_cat<CONCAT>.log)
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
C=${CONCAT:-8}; TAG=rank-bw-1024-cat$C; R=bench/results/blockwise_smollm2
BLOCKS="--method onebit-rank --rank 2 --samples 1024 --seqlen 256 --concat-sequences $C --data-cache out/smol/data
  --blockwise-steps 120 --block-batch-size $((8 / C)) --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token"
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/$TAG $BLOCKS --steps 0 --threads 2 --overwrite \
  > $R/run14_$TAG.log 2>&1 || exit 1
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/$TAG-kd $BLOCKS --state-dir out/smol/$TAG.state --resume \
  --steps ${STEPS:-60} --batch-size 1 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 30 --eval-windows 2 \
  --eval-seqlen 512 --save-every 30 --threads 2 --overwrite > $R/run14_$TAG-kd.log 2>&1 || exit 1
bash $R/eval.sh out/smol/$TAG out/smol/$TAG-kd > $R/eval16_rank_cat$C.log 2>&1
