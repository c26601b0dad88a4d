"""Block-wise reconstruction settings on the first blocks of a model (lr, inputs, batch size).

    python bench/blockwise_sweep.py --blocks 3 --steps 100 --lr 1e-2 [--inputs teacher] [--method '{...}']

Converts only the first ``--blocks`` decoder blocks of MODEL (default SmolLM2-135M from ../shared)
with ``onebit.distill.blockwise.reconstruct`` on teacher-generated calibration text and prints each
block's relative output error before/after training, on the student's own inputs (so the error of
later blocks includes what the earlier ones left).  Results: bench/results/blockwise_smollm2/sweep.log.
"""
from __future__ import annotations

import argparse
import json
import logging

import torch

from onebit.distill.blockwise import BlockConfig, reconstruct
from onebit.distill.data import teacher_data
from onebit.models import load_model
from onebit.registry import get_handler_cls

SMOL = "../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOL)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lrv", type=float, default=None, help="lr of the vectors (default: --lr)")
    ap.add_argument("--inputs", default="student", choices=["student", "teacher"])
    ap.add_argument("--bs", type=int, default=8)
    ap.add_argument("--n", type=int, default=64, help="calibration sequences used")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--gen-n", type=int, default=128, help="teacher sequences generated (cached)")
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--method", default='{"method": "onebit"}', help="method config as JSON")
    ap.add_argument("--alpha", type=float, default=0.0)
    ap.add_argument("--loss-norm", default="global", choices=["global", "token"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(a.threads)
    m = load_model(a.model)
    data = teacher_data(m, a.gen_n, a.gen_len, cache_dir="out/distill-data", progress=True)[:a.n, :a.seqlen]
    m.model.layers = m.model.layers[:a.blocks]
    m.config.num_hidden_layers = a.blocks
    spec = json.loads(a.method)
    config = get_handler_cls(spec.pop("method")).config_cls(**spec)
    cfg = BlockConfig(steps=a.steps, batch_size=a.bs, lr=a.lr, lr_vectors=a.lrv, inputs=a.inputs, alpha=a.alpha,
                      loss_norm=a.loss_norm)
    _, hist = reconstruct(m, config, data, cfg, progress=False)
    for h in hist:
        print(h)


if __name__ == "__main__":
    main()
