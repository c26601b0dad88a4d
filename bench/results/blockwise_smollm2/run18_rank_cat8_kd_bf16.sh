#!/bin/bash
# run14's block-wise stage (fp32; 13:54 teacher data + 53:03 blocks), then STEPS (default 80) end-to-end
# KD steps of one 2040-token row under bf16 autocast and torch.compile (--bf16 --compile: ~2.9x faster
# per step than run14's fp32 steps on the AMX/AVX512-BF16 Xeon), from a copy of run14's block state so
# that run14's own state stays as it was.
#   bash bench/results/blockwise_smollm2/run18_rank_cat8_kd_bf16.sh
#   (it then runs eval.sh on the student into eval20_rank_cat8_kd_bf16.log)
#   STEPS=110 OUT=kdbf16-110 EVAL=eval21_rank_cat8_kd_bf16_110 bash ...   # the same with 110 steps
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
TAG=rank-bw-1024-cat8; R=bench/results/blockwise_smollm2; O=${OUT:-kdbf16}; S=out/smol/$TAG-$O.state
BLOCKS="--method onebit-rank --rank 2 --samples 1024 --seqlen 256 --concat-sequences 8 --data-cache out/smol/data
  --blockwise-steps 120 --block-batch-size 1 --block-lr 1e-2 --block-lr-vectors 3e-3 --block-loss token"
rm -rf $S && mkdir -p $S && cp -r out/smol/$TAG.state/blocks $S/ || exit 1
/usr/bin/time -v .venv/bin/onebit distill $T out/smol/$TAG-$O $BLOCKS --state-dir $S --resume \
  --steps ${STEPS:-80} --batch-size 1 --lr 1e-3 --warmup 5 --eval-data wikitext2 --eval-every 40 --eval-windows 2 \
  --eval-seqlen 512 --save-every 40 --threads 2 --overwrite --bf16 --compile > $R/run18_$TAG-$O.log 2>&1 || exit 1
bash $R/eval.sh out/smol/$TAG-$O > $R/${EVAL:-eval20_rank_cat8_kd_bf16}.log 2>&1
