#!/bin/bash
# ppl at 2048 tokens, 8 windows, wikitext2 and c4: teacher and block-wise students
cd "$(dirname "$0")/../../.." || exit 1   # the repository root
T=../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
for m in "$@"; do
  for d in wikitext2 c4; do
    echo "== $m $d"; .venv/bin/onebit eval ppl $m --data $d --seqlen 2048 --max-windows 8 --threads 2 -q 2>&1 | grep -v Warn | tail -1
  done
done
