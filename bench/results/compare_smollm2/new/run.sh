#!/usr/bin/env bash
# This session's new methods on SmolLM2, same settings as ../run.sh (no training: post-training quantization).
# Run at commit 387bdb3, 2026-12-03 19:30-19:50 UTC, nice 5, one thread, load average 6-9 (other jobs at nice 19).
set -e
cd "$(dirname "$0")/../../../.."
OMP_NUM_THREADS=1 onebit compare ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
    --methods fp,smoothquant-w8a8,smoothquant-w8a8-static,rtn-w8a8-static,onebit-rank2,onebit-mos4 \
    --data wikitext2,c4,tinystories --seqlen 2048 --max-windows 1 \
    --calib-samples 32 --calib-seqlen 256 --threads 1 --out bench/results/compare_smollm2/new
