#!/bin/bash
# GPTQ W2 g64 (calibrated on the same teacher data), then end-to-end KD on that data, sized to the
# CPU budget of run2.sh (2140 CPU-s; /usr/bin/time -v below reports what this run used)
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/gptq-w2-kd --method gptq --bits 2 --group-size 64 \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --steps ${1:-120} --batch-size 4 --lr 1e-3 --warmup 5 --threads 2 --overwrite
