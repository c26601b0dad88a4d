"""Block-wise reconstruction: convert a model one decoder block at a time.

Distilling a whole model end to end on a CPU sees few tokens an hour.  The
cheaper route of BRECQ / OmniQuant-style methods trains **one decoder block at
a time** to reproduce the teacher block's outputs on cached inputs:

1. the calibration sequences (teacher-generated or a training file, never an
   evaluation file) are run up to the first block; its inputs are cached for
   the teacher (``X_t``) and the student (``X_s``, equal at first);
2. for block ``i``: the teacher block's outputs ``Y_t = block_i(X_t)`` are
   computed with its full-precision weights; then its linears are swapped for
   the method's trainable form (``handler.train_modules``: OneBit free or
   foldable, q1_0, BitNet, ternary, RTN-QAT, ...), which is trained for
   ``steps`` AdamW steps to minimise :func:`block_loss` between
   ``block_i(X_in)`` and ``Y_t``, where ``X_in`` is ``X_s`` (``inputs =
   "student"``: the block learns to correct the error of the blocks before
   it) or ``X_t`` (``"teacher"``);
3. the block is packed in place, ``X_s ← block_i(X_s)`` with its packed
   weights, ``X_t ← Y_t``, and its packed tensors are written to
   ``state_dir/block-NNNN.safetensors`` (then ``blocks.json``), so a run
   killed at any point resumes after the last finished block.

The model is converted **in place**: at any moment one block is in its
trainable form (latent weights + AdamW state), the blocks before it are
packed and the blocks after it untouched.  Peak memory is the model + one
trainable block + three activation caches (``n × seqlen × hidden`` each).
The streaming mode (:mod:`onebit.distill.streaming`) runs the same steps
(:func:`plan_blocks`, :func:`capture_inputs`, :func:`finish_block`: each
block restored or converted, recorded, saved, the caches advanced; the state
files of :mod:`onebit.distill.blockstate`) on a meta-device skeleton,
reading one block's tensors at a time from the teacher's safetensors files
and writing the packed checkpoint as it goes.
An end-to-end distillation can follow (``onebit distill --blockwise-steps K
--steps N``): the packed blocks go back to their trainable form
(``student.to_trainable``).

Resuming rebuilds the finished blocks from their files and, if blocks remain,
recomputes both caches by running the teacher blocks and the packed blocks
(a forward pass, no training), so the result equals an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, OneBitError
from ..config import parse_dtype
from ..methods.sequential import capture_block_inputs, find_blocks
from ..progress import Progress as tqdm
from ..registry import get_handler
from ..surgery import find_linears, set_submodule
from .blockstate import block_file, fingerprint, open_state, packed_state, write_block_state
from .data import batch_indices
from .student import param_groups
from .trainer import lr_factor

log = logging.getLogger("onebit")

INPUTS = ("student", "teacher")


@dataclass
class BlockConfig:
    steps: int = 100                 # AdamW steps per block
    batch_size: int = 8              # sequences per step
    lr: float = 1e-2                 # latent weights
    lr_vectors: float | None = None  # g, h, scales, biases (default: lr)
    warmup: int = 5
    min_lr_ratio: float = 0.1
    clip: float = 1.0
    inputs: str = "student"          # the student block reads X_s ("student") or X_t ("teacher")
    alpha: float = 0.0               # + alpha x the normalised hidden-state MSE of the block output
    loss_norm: str = "global"        # block_loss: relative to the energy of all tokens ("global") or each ("token")
    train_norms: bool = False
    bf16: bool = False               # steps and passes under bf16 autocast (caches and the loss stay fp32)
    compile: bool = False            # the training forward through torch.compile (one graph for all blocks)
    eval_samples: int = 16           # sequences on which each block's error is reported
    seed: int = 0

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise OneBitError("--blockwise-steps and --block-batch-size must be at least 1")
        if self.inputs not in INPUTS:
            raise OneBitError(f"--block-inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.lr <= 0 or (self.lr_vectors is not None and self.lr_vectors <= 0):
            raise OneBitError("--block-lr must be > 0")
        if self.loss_norm not in ("global", "token"):
            raise OneBitError(f"--block-loss must be global or token, got {self.loss_norm!r}")
        if self.alpha < 0:
            raise OneBitError(f"--block-alpha must be >= 0, got {self.alpha}")


def block_loss(ys: torch.Tensor, yt: torch.Tensor, alpha: float = 0.0, norm: str = "global") -> torch.Tensor:
    """Squared error of the block output relative to the teacher output's energy
    (+ ``alpha`` × the L2-normalised per-token MSE).

    ``norm="global"``: ``mean((y_s − y_t)²) / mean(y_t²)``; ``"token"``: the
    same ratio per token, then averaged, so that tokens carrying a "massive
    activation" (the first token of a sequence in many LLMs, after a few
    blocks) do not drown the error of every other token.  Both are scale-free:
    one learning rate fits every depth although the residual stream grows.
    """
    ys, yt = ys.float(), yt.float()
    if norm == "token":
        loss = ((ys - yt).pow(2).sum(-1) / yt.pow(2).sum(-1).clamp_min(1e-12)).mean()
    elif norm == "global":
        loss = (ys - yt).pow(2).mean() / yt.pow(2).mean().clamp_min(1e-12)
    else:
        raise ValueError(f"norm must be 'global' or 'token', got {norm!r}")
    if alpha:
        loss = loss + alpha * (F.normalize(ys, dim=-1) - F.normalize(yt, dim=-1)).pow(2).sum(-1).mean()
    return loss


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


# ---------------------------------------------------------------------------- running blocks
def _fit_kwargs(kw: dict, b: int) -> dict:
    """The captured block kwargs for a batch of ``b`` sequences (slices per-sequence tensors)."""
    def fit(v):
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] > 1 and v.shape[0] != b:
            return v[:b]
        if isinstance(v, tuple):
            return tuple(fit(x) for x in v)
        return v
    return {k: fit(v) for k, v in kw.items()}


def _out(o):
    return o[0] if isinstance(o, (tuple, list)) else o


def run_block(block: nn.Module, x: torch.Tensor, kw: dict, batch_size: int, bf16: bool = False) -> torch.Tensor:
    """``block`` over all rows of ``x`` (``[n, seqlen, hidden]``), ``batch_size`` at a time (no grad;
    ``bf16``: under bf16 autocast, the result stored in ``x``'s dtype)."""
    out = torch.empty_like(x)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            out[i:i + xb.shape[0]] = _out(block(xb, **_fit_kwargs(kw, xb.shape[0])))
    return out


def block_error(block: nn.Module, x: torch.Tensor, y: torch.Tensor, kw: dict, batch_size: int,
                norm: str = "global") -> float:
    """:func:`block_loss` (alpha 0) of ``block(x)`` against ``y`` over all rows."""
    with torch.no_grad():
        ys = run_block(block, x, kw, batch_size)
        return float(block_loss(ys, y, norm=norm))


# ---------------------------------------------------------------------------- the steps both modes share
@dataclass
class BlockPlan:
    """What converting a model block by block needs to know (in memory and streaming alike)."""
    handler: object
    names: list[str]          # the target linears
    prefix: str               # "model.layers."
    blocks: nn.ModuleList
    qc: dict                  # the checkpoint's quantization_config
    scale_dtype: torch.dtype | None

    def targets(self, model: nn.Module, i: int) -> list[tuple[str, nn.Module]]:
        return [(n, model.get_submodule(n)) for n in self.names if n.startswith(f"{self.prefix}{i}.")]


def plan_blocks(model: nn.Module, config) -> BlockPlan:
    """The method's handler, the target linears and the decoder blocks of ``model`` (whose linears
    may be on the meta device); one-line errors for a model block-wise reconstruction cannot convert."""
    handler = get_handler(config)
    targets = find_linears(model, config.skip)
    if not targets:
        raise OneBitError("model has no linear layers to quantize")
    names = [n for n, _ in targets]
    found = find_blocks(model, names)
    if found is None:
        raise OneBitError("block-wise reconstruction needs decoder blocks (an nn.ModuleList) holding the linears")
    bname, blocks = found
    prefix = f"{bname}." if bname else ""
    outside = [n for n in names if not (n.startswith(prefix) and n[len(prefix):].split(".")[0].isdigit())]
    if outside:
        raise OneBitError(f"block-wise reconstruction: linear '{outside[0]}' is outside the decoder blocks "
                          "(skip it with --skip, or use end-to-end distillation)")
    qc = config.to_dict()
    qc["modules"] = {n: [lin.out_features, lin.in_features] for n, lin in targets}
    scale_dtype = parse_dtype(qc["scale_dtype"]) if isinstance(qc.get("scale_dtype"), str) else None
    return BlockPlan(handler, names, prefix, blocks, qc, scale_dtype)


def capture_inputs(model: nn.Module, plan: BlockPlan, data: torch.Tensor, cfg: BlockConfig):
    """``(x_t, x_s, kw, batch)``: the first block's inputs for the teacher and the student (equal)."""
    b = min(cfg.batch_size, data.shape[0])
    caught = capture_block_inputs(model, plan.blocks[0], data, b)
    kw = caught[0][1]
    x_t = torch.cat([hs for hs, _ in caught]).detach()
    del caught
    log.info("block-wise: %d blocks, %d x %d calibration tokens, activation caches %.0f MiB",
             len(plan.blocks), data.shape[0], data.shape[1], x_t.numel() * x_t.element_size() * 3 / 2**20)
    return x_t, x_t.clone(), kw, b


def restore_block(model: nn.Module, plan: BlockPlan, i: int, sdir: Path, acts, bf16: bool = False) -> tuple:
    """Block ``i``, finished in an earlier run: its packed form from the state; ``acts`` (``(x_t, x_s,
    kw, b)`` or None) advanced through it as :func:`convert_block` does.  Returns the advanced ``(x_t,
    x_s)`` (or ``(None, None)``)."""
    from safetensors.torch import load_file

    block = plan.blocks[i]
    y_t = run_block(block, acts[0], acts[2], acts[3], bf16) if acts is not None else None
    mods = _make_trainable(model, plan.handler, plan.targets(model, i))
    _pack(model, mods, plan.scale_dtype)
    saved = load_file(str(block_file(sdir, i)))
    missing = block.load_state_dict({k[len(f"{plan.prefix}{i}."):]: v for k, v in saved.items()}, strict=False)
    if missing.unexpected_keys:
        raise CheckpointError(f"cannot resume: '{block_file(sdir, i)}' does not fit block {i}")
    if acts is None:
        return None, None
    return y_t, _advance(model, block, [n for n, _ in plan.targets(model, i)], acts[1], acts[2], acts[3], bf16)


@contextlib.contextmanager
def _dense_form(model: nn.Module, names: list[str]):
    """The packed linears ``names`` swapped for their trainable form (the same forward, the sign matrix
    dense), so that under bf16 autocast the block runs as bf16 GEMMs; the packed modules are put back."""
    packed = [(n, model.get_submodule(n)) for n in names]
    if not all(hasattr(m, "to_train") for _, m in packed):
        yield
        return
    for n, m in packed:
        set_submodule(model, n, m.to_train())
    try:
        yield
    finally:
        for n, m in packed:
            set_submodule(model, n, m)


def _advance(model: nn.Module, block: nn.Module, names: list[str], x: torch.Tensor, kw: dict, b: int,
             bf16: bool) -> torch.Tensor:
    """The student's inputs ``x`` through its packed ``block``; with ``bf16`` through the dense form
    under autocast (on a CPU with AMX/AVX512-BF16 several times faster than the packed kernels on rows
    of thousands of tokens: ``bench/distill_speed.py --blockwise``)."""
    with _dense_form(model, names) if bf16 else contextlib.nullcontext():
        return run_block(block, x, kw, b, bf16)


def convert_block(model: nn.Module, plan: BlockPlan, i: int, acts, cfg: BlockConfig, bar=None,
                  on_block: Callable[[int, nn.Module], None] | None = None) -> tuple:
    """Train block ``i`` (fp weights in place) to reproduce the teacher, pack it in place and advance
    both caches: ``(x_t, x_s, record)`` with ``acts = (x_t, x_s, kw, b)``."""
    x_t, x_s, kw, b = acts
    block = plan.blocks[i]
    t0 = time.perf_counter()
    y_t = run_block(block, x_t, kw, b, cfg.bf16)
    x_in = x_s if cfg.inputs == "student" else x_t
    mods = _make_trainable(model, plan.handler, plan.targets(model, i))
    ev = slice(0, max(1, min(cfg.eval_samples, x_s.shape[0])))
    err_init = block_error(block, x_s[ev], y_t[ev], kw, b, cfg.loss_norm)
    loss = _train_block(block, mods, x_in, y_t, kw, cfg, cfg.seed * 1_000_003 + i, bar)
    if on_block is not None:
        on_block(i, model)
    _pack(model, mods, plan.scale_dtype)
    names = list(mods)
    del mods, x_in
    x_s = _advance(model, block, names, x_s, kw, b, cfg.bf16)
    err_final = float(block_loss(x_s[ev], y_t[ev], norm=cfg.loss_norm))
    rec = {"block": i, "err_init": round(err_init, 6), "err_final": round(err_final, 6),
           "last_loss": round(loss, 6), "seconds": round(time.perf_counter() - t0, 2),
           "peak_rss_mib": round(peak_rss_mib(), 1)}
    log.info("block %d/%d: relative output error %.4f -> %.4f (%.1fs, peak RSS %.0f MiB)", i + 1,
             len(plan.blocks), err_init, err_final, rec["seconds"], rec["peak_rss_mib"])
    return y_t, x_s, rec


def finish_block(model: nn.Module, plan: BlockPlan, i: int, acts, cfg: BlockConfig, sdir: Path | None,
                 fp: str, done: int, history: list[dict], bar=None, desc: str = "",
                 on_block: Callable[[int, nn.Module], None] | None = None):
    """Block ``i`` of the loop both modes run: rebuilt from the state in ``sdir`` when an earlier run
    finished it (``i < done``, :func:`restore_block`), else converted (:func:`convert_block`, ``bar``
    described as ``desc``), its record appended to ``history`` and its state saved.  Returns ``acts``
    advanced through the block (None stays None: no block was left to convert)."""
    if i < done:
        x_t, x_s = restore_block(model, plan, i, sdir, acts, cfg.bf16)
    else:
        if bar is not None:
            bar.set_description(desc)
        x_t, x_s, rec = convert_block(model, plan, i, acts, cfg, bar, on_block)
        history.append(rec)
        save_block_state(model, plan, i, sdir, fp, history, cfg.train_norms)
    return (x_t, x_s, acts[2], acts[3]) if acts is not None else None


def save_block_state(model: nn.Module, plan: BlockPlan, i: int, sdir: Path | None, fp: str,
                     history: list[dict], train_norms: bool) -> None:
    """Block ``i``'s packed tensors (+ norms if trained) to ``sdir``, then ``blocks.json`` (done = i + 1)."""
    if sdir is not None:
        names = [n for n, _ in plan.targets(model, i)]
        write_block_state(sdir, fp, i, len(plan.blocks), history,
                          packed_state(model, plan.blocks[i], f"{plan.prefix}{i}.", names, train_norms))


def _make_trainable(model, handler, targets) -> dict[str, nn.Module]:
    mods = handler.train_modules(model, targets)
    for name, mod in mods.items():
        set_submodule(model, name, mod)
    return mods


def _pack(model, mods: dict[str, nn.Module], scale_dtype) -> None:
    for name, mod in mods.items():
        set_submodule(model, name, mod.to_packed(scale_dtype))


_COMPILED: list = []  # the one compiled forward, shared by every block (same structure, other weights)


def _forward(compiled: bool):
    """``f(block, x, kw)``: the block's training forward, eager or through torch.compile.  Dynamo takes
    the block's parameters as inputs, so blocks of the same structure reuse the first block's graph
    (SmolLM2: ~7 s to compile once, then 0.33 s per step against 0.46 s eager in bf16)."""
    if not compiled:
        return lambda block, x, kw: block(x, **kw)
    if not _COMPILED:
        _COMPILED.append(torch.compile(lambda block, x, kw: block(x, **kw)))
    return _COMPILED[0]


def _train_block(block: nn.Module, mods: dict, x_in: torch.Tensor, y_t: torch.Tensor, kw: dict,
                 cfg: BlockConfig, seed: int, bar=None) -> float:
    for p in block.parameters():
        p.requires_grad_(False)
    for m in mods.values():
        for p in m.parameters():
            p.requires_grad_(True)
    if cfg.train_norms:
        for mod in block.modules():
            if "norm" in type(mod).__name__.lower():
                for p in mod.parameters(recurse=False):
                    p.requires_grad_(True)
    lr_vec = cfg.lr_vectors if cfg.lr_vectors is not None else cfg.lr
    opt = torch.optim.AdamW(param_groups(block, cfg.lr, lr_vec, 0.0), betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup, cfg.min_lr_ratio))
    params = [p for g in opt.param_groups for p in g["params"]]
    b = min(cfg.batch_size, x_in.shape[0])
    kwb = _fit_kwargs(kw, b)
    loss = float("nan")
    fwd = _forward(cfg.compile)
    block.train()
    for step in range(cfg.steps):
        idx = batch_indices(step, x_in.shape[0], b, seed)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x_in.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            ys = _out(fwd(block, x_in[idx], kwb))
        out = block_loss(ys, y_t[idx], cfg.alpha, cfg.loss_norm)  # in fp32
        out.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        loss = float(out.detach())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
    block.eval()
    for p in block.parameters():
        p.requires_grad_(False)
    return loss


# ---------------------------------------------------------------------------- the in-memory pipeline
def reconstruct(model: nn.Module, config, data: torch.Tensor, cfg: BlockConfig,
                state_dir: str | os.PathLike | None = None, progress: bool = True,
                on_block: Callable[[int, nn.Module], None] | None = None,
                resume: bool = False) -> tuple[dict, list[dict]]:
    """Convert ``model`` (the fp teacher, modified in place) with ``config``'s method, block by block.

    ``data``: ``[n, seqlen]`` calibration token ids.  Returns
    ``(quantization_config, history)``; the model is packed (ready for
    ``formats.checkpoint.save_checkpoint``) with ``config.quantization_config``
    set.  ``history`` has one record per block: the relative output error
    after the plain conversion (``err_init``) and after training
    (``err_final``), both on the student's own inputs, seconds and peak RSS.
    ``on_block(i, model)`` is called while block ``i`` is in trainable form
    (after training, before packing).  With ``resume`` the blocks already
    finished in ``state_dir`` (same method, data and settings) are reused;
    without it an earlier state there is removed first.  The streaming mode
    (the teacher read block by block from its safetensors files) is
    :func:`onebit.distill.streaming.stream_reconstruct`.
    """
    config.validate()
    cfg.validate()
    plan = plan_blocks(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    sdir = Path(state_dir) if state_dir is not None else None
    fp = fingerprint(plan.names, plan.qc, cfg, data)
    done, history = open_state(sdir, fp, resume)
    n_blocks = len(plan.blocks)
    t_start = time.perf_counter()
    acts = capture_inputs(model, plan, data, cfg) if done < n_blocks else None
    if done:
        log.info("block-wise: resuming after block %d of %d (%s)", done, n_blocks, sdir)
    bar = tqdm(total=(n_blocks - done) * cfg.steps, desc=f"block-wise [{config.method}]", unit="step",
               disable=not progress or done >= n_blocks)
    for i in range(n_blocks):
        acts = finish_block(model, plan, i, acts, cfg, sdir, fp, done, history, bar,
                            f"block-wise [{config.method}] block {i + 1}/{n_blocks}", on_block)
    bar.close()
    if acts is not None:
        log.info("block-wise: %d blocks in %.0fs, peak RSS %.0f MiB", n_blocks - done,
                 time.perf_counter() - t_start, peak_rss_mib())
    model.config.quantization_config = plan.qc
    model.eval()
    return plan.qc, history
