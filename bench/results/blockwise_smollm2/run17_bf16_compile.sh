#!/bin/bash
# run14 (rank-2 OneBit, run8's 1024 teacher sequences of 256 put 8 per row, 120 steps/block, block batch
# 1 row) with both stages under bf16 autocast and torch.compile (--block-bf16 --bf16 --compile), which
# makes the block-wise stage ~1.8x and an end-to-end step ~2.9x faster on the AMX/AVX512-BF16 Xeon; the
# time saved goes to STEPS (default 150) end-to-end KD steps of one 2040-token row instead of 60.  The
# teacher data comes from run8's cache (its 13:54 generation is not repeated here; add it to the total).
# Measured 2026-12-05 (run17_*.log; then --bf16 also switched the block-wise stage, since split into
# --block-bf16): blocks in 28:54 instead of run14's 53:03 with the same per-block errors, but 521.0 on
# WikiText-2 instead of 440.4 (eval19_block_bf16.log); the KD stage was stopped at its first step.
#   bash bench/results/blockwise_smollm2/run17_bf16_compile.sh
#   (it then runs eval.sh on both models into eval19_block_bf16.log)
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
TAG=${TAG:-rank-bw-1024-cat8-bf16}; R=bench/results/blockwise_smollm2
BLOCKS="--method onebit-rank --rank 2 --samples 1024 --seqlen 256 --concat-sequences 8 --data-cache out/smol/data
  --blockwise-steps 120 --block-batch-size 1 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token
  --block-bf16 --compile"
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/$TAG $BLOCKS --steps 0 --threads 2 --overwrite \
  > $R/run17_$TAG.log 2>&1 || exit 1
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/$TAG-kd $BLOCKS --state-dir out/smol/$TAG.state --resume \
  --steps ${STEPS:-150} --batch-size 1 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 50 --eval-windows 2 \
  --eval-seqlen 512 --save-every 50 --threads 2 --overwrite --bf16 > $R/run17_$TAG-kd.log 2>&1 || exit 1
bash $R/eval.sh out/smol/$TAG out/smol/$TAG-kd > $R/eval19_block_bf16.log 2>&1
