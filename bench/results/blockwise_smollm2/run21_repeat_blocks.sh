#!/bin/bash
# Does the block-wise stage learn the teacher's copying from rows with repeated spans (--repeat-frac)?
# A short rank-2 block-wise stage (run19's settings, but 32 rows of 8 sequences and 40 steps per block,
# no end-to-end stage) with REPEAT (default 0.25) of each row overwritten (--block-repeat-frac) by copies of earlier spans;
# REPEAT=0 is the control. Then eval.sh into eval24_bw-OUT.log; bench/copy_nll.py after both.
# EXTRA: more onebit distill flags, e.g. the control with v_proj/o_proj kept in full precision:
#   REPEAT=0 OUT=rep0-fpvo EXTRA='--skip lm_head --skip *v_proj --skip *o_proj' bash ...
#   REPEAT=0.25 OUT=rep25 bash bench/results/blockwise_smollm2/run21_repeat_blocks.sh
#   REPEAT=0 OUT=rep0 bash bench/results/blockwise_smollm2/run21_repeat_blocks.sh
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
R=bench/results/blockwise_smollm2; O=out/smol/bw-${OUT:-rep25}
/usr/bin/time -v .venv/bin/onebit distill $T $O --method onebit-rank --rank 2 \
  --samples 1024 --seqlen 256 --concat-sequences 8 --data-cache out/smol/one-command.data --block-samples 32 \
  --block-repeat-frac ${REPEAT:-0.25} --blockwise-steps ${BSTEPS:-40} --block-batch-size 1 --block-lr 1e-2 \
  --block-lr-vectors 3e-3 --block-loss token --block-bf16 --steps 0 $EXTRA --state-dir $O.state \
  --threads 2 --overwrite > $R/run21_bw-${OUT:-rep25}.log 2>&1 || exit 1
bash $R/eval.sh $O > $R/eval24_bw-${OUT:-rep25}.log 2>&1
