"""How well students fit their own calibration text, against the teacher: a check for overfitting.

    python bench/calib_fit.py TEACHER STUDENT... --data-cache out/smol/data [--n 8]

Scores the first ``--n`` sequences of the teacher-data cache in ``--data-cache`` (the sequences the
block-wise stage trained on; one cache file expected there, or name the file) with the teacher and
each student, with and without their start token, and with ``--heldout N`` as many fresh teacher
sequences of another seed (generated once, cached beside; never trained on).  A student close to the
teacher here but far from it on WikiText-2 fits its calibration text rather than language
(bench/results/blockwise_smollm2/).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def nll(model, ids: torch.Tensor) -> float:
    """Mean next-token NLL over the rows of ``ids`` (each row one window of the project's perplexity)."""
    from onebit.eval.perplexity import perplexity

    return perplexity(model, ids.reshape(-1), ids.shape[1], progress=False).nll


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="the teacher first, then students")
    p.add_argument("--data-cache", required=True,
                   help="directory holding one teacher-data cache file, or that file itself")
    p.add_argument("--n", type=int, default=8, help="sequences scored (default %(default)s)")
    p.add_argument("--heldout", type=int, default=0, metavar="N",
                   help="also score N fresh teacher sequences (seed 1000003, cached in --data-cache/heldout)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from safetensors.torch import load_file

    from onebit.distill.data import teacher_data
    from onebit.models import load_model

    cache = Path(a.data_cache)
    files = [cache] if cache.is_file() else sorted(cache.glob("teacher-*.safetensors"))
    if len(files) != 1:
        sys.exit(f"error: expected one teacher-data cache file in {a.data_cache}, found {len(files)} "
                 "(name the file)")
    if cache.is_file():
        cache = cache.parent
    ids = load_file(str(files[0]))["input_ids"][:a.n]
    print(f"{ids.shape[0]} x {ids.shape[1]} tokens of {files[0].name}")
    held = None
    if a.heldout:
        held = teacher_data(load_model(a.models[0]), a.heldout, ids.shape[1], seed=1_000_003,
                            cache_dir=cache / "heldout")
        print(f"held out: {held.shape[0]} x {held.shape[1]} fresh teacher tokens (seed 1000003)")
    base = hbase = None
    for name in a.models:
        m = load_model(name)
        with torch.inference_mode():
            with_start, no_start = nll(m, ids), nll(m, ids[:, 1:])
            h = nll(m, held) if held is not None else None
        del m
        ppl = torch.tensor([with_start, no_start]).exp().tolist()
        base = base or ppl
        print(f"{name}: calibration-text ppl {ppl[0]:.2f} with the start token ({ppl[0] / base[0]:.2f}x the "
              f"first model), {ppl[1]:.2f} without ({ppl[1] / base[1]:.2f}x)", flush=True)
        if h is not None:
            hp = float(torch.tensor(h).exp())
            hbase = hbase or hp
            print(f"{name}: held-out teacher-text ppl {hp:.2f} ({hp / hbase:.2f}x the first model)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
