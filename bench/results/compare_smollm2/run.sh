#!/bin/bash
# The SmolLM2-135M comparison of issue 17 point 1, run under `nice -n 19` with one thread while
# another benchmark used the CPUs (see README.md here).
cd "$(dirname "$0")/../../.." || exit 1
OMP_NUM_THREADS=1 exec nice -n 19 .venv/bin/onebit compare \
    ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
    --methods fp,onebit,onebit-foldable,q1_0,bitnet,ternary,rtn-w4,rtn-w3-g128,rtn-w2-g64,gptq-w4,gptq-w3-g128,gptq-w2-g64 \
    --data wikitext2,c4,tinystories --seqlen 2048 --max-windows 1 \
    --calib-samples 32 --calib-seqlen 256 --threads 1 "$@" \
    --out bench/results/compare_smollm2
