#!/bin/bash
# The SmolLM2 students in llama.cpp itself: export each (--approximate for the forms with no exact
# llama.cpp type: rank-2, MoS, free OneBit; Q1_0-native is exact), run 4 WikiText-2 windows of 512
# through onebit and through llama.cpp (llama-cpp-python), print KL, top-1 and both perplexities.
#   bash bench/results/blockwise_smollm2/agreement.sh > bench/results/blockwise_smollm2/agreement.log
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
args=()
for kv in "$@"; do args+=(--checkpoint "$kv"); done
[ ${#args[@]} -eq 0 ] && for kv in q1_0=out/smol/q1_0-bw q1_0-kd=out/smol/q1_0-bw-kd rank-1024-kd=out/smol/rank-bw-1024-kd \
    rank=out/smol/rank-bw mos=out/smol/mos-bw free=out/smol/onebit-free-bw; do
  [ -d "${kv#*=}" ] && args+=(--checkpoint "$kv")
done
methods=$(printf '%s\n' "${args[@]}" | grep = | cut -d= -f1 | paste -sd,)
.venv/bin/python bench/gguf_agreement.py --models smollm2 --approximate --methods "$methods" "${args[@]}" \
  --windows 4 --seqlen 512 --threads 2 2>&1 | grep -v Warn
