#!/bin/bash
# The SmolLM2 half of issue 18's equal-budget table: the block-wise stage of run2.sh / run5_ternary.sh
# (same teacher data cache, steps, batch, learning rates, token loss) for more methods, one at a time.
#   bash bench/results/blockwise_smollm2/run7_equal.sh            # rank-2 scales, RTN-W2-g64 QAT, BitNet
# Then: bash bench/results/blockwise_smollm2/eval.sh out/smol/<name>-bw ...
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
# the teacher data once, untimed (run2 generated it; run5 and run6 read the cache)
.venv/bin/python -c "
from onebit.models import load_model; from onebit.distill.data import teacher_data
teacher_data(load_model('$T'), 128, 256, seed=0, cache_dir='out/smol/data', progress=True)" || exit 1
run() {  # NAME METHOD-FLAGS...
  local name=$1; shift
  /usr/bin/time -v .venv/bin/onebit distill $T out/smol/$name-bw "$@" \
    --samples 128 --seqlen 256 --data-cache out/smol/data \
    --blockwise-steps 120 --block-batch-size 8 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token \
    --steps 0 --threads 2 --overwrite > bench/results/blockwise_smollm2/run7_$name.log 2>&1
}
for m in ${METHODS:-rank rtn bitnet}; do
  case $m in
    rank) run rank --method onebit-rank --rank 2 ;;
    rtn) run rtn-w2-g64 --method rtn --bits 2 --group-size 64 ;;
    bitnet) run bitnet --method bitnet ;;
    q1_0) run q1_0 --method q1_0 ;;
    q1_0rot) run q1_0-rot --method q1_0 --rotate ;;   # the residual stream rotated (folded, exportable)
    free) run onebit-free --method onebit ;;
    mos) run mos --method onebit-mos ;;
  esac
done
