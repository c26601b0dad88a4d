#!/bin/bash
# The whole SmolLM2 conversion as ONE `onebit distill` command, everything inside it timed: teacher data
# (1024 sequences of 256, a fresh --data-cache so the generation is paid for), run14's rank-2 block-wise
# stage under --block-bf16 --compile (~29 min instead of 53 in run17), then the time that saves spent on
# end-to-end KD steps of one 2040-token row under --bf16 --compile (run18 had 110), as many as fit in
# --budget BUDGET (default 90) minutes: the schedule is fitted to the time left (STEPS=N instead: a
# fixed schedule, still stopped by the budget).
# The lever issue 17's last note left untested: is run17's 18% worse block-wise start recovered by
# twice the KD steps within the same 90 minutes?
#   bash bench/results/blockwise_smollm2/run19_one_command.sh
#   (it then runs eval.sh on the student into eval22_one_command.log)
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
R=bench/results/blockwise_smollm2; O=out/smol/${OUT:-one-command}
rm -rf $O.data $O.state
/usr/bin/time -v .venv/bin/onebit distill $T $O --method onebit-rank --rank 2 \
  --samples 1024 --seqlen 256 --concat-sequences 8 --data-cache $O.data \
  --blockwise-steps 120 --block-batch-size 1 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --block-bf16 --budget ${BUDGET:-90} ${STEPS:+--steps $STEPS} --batch-size 1 --lr 1e-3 --warmup 5 --bf16 --compile \
  --eval-data wikitext2 --eval-every 50 --eval-windows 2 --eval-seqlen 512 --save-every 50 \
  --threads 2 --overwrite > $R/run19_${OUT:-one-command}.log 2>&1 || exit 1
bash $R/eval.sh $O > $R/${EVAL:-eval22_one_command}.log 2>&1
