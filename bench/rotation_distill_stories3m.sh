#!/bin/bash
# Issue 18: does the Hadamard rotation pay once the student is distilled?  stories3M, the same 256
# teacher sequences and 300 steps for each row; OneBit without rotation, with --rotate (folded into
# the weights, exportable), with --rotate --rotate-online (down_proj's input rotated at run time), and
# Q1_0-native with and without --rotate.  Run from the repository root on an idle machine:
#   bash bench/rotation_distill_stories3m.sh            # ~15 min on the 2-core dev VM
# Outputs under out/rot18/; the log: bench/results/rotation_distill_stories3m.log (docs/methods.md).
set -e
OUT=out/rot18
MODEL=../shared/models/stories3M
THREADS=${THREADS:-2}
mkdir -p $OUT
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, threads $THREADS, start $(date -u +%FT%T), load $(load)"
onebit eval ppl $MODEL --data tinystories --max-windows 40 --threads $THREADS | tail -1
run() {  # name, then the method flags
  local name=$1; shift
  echo "== $name: $* (start $(date -u +%T), load $(load))"
  /usr/bin/time -f "$name: distill %e s wall" onebit distill $MODEL $OUT/$name "$@" --samples 256 --seqlen 256 \
      --steps 300 --batch-size 4 --threads $THREADS --data-cache $OUT/data-cache --overwrite 2>&1 | tail -3
  onebit eval ppl $OUT/$name --data tinystories --max-windows 40 --threads $THREADS | tail -1
}
run onebit --method onebit
run onebit-rotate --method onebit --rotate
run onebit-rotate-online --method onebit --rotate --rotate-online
run q1_0 --method q1_0
run q1_0-rotate --method q1_0 --rotate
echo "end $(date -u +%T), load $(load)"
