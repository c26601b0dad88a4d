"""The resume state of block-wise reconstruction (in memory and streaming share it).

``state_dir/block-NNNN.safetensors`` holds block ``NNNN``'s packed tensors (+ its norms when they are
trained), written as soon as the block is finished; ``state_dir/blocks.json`` then records how many
blocks are done, the per-block history and a fingerprint of everything that determines the result
(the target linears, the method's settings, the block-wise settings, the data), so a resume with
other settings is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import atomic_write

STATE_JSON = "blocks.json"


def fingerprint(names: list[str], qc: dict, cfg, data: torch.Tensor) -> str:
    key = {"modules": names, "qc": {k: v for k, v in qc.items() if k != "modules"},
           "cfg": {k: v for k, v in dataclasses.asdict(cfg).items()
                   if k not in ("eval_samples", "compile") and not (k == "loss_norm" and v == "global")  # states before --block-loss
                  and not (k == "bf16" and not v)},  # and before --bf16 reached the block-wise stage
           "data": [list(data.shape), int(data.long().sum()), int((data.long() * 31 % 1009).sum())]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_state(state_dir: Path | None, fp: str) -> dict:
    if state_dir is None or not (state_dir / STATE_JSON).is_file():
        return {"fingerprint": fp, "done": 0, "history": []}
    try:
        st = json.loads((state_dir / STATE_JSON).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot resume: '{state_dir / STATE_JSON}' is unreadable ({type(e).__name__})")
    if st.get("fingerprint") != fp:
        raise CheckpointError(f"cannot resume from '{state_dir}': its block-wise run used another method, "
                              "data or setting (start again with another --state-dir, or without --resume)")
    return st


def block_file(state_dir: Path, i: int) -> Path:
    return state_dir / f"block-{i:04d}.safetensors"


def open_state(sdir: Path | None, fp: str, resume: bool) -> tuple[int, list[dict]]:
    """``(blocks done, history)`` from ``sdir``; without ``resume`` an earlier state there is removed."""
    if sdir is not None and not resume and (sdir / STATE_JSON).is_file():
        (sdir / STATE_JSON).unlink()
        for f in sdir.glob("block-*.safetensors"):
            f.unlink()
    st = _read_state(sdir, fp)
    if sdir is not None:
        sdir.mkdir(parents=True, exist_ok=True)
    return int(st["done"]), list(st["history"])


def write_block_state(sdir: Path, fp: str, i: int, n_blocks: int, history: list[dict], state: dict) -> None:
    """Block ``i``'s tensors ``state`` to ``sdir``, then ``blocks.json`` (done = i + 1): a kill at any
    point leaves the state of the blocks before it."""
    from safetensors.torch import save_file

    atomic_write(block_file(sdir, i), lambda tmp: save_file(state, tmp))
    st = {"fingerprint": fp, "done": i + 1, "blocks": n_blocks, "history": history}
    atomic_write(sdir / STATE_JSON, lambda tmp: Path(tmp).write_text(json.dumps(st, indent=1) + "\n"))


def packed_state(model: nn.Module, block: nn.Module, prefix: str, names: list[str], train_norms: bool) -> dict:
    """The tensors of block ``prefix`` that conversion changed: its packed modules (+ norms if trained)."""
    out = {}
    for n in names:
        for k, v in model.get_submodule(n).state_dict().items():
            out[f"{n}.{k}"] = v.detach().contiguous().clone()
    if train_norms:
        for mn, mod in block.named_modules():
            if "norm" in type(mod).__name__.lower():
                for k, v in mod.state_dict().items():
                    out[f"{prefix}{mn}.{k}"] = v.detach().contiguous().clone()
    return out
