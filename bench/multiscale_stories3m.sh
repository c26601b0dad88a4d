#!/bin/bash
# Issue 18: OneBit vs rank-2 scales vs mixture of scales on stories3M (docs/methods.md,
# "Mixture of scales and rank-k scales").  Run from the repository root:
#   bash bench/multiscale_stories3m.sh            # PTQ only (about a minute)
#   bash bench/multiscale_stories3m.sh distill    # + a 300-step distillation of each (about 10 min each)
# Everything goes to out/issue18/; one thread and nice 19 (a shared machine).
set -e
OUT=out/issue18
MODEL=../shared/models/stories3M
METHODS="onebit onebit-rank onebit-mos"
mkdir -p $OUT
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== PTQ (no distillation), load: $(load)"
for m in $METHODS; do
  nice -n 19 onebit quantize $MODEL $OUT/s3m-$m --method $m --threads 1 | tail -2
  nice -n 19 onebit eval ppl $OUT/s3m-$m --data tinystories --max-windows 8 --threads 1 --json $OUT/ppl-$m.json | tail -1
done
for extra in "--rank 4" "--init nmf"; do       # onebit-rank variants
  d=$OUT/s3m-onebit-rank-$(echo $extra | tr -d ' -')
  nice -n 19 onebit quantize $MODEL $d --method onebit-rank $extra --threads 1 | tail -2
  nice -n 19 onebit eval ppl $d --data tinystories --max-windows 8 --threads 1 | tail -1
done
nice -n 19 onebit eval ppl $MODEL --data tinystories --max-windows 8 --threads 1 | tail -1
[ "$1" = distill ] || exit 0
for m in $METHODS; do
  echo "== distill $m start $(date -u +%T), load: $(load)"
  /usr/bin/time -f "$m distill %e s" nice -n 19 onebit distill $MODEL $OUT/kd-$m --method $m \
      --samples 256 --seqlen 256 --steps 300 --batch-size 4 --threads 1 --data-cache $OUT/data-cache 2>&1 | tail -4
  nice -n 19 onebit eval ppl $OUT/kd-$m --data tinystories --max-windows 8 --threads 1 --json $OUT/ppl-kd-$m.json | tail -1
  echo "== distill $m end $(date -u +%T), load: $(load)"
done
