"""The distillation loop: AdamW, warmup + cosine, accumulation, clipping, checkpoints, resume.

One optimiser step consumes one global batch (``batch_size`` sequences):
split across ``world`` processes and ``grad_accum`` micro-batches of equal
size, each loss a per-token mean divided by ``grad_accum``, gradients
averaged by DDP — so the update does not depend on how the batch is split.
Which sequences form step ``k`` is a function of ``(k, seed)`` alone
(:func:`data.batch_indices`), so the data position is the step number.

Checkpoint (``state.pt`` in the state directory, written to a temp file and
renamed, read back with ``torch.load(weights_only=True)``): trainable
parameters, AdamW state, scheduler state, RNG states, step, elapsed time,
the settings that must not change, and the history.  Training ``k`` steps,
stopping (or being killed after the checkpoint at ``k``) and resuming gives
the same parameters as an uninterrupted run (tested).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import CheckpointError, OneBitError
from ..eval.perplexity import perplexity
from ..fileio import atomic_write
from ..progress import Progress as tqdm
from . import dist
from .averaging import ParamAverage, start_step, trainable_params
from .data import batch_indices
from .losses import KD_KINDS, distill_loss
from .student import param_groups, reset_latents, trained_modules

log = logging.getLogger("onebit")

STATE_NAME = "state.pt"
#: the clock of step times and time limits (a module global, so that tests can drive it)
_now = time.perf_counter
#: the schedule length while :meth:`Trainer.fit_steps` times its first steps (the cosine stays at ~1)
_PROVISIONAL = 2 ** 31 - 1
#: settings a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = ("batch_size", "seed", "steps", "lr", "lr_vectors", "warmup", "latent_clip", "reset_every",
               "average_last", "method_hash")


def saved_steps(state_dir: str | os.PathLike) -> int | None:
    """The schedule length (``steps``) the checkpoint in ``state_dir`` was written with; None if there is
    none or it cannot be read (:meth:`Trainer.load_state` then says why)."""
    f = Path(state_dir) / STATE_NAME
    try:
        return int(json.loads(torch.load(f, map_location="cpu", weights_only=True)["fixed"])["steps"])
    except Exception:
        return None


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 8            # sequences per optimiser step (global, over all processes)
    grad_accum: int = 1            # micro-batches per step (per process)
    lr: float = 2e-3               # latent weights (matrices)
    lr_vectors: float | None = None  # g, h, biases (default: lr)
    weight_decay: float = 0.0
    latent_clip: float = 0.0       # clamp latent matrices to ±c·mean|W₀| after each step (0 disables)
    reset_every: int = 0           # reset the latents (student.reset_latents) every k steps (0 disables)
    average_last: float = 0.0      # average the trainable parameters over this last fraction of the steps (0: off)
    warmup: int = 10               # linear warmup steps, then cosine to min_lr_ratio · lr
    min_lr_ratio: float = 0.0
    clip: float = 1.0              # global grad-norm clip (0 disables)
    temperature: float = 1.0
    kd: str = "kl"                 # "kl" or "ce" (soft cross-entropy)
    alpha: float = 1.0             # weight of the hidden-state MSE (0 disables)
    lm_weight: float = 0.0         # weight of the LM loss on the data
    seed: int = 0
    eval_every: int = 0            # steps between evaluations (0: only at the end)
    eval_windows: int = 8
    save_every: int = 0            # steps between checkpoints (0: only at the end)
    log_every: int = 10
    bf16: bool | None = None       # autocast bf16 (default: on for CUDA)
    compile: bool = False          # torch.compile the teacher, the student and the loss (training steps only)
    method_hash: str = ""          # identifies the student's method/config (resume check)

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise OneBitError("--steps, --batch-size and --grad-accum must be at least 1")
        if self.kd not in KD_KINDS:
            raise OneBitError(f"--kd must be one of {', '.join(KD_KINDS)}")
        if self.temperature <= 0:
            raise OneBitError(f"--temperature must be > 0, got {self.temperature}")
        if self.alpha < 0 or self.lm_weight < 0:
            raise OneBitError("--alpha and --lm-weight must be >= 0")
        if self.reset_every < 0:
            raise OneBitError(f"--reset-every must be >= 0 (0 disables), got {self.reset_every}")
        if self.latent_clip < 0:
            raise OneBitError(f"--latent-clip must be >= 0 (0 disables), got {self.latent_clip}")
        if not 0 <= self.average_last <= 1:
            raise OneBitError(f"--average-last must be in [0, 1] (0 disables), got {self.average_last}")


def latent_bounds(opt: torch.optim.Optimizer, c: float) -> list[tuple[torch.Tensor, float]]:
    """``(param, c · mean|param|)`` for every latent matrix (the "matrices" group); ``[]`` if ``c == 0``.

    With the identity STE and Adam a latent whose gradient keeps agreeing
    with its sign can grow without bound; clamping the latents to
    ``±c·mean|W₀|`` after each step keeps every sign within
    ``2c·mean|W₀| / lr`` steps of flipping.  Tried on stories3M (800 steps,
    c = 1 and 3): no better than no clamp (``bench/results/sweep_stories3m``);
    what did help is the opposite remedy, a margin *away* from zero
    (:func:`onebit.distill.stages.polish`).  Off by default.
    """
    if not c:
        return []
    out = []
    for g in opt.param_groups:
        if g.get("name") != "matrices":
            continue
        for p in g["params"]:
            full = p.detach().full_tensor() if hasattr(p, "full_tensor") else p.detach()
            out.append((p, c * float(full.float().abs().mean())))
    return out


@torch.no_grad()
def clamp_latents(bounds: list[tuple[torch.Tensor, float]]) -> None:
    for p, b in bounds:
        p.clamp_(-b, b)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine down to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def compile_safe(model: nn.Module) -> bool:
    """False when a module of ``model`` declares ``compile_safe = False`` (its training under
    ``torch.compile`` is known to go wrong)."""
    return all(getattr(m, "compile_safe", True) for m in model.modules())


@dataclass
class Trainer:
    teacher: nn.Module
    student: nn.Module
    data: torch.Tensor                     # [n, seqlen] token ids
    cfg: TrainConfig
    trainable: list[str] = field(default_factory=list)
    state_dir: str | None = None
    eval_ids: torch.Tensor | None = None   # 1-D token ids of a held-aside text
    eval_seqlen: int = 256
    progress: bool = False
    info: dist.DistInfo = field(default_factory=dist.DistInfo)
    strategy: str = "ddp"
    on_eval: Callable[[dict], None] | None = None

    def __post_init__(self):
        self.cfg.validate()
        c, info = self.cfg, self.info
        per_rank, rem = divmod(c.batch_size, info.world * c.grad_accum)
        if rem or per_rank == 0:
            raise OneBitError(f"--batch-size {c.batch_size} must be a multiple of processes × --grad-accum "
                              f"= {info.world} × {c.grad_accum}")
        self.micro = per_rank
        self.teacher.to(info.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student.to(info.device)
        self.model = dist.wrap(self.student, info, self.strategy)
        lr_vec = c.lr_vectors if c.lr_vectors is not None else c.lr
        self.opt = torch.optim.AdamW(param_groups(self.model, c.lr, lr_vec, c.weight_decay),
                                     betas=(0.9, 0.95), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, c.steps, c.warmup, c.min_lr_ratio))
        self.bounds = latent_bounds(self.opt, c.latent_clip)
        self.reset_modules = trained_modules(self.trainable) if c.reset_every else []
        if self.reset_modules and dist.sharded(info, self.strategy):
            raise OneBitError("--reset-every is not supported with --strategy fsdp (use ddp)")
        self.step, self.elapsed, self.tokens = 0, 0.0, 0
        self.history: list[dict] = []
        self.step_seconds: list[float] = []  # this process's step times (not saved; fit_steps reads them)
        self.eval_seconds = 0.0              # the last evaluation's time
        self.average_from = start_step(c.steps, c.average_last)
        self.average = ParamAverage(trainable_params(dist.unwrap(self.model), self.trainable)) \
            if c.average_last else None
        self.replaced: ParamAverage | None = None  # after finish(): holds the last step's parameters
        self.bf16 = c.bf16 if c.bf16 is not None else info.device.type == "cuda"
        # torch.compile fuses the elementwise work (STE, g/h scaling, RoPE, the log-softmaxes over the
        # vocabulary) that dominates a small model's step: 1.6x faster per step for stories3M on the CPU
        # (bench/distill_speed.py).  Only the training forward is compiled; evaluation runs eagerly.
        self._teacher_fwd, self._student_fwd, self._loss_fn = self.teacher, self.model, distill_loss
        if c.compile and not compile_safe(self.model):
            log.warning("--compile ignored: this student has layers marked compile_safe = False (they train "
                        "wrongly under torch.compile); training eagerly")
        elif c.compile:
            self._teacher_fwd = torch.compile(self.teacher)
            self._student_fwd = torch.compile(self.model)
            self._loss_fn = torch.compile(distill_loss)

    # ------------------------------------------------------------------ state
    @property
    def state_file(self) -> Path | None:
        return Path(self.state_dir) / STATE_NAME if self.state_dir else None

    def _fixed(self) -> dict:
        d = {k: getattr(self.cfg, k) for k in RESUME_KEYS}
        d["data_shape"] = list(self.data.shape)
        d["data_sum"] = int(self.data.long().sum())
        return d

    def save_state(self) -> None:
        if self.state_file is None:
            return
        student = dist.full_state(self.model, self.trainable, self.info)  # collectives under FSDP
        optim = dist.optimizer_state(self.model, self.opt, self.info, self.strategy)
        if not self.info.main:
            return
        state = {
            "step": self.step, "elapsed": self.elapsed, "tokens": self.tokens,
            "student": student,
            "optimizer": optim, "scheduler": self.sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "fixed": json.dumps(self._fixed(), sort_keys=True),
            "config": json.dumps(dataclasses.asdict(self.cfg), sort_keys=True),
            "history": json.dumps(self.history),
            "bounds": json.dumps([b for _, b in self.bounds]),
            "average": self.average.state_dict() if self.average is not None else {},
        }
        atomic_write(self.state_file, lambda tmp: torch.save(state, tmp))

    def load_state(self, path: str | os.PathLike | None = None) -> None:
        """Continue from a checkpoint (``state.pt`` or its directory); one-line errors if unusable."""
        f = Path(path) if path is not None else self.state_file
        if f is not None and f.is_dir():
            f = f / STATE_NAME
        if f is None or not f.is_file():
            raise CheckpointError(f"cannot resume: no training checkpoint at '{f}'")
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
            fixed = json.loads(state["fixed"])
            params = state["student"]
        except Exception as e:
            raise CheckpointError(f"cannot resume: '{f}' is not a readable training checkpoint "
                                  f"({type(e).__name__})")
        mine = self._fixed()
        defaults = dataclasses.asdict(TrainConfig())
        for k in mine:
            if fixed.get(k, defaults.get(k)) != mine[k]:  # a key added since the checkpoint: its default
                raise CheckpointError(f"cannot resume from '{f}': it was written with {k} = {fixed.get(k)}, "
                                      f"this run has {mine[k]}")
        own = dict(dist.unwrap(self.model).named_parameters())
        if sorted(params) != sorted(self.trainable):
            raise CheckpointError(f"cannot resume from '{f}': its trainable parameters differ from this student's")
        for n, t in params.items():
            if tuple(t.shape) != tuple(own[n].shape):
                raise CheckpointError(f"cannot resume from '{f}': tensor '{n}' has shape {list(t.shape)}")
        try:
            dist.load_states(self.model, self.opt, params, state["optimizer"], self.info, self.strategy)
            self.sched.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"cannot resume from '{f}': optimiser state does not fit ({e})")
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.elapsed, self.tokens = int(state["step"]), float(state["elapsed"]), int(state["tokens"])
        self.history = json.loads(state["history"])
        if self.average is not None:
            self.average.load_state_dict(state.get("average", {}))
        bounds = json.loads(state.get("bounds", "[]"))
        if len(bounds) == len(self.bounds):  # the bounds of the run that wrote it (from its initial latents)
            self.bounds = [(p, b) for (p, _), b in zip(self.bounds, bounds)]
        log.info("resumed from %s at step %d", f, self.step)

    # ------------------------------------------------------------------ training
    def _micro_batches(self, step: int):
        idx = batch_indices(step, self.data.shape[0], self.cfg.batch_size, self.cfg.seed)
        mine = idx.view(self.info.world, -1)[self.info.rank]
        return [self.data[mine[i * self.micro:(i + 1) * self.micro]] for i in range(self.cfg.grad_accum)]

    def _loss(self, ids: torch.Tensor) -> dict:
        c = self.cfg
        hidden = c.alpha > 0
        with torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            with torch.no_grad():
                t = self._teacher_fwd(ids, output_hidden_states=hidden)
            s = self._student_fwd(ids, output_hidden_states=hidden)
        th = t.hidden_states[1:] if hidden else ()
        sh = s.hidden_states[1:] if hidden else ()
        return self._loss_fn(s.logits, t.logits, ids, sh, th, c.temperature, c.alpha, c.lm_weight, c.kd)

    def train_step(self) -> dict:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        parts = {}
        micro = self._micro_batches(self.step)
        for i, ids in enumerate(micro):
            ids = ids.to(self.info.device)
            sync = i == len(micro) - 1 or not hasattr(self.model, "no_sync")
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                out = self._loss(ids)
                (out["loss"] / len(micro)).backward()
            for k, v in out.items():
                parts[k] = parts.get(k, 0.0) + v.detach() / len(micro)
        if self.cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                           self.cfg.clip)
        self.opt.step()
        clamp_latents(self.bounds)
        self.sched.step()
        self.step += 1
        if self.average is not None and self.step > self.average_from:
            self.average.update()
        if self.reset_modules and self.step % self.cfg.reset_every == 0 and self.step < self.cfg.steps:
            reset_latents(dist.unwrap(self.model), self.reset_modules)
        self.tokens += self.cfg.batch_size * self.data.shape[1]
        return {k: float(dist.mean(self.info, v)) for k, v in parts.items()}

    def finish(self) -> None:
        """The last step's evaluation (called by :meth:`train` at ``cfg.steps``; call it yourself when a
        time budget ends training early).  With ``average_last``, the average then replaces the
        parameters, once (the state saved after it holds the averaged student and no further mean), and
        is scored too; ``self.replaced.swap()`` brings the last step's parameters back (and again the mean)."""
        if self.average is None or not self.average.count:
            self._record_eval()
            return
        self._record_eval(averaged=False)
        self.average.swap()
        log.info("parameters replaced by their mean over the last %d steps", self.average.count)
        self.replaced, self.average = self.average, None
        self._record_eval(averaged=True)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if self.eval_ids is None:
            return None
        m = dist.unwrap(self.model)
        m.eval()
        t0 = _now()
        r = perplexity(m, self.eval_ids, self.eval_seqlen, self.cfg.eval_windows, progress=False)
        self.eval_seconds = _now() - t0
        return r.ppl

    def _record_eval(self, **extra) -> None:
        if self.eval_ids is None:
            return
        if not (self.info.main or dist.sharded(self.info, self.strategy)):
            return
        ppl = self.evaluate()  # under FSDP every rank runs the forward passes (parameters are all-gathered)
        if not self.info.main:
            return
        rec = {"step": self.step, "tokens": self.tokens, "wall": round(self.elapsed, 2), "ppl": ppl, **extra}
        self.history.append(rec)
        if self.on_eval:
            self.on_eval(rec)

    def train(self, stop_at: int | None = None, time_limit: float | None = None,
              checkpoint: bool = True) -> list[dict]:
        """Train to ``cfg.steps`` (or stop after step ``stop_at`` / ``time_limit`` seconds, saving the
        state unless ``checkpoint`` is False)."""
        c = self.cfg
        end = min(c.steps, stop_at) if stop_at is not None else c.steps
        if self.step == 0 and c.eval_every and self.eval_ids is not None:
            self._record_eval()
        bar = tqdm(total=end if c.steps == _PROVISIONAL else c.steps, initial=self.step, desc="distill", unit="step",
                   disable=not (self.progress and self.info.main), dynamic_ncols=True)
        t_start = _now()
        seq_tokens = c.batch_size * self.data.shape[1]
        while self.step < end:
            t0 = _now()
            parts = self.train_step()
            dt = _now() - t0
            self.elapsed += dt
            self.step_seconds.append(dt)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", kd=f"{parts['kd']:.4f}",
                            tok_s=f"{seq_tokens / max(dt, 1e-9):.0f}")
            if self.step % max(1, c.log_every) == 0 or self.step == c.steps:
                log.debug("step %d loss %.4f kd %.4f hidden %.4f lm %.4f lr %.2e", self.step, parts["loss"],
                          parts["kd"], parts["hidden"], parts["lm"], self.sched.get_last_lr()[0])
                if self.info.main:
                    self.history.append({"step": self.step, "tokens": self.tokens,
                                         "wall": round(self.elapsed, 2), **parts})
            if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps:
                self._record_eval()
                dist.barrier(self.info)
            if checkpoint and c.save_every and self.step % c.save_every == 0:
                self.save_state()
                dist.barrier(self.info)
            if time_limit is not None:
                over = torch.tensor(float(_now() - t_start > time_limit), device=self.info.device)
                if dist.mean(self.info, over) > 0:  # every process stops at the same step
                    break
        bar.close()
        if self.step == c.steps:
            self.finish()
        if checkpoint:
            self.save_state()
        dist.barrier(self.info)
        return self.history

    def fit_steps(self, seconds: float, probe: int = 4, safety: float = 0.95) -> int:
        """Fit the schedule to a time budget: train the first ``probe`` steps (part of the run, not thrown
        away), time them, and set ``cfg.steps`` so that the rest of the training, its periodic
        evaluations and the final one end within ``seconds`` of this call (× ``safety``).

        The probe steps run with the schedule's warmup and then a flat lr (their total is not known
        yet); from the step after them on, the cosine follows the fitted total.  The first probe step
        (compilation, warm caches) is left out of the timing.  Only a fresh run (step 0) can be fitted.
        Returns the fitted ``cfg.steps`` (at least ``probe``)."""
        c = self.cfg
        if self.step:
            raise OneBitError(f"cannot fit the schedule of a run at step {self.step} (it was fitted when it began)")
        if probe < 2:
            raise OneBitError(f"fit_steps needs at least 2 probe steps, got {probe}")
        t0 = _now()
        c.steps = _PROVISIONAL  # provisional: warmup, then lr_factor stays at ~1 while timing
        self.train(stop_at=probe, checkpoint=False)
        timed = sorted(self.step_seconds[-(probe - 1):])
        per_step = timed[len(timed) // 2]
        if c.eval_every and self.eval_ids is not None:
            per_step += self.eval_seconds / c.eval_every
        left = safety * seconds - (_now() - t0) - self.eval_seconds  # the final evaluation
        n = torch.tensor(float(max(probe, probe + int(left / per_step))), device=self.info.device)
        c.steps = int(dist.mean(self.info, n))  # every process plans the same schedule
        c.validate()
        self.average_from = start_step(c.steps, c.average_last)
        log.info("schedule fitted to the budget: %.2f s/step (with evaluations), %.1f min left -> %d steps",
                 per_step, max(0.0, left) / 60, c.steps)
        return c.steps
