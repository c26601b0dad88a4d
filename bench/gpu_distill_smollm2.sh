#!/bin/bash
# SmolLM2-135M -> OneBit (--foldable, 1.046 bits/weight on the linears) by full-model distillation on
# one GPU: the paper's recipe (issue 17, "where a GPU is lent"). Teacher-generated data (never an
# evaluation file), KL + hidden-state MSE with latent resets, then a KL-only polish stage; the cosine
# schedule is fitted to a wall-time budget that counts the data generation, the step timing, training
# and the periodic evaluations. WikiText-2 (and at the end C4) perplexity at 2048 tokens, as the paper.
#
#   bash bench/gpu_distill_smollm2.sh [TEACHER] [OUTDIR] [MINUTES]
#
# Writes OUTDIR/distill_smollm2_gpu.{csv,png}, the packed student OUTDIR/student and the same without
# its frozen embedding, OUTDIR/stripped (bench/student_embed.py restore puts it back elsewhere).
# SAMPLES / GEN_BATCH / BATCH / DEVICE override the defaults (a CPU smoke test: DEVICE=cpu SAMPLES=64).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
OUTDIR=${2:-out/gpu-smollm2}
MIN=${3:-7}
python3 bench/distill_quality.py --device "${DEVICE:-cuda}" --bf16 --model "$T" --method onebit --foldable \
  --samples "${SAMPLES:-8192}" --seqlen 512 --gen-batch "${GEN_BATCH:-2048}" --batch-size "${BATCH:-32}" \
  --lr 2e-3 --alpha 1 --warmup 20 --min-lr-ratio 0.05 --reset-every 200 \
  --polish 0.3 --polish-lr 2.5e-4 --polish-alpha 0 --polish-min-lr-ratio 0.4 --polish-reset-every 500 \
  --eval-data wikitext2 --eval-seqlen 2048 --eval-windows 8 --eval-every 200 --final-data wikitext2 c4 \
  --target-ratio 3 --minutes "$MIN" --tag smollm2_gpu --out "$OUTDIR" --data-cache "$OUTDIR/data" --save "$OUTDIR/student"
python3 bench/student_embed.py strip "$OUTDIR/student" "$OUTDIR/stripped"
