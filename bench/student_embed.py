"""Move a distilled student between machines without its frozen embedding.

The distilled student's token embedding (and a tied head) is the teacher's, unchanged: distillation
freezes it.  For SmolLM2-135M it is 113 MB of the checkpoint's 127 MB, more than a GPU machine lets
come back.  ``strip`` writes the checkpoint without it (plus a fingerprint of what was dropped);
``restore`` puts the teacher's embedding back, refusing one whose fingerprint differs, and writes
an ordinary packed checkpoint that ``onebit eval`` reads.

    python bench/student_embed.py strip out/gpu/student out/gpu/stripped        # on the GPU machine
    python bench/student_embed.py restore out/gpu/stripped TEACHER.gguf out/smol-gpu   # here
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

EMBED = "model.embed_tokens.weight"
WEIGHTS = "model.safetensors"
PRINT = "embedding.json"


def fingerprint(t: torch.Tensor) -> str:
    from onebit.distill.data import hash_tensor  # the data cache's exact-bytes hash (any dtype, bf16 too)

    h = hashlib.sha256()
    hash_tensor(h, "", t)
    return h.hexdigest()[:16]


def strip(ckpt: Path, out: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt / WEIGHTS), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    emb = tensors.pop(EMBED)
    dropped = {EMBED: [fingerprint(emb), str(emb.dtype), list(emb.shape)]}
    if "lm_head.weight" in tensors:
        head = tensors.pop("lm_head.weight")
        dropped["lm_head.weight"] = [fingerprint(head), str(head.dtype), list(head.shape)]
    out.mkdir(parents=True, exist_ok=True)
    for p in ckpt.iterdir():
        if p.is_file() and p.name != WEIGHTS:
            shutil.copy2(p, out / p.name)
    save_file(tensors, str(out / WEIGHTS), metadata=meta)
    (out / PRINT).write_text(json.dumps(dropped, indent=1))
    print(f"wrote {out}: {len(tensors)} tensors, {(out / WEIGHTS).stat().st_size / 2**20:.1f} MiB without "
          f"{', '.join(dropped)}")


def restore(stripped: Path, teacher: str, out: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from onebit.models import load_model

    dropped = json.loads((stripped / PRINT).read_text())
    sd = load_model(teacher).state_dict()
    with safe_open(str(stripped / WEIGHTS), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for name, (fp, dtype, shape) in dropped.items():
        src = sd.get(name, sd.get(EMBED) if name == "lm_head.weight" else None)
        if src is None:
            sys.exit(f"error: the teacher has no tensor '{name}'")
        src = src.to(getattr(torch, dtype.split(".")[-1]))
        if list(src.shape) != shape or fingerprint(src) != fp:
            sys.exit(f"error: the teacher's '{name}' is not the one the student was distilled with "
                     f"(fingerprint {fingerprint(src)} != {fp})")
        tensors[name] = src.contiguous()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in stripped.iterdir():
        if p.is_file() and p.name not in (WEIGHTS, PRINT):
            shutil.copy2(p, tmp / p.name)
    save_file(tensors, str(tmp / WEIGHTS), metadata=meta)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"wrote {out} ({len(tensors)} tensors; {', '.join(dropped)} from {teacher}, fingerprints match)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("strip", help="write CKPT without its embedding")
    s.add_argument("ckpt", type=Path)
    s.add_argument("out", type=Path)
    r = sub.add_parser("restore", help="put the teacher's embedding back")
    r.add_argument("stripped", type=Path)
    r.add_argument("teacher")
    r.add_argument("out", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "strip":
        strip(a.ckpt, a.out)
    else:
        restore(a.stripped, a.teacher, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
