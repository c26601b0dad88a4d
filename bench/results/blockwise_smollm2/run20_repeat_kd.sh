#!/bin/bash
# Does the student learn the teacher's copying from rows with repeated spans (--repeat-frac)?
# A short end-to-end KD continuation of run19's student (out/smol/one-command), REPEAT (default 0.25)
# of each 2040-token row overwritten by copies of earlier spans of the row; REPEAT=0 is the control
# (the same data, steps and settings without copies). Then eval.sh, and bench/copy_nll.py (perplexity
# on a repeated teacher sequence) on the result.
#   REPEAT=0.25 OUT=rep25 bash bench/results/blockwise_smollm2/run20_repeat_kd.sh
#   REPEAT=0 OUT=rep0 bash bench/results/blockwise_smollm2/run20_repeat_kd.sh
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
R=bench/results/blockwise_smollm2; O=out/smol/kdc-${OUT:-rep25}
/usr/bin/time -v .venv/bin/onebit distill $T $O --student out/smol/one-command  \
  --samples 1024 --seqlen 256 --concat-sequences 8 --no-start-frac 0.5 --data-cache out/smol/one-command.data \
  --repeat-frac ${REPEAT:-0.25} --steps ${STEPS:-20} --batch-size 1 --lr ${LR:-3e-4} --warmup 2 --bf16 --compile \
  --eval-data wikitext2 --eval-every 10 --eval-windows 2 --eval-seqlen 512 --save-every 50 \
  --threads 2 --overwrite > $R/run20_kdc-${OUT:-rep25}.log 2>&1 || exit 1
bash $R/eval.sh $O > $R/eval23_kdc-${OUT:-rep25}.log 2>&1
