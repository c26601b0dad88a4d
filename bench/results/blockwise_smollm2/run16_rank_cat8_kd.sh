#!/bin/bash
# run14's KD stage with STEPS (default 50) instead of 60 steps, so that everything (run8's 13:54 of teacher
# data + run14's 53:03 of blocks + this) fits the issue's 90 minutes.  It resumes from a copy of run14's
# finished blocks (out/smol/rank-bw-1024-cat8-b.state/blocks, copied from out/smol/rank-bw-1024-cat8.state:
# that directory also holds run14's final KD state), then runs eval.sh into eval18_rank_cat8_kd50.log.
#   mkdir -p out/smol/rank-bw-1024-cat8-b.state && cp -r out/smol/rank-bw-1024-cat8.state/blocks out/smol/rank-bw-1024-cat8-b.state/
#   bash bench/results/blockwise_smollm2/run16_rank_cat8_kd.sh
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf; R=bench/results/blockwise_smollm2
N=${STEPS:-50}
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/rank-bw-1024-cat8-kd$N --method onebit-rank --rank 2 \
  --samples 1024 --seqlen 256 --concat-sequences 8 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 1 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --state-dir out/smol/rank-bw-1024-cat8-b.state --resume \
  --steps $N --batch-size 1 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 25 --eval-windows 2 \
  --eval-seqlen 512 --save-every 25 --threads 2 --overwrite > $R/run16_rank_cat8_kd$N.log 2>&1 || exit 1
bash $R/eval.sh out/smol/rank-bw-1024-cat8-kd$N > $R/eval18_rank_cat8_kd$N.log 2>&1
