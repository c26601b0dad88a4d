#!/bin/bash
# Zero-shot columns for a few SmolLM2-135M rows (issue 17 point 1), run alongside ../run.sh under
# `nice -n 19`, one thread, on a CPU shared with another benchmark (see ../README.md).
cd "$(dirname "$0")/../../../.." || exit 1
OMP_NUM_THREADS=1 exec nice -n 19 .venv/bin/onebit compare \
    ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
    --methods fp,rtn-w4,q1_0,onebit-foldable \
    --data wikitext2 --seqlen 2048 --max-windows 1 --zeroshot-limit 25 --threads 1 "$@" \
    --out bench/results/compare_smollm2/zeroshot
