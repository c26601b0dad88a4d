#!/bin/bash
# as bench/results/blockwise_smollm2/run2.sh, with --rotate (randomized Hadamard residual rotation, folded)
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
export PYTHONPATH=/work/snap/src   # the code at commit f017904
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/onebit-bw2-rot --method onebit --foldable --rotate \
  --samples 128 --seqlen 256 --data-cache out/smol/data \
  --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
  --steps 0 --threads 2 --overwrite
for d in wikitext2 c4; do .venv/bin/onebit eval ppl out/smol/onebit-bw2-rot --data $d --seqlen 2048 --max-windows 8 --threads 2 -q 2>&1 | tail -1; done
