#!/usr/bin/env bash
# The rows the main run did not reach (GPTQ) and the issue-21 baselines (AWQ, NF4, LLM.int8()), same settings.
# Run at commit d2c8065, 2026-12-03 18:15-18:40 UTC, load average 7-9 (other jobs at nice 19, this at nice 5).
set -e
cd "$(dirname "$0")/../../../.."
OMP_NUM_THREADS=1 onebit compare ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
    --methods fp,gptq-w4,gptq-w3-g128,gptq-w2-g64,awq-w4-g128,nf4,llm-int8 \
    --data wikitext2,c4,tinystories --seqlen 2048 --max-windows 1 \
    --calib-samples 32 --calib-seqlen 256 --threads 1 --out bench/results/compare_smollm2/more
