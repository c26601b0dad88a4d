"""LoRA on a quantized base (QLoRA / PEQA style): train low-rank adapters on a frozen packed model.

The packed model stays frozen: every packed layer (any method's module) keeps its bits and scales;
:func:`onebit.nn.lora.grad_path` lets gradients pass through them to the adapters below (the
packed ops have no autograd formula).  The adapters (:class:`onebit.nn.lora.LoRA`, ``B = 0`` at
the start, so step 0 is the base model) learn the language-model loss of a training text the user
names; a tail of it (``holdout``) is held aside and never trained on: its perplexity before and
after is the result.  Why not peft: its LoRA layers wrap ``nn.Linear`` and friends; a custom
module needs a LoRA layer class written for it anyway, and peft saves adapters apart from the
model (``PeftModel`` to load), where a onebit checkpoint must load with ``onebit.load`` and
``from_pretrained`` alone.  See docs/distillation.md, "LoRA on a quantized base".
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import OneBitError
from ..eval.perplexity import perplexity
from ..nn.lora import LoRA, add_lora, adapter_spec, check_linear, grad_path, lora_modules, merge_lora
from ..progress import Progress
from ..surgery import _matches
from .trainer import lr_factor

log = logging.getLogger("onebit")

#: --targets default: every packed linear layer
ALL = "all"


@dataclass
class FinetuneConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = (ALL,)
    steps: int = 100
    lr: float = 1e-3
    seqlen: int = 256
    batch_size: int = 8
    holdout: float = 0.1
    warmup: int = 10
    clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    eval_windows: int | None = None   # held-aside windows evaluated (None: all)
    merge: bool = False

    def validate(self) -> None:
        if self.rank < 1:
            raise OneBitError(f"--rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise OneBitError(f"--alpha must be > 0, got {self.alpha}")
        if self.steps < 1:
            raise OneBitError(f"--steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise OneBitError(f"--lr must be > 0, got {self.lr}")
        if self.seqlen < 2 or self.batch_size < 1:
            raise OneBitError("--seqlen must be >= 2 and --batch-size >= 1")
        if not 0 < self.holdout < 1:
            raise OneBitError(f"--holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise OneBitError(f"--eval-windows must be >= 1, got {self.eval_windows}")
        if not self.targets:
            raise OneBitError("--targets names no module")


@dataclass
class FinetuneResult:
    ppl_before: float
    ppl_after: float
    steps: int
    seconds: float
    adapters: list[str]
    trainable: int                       # adapter parameters
    history: list[dict] = field(default_factory=list)


def split_holdout(ids: torch.Tensor, holdout: float, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training tokens, held-aside tail): the last ``holdout`` of the tokens, at least one window
    of ``seqlen``; the training part must hold a window too."""
    n = ids.numel()
    held = max(seqlen, int(round(n * holdout)))
    if n - held < seqlen + 1:
        raise OneBitError(f"the training text has {n:,d} tokens: too few for --holdout {holdout:g} and "
                          f"windows of --seqlen {seqlen} (need {seqlen + 1 + held:,d}); give more text or a "
                          "smaller --seqlen")
    return ids[:n - held], ids[n - held:]


def select_targets(modules, targets) -> list[str]:
    """The packed modules (names from ``quantization_config["modules"]``) the patterns name:
    ``all``, or names / name suffixes (``q_proj``) / fnmatch patterns."""
    names = list(modules)
    if ALL in targets:
        return names
    for t in targets:
        if not any(_matches(n, [t]) for n in names):
            raise OneBitError(f"--targets '{t}' matches no packed layer (e.g. {names[0].rpartition('.')[2]}, "
                              f"{names[-1].rpartition('.')[2]}; or 'all')")
    return [n for n in names if _matches(n, targets)]


def prepare(model: nn.Module, qc: dict, cfg: FinetuneConfig) -> tuple[dict[str, LoRA], list]:
    """Freeze ``model``, open a gradient path through every packed layer, attach the adapters.
    Returns ``(adapters by name, hook handles to remove after training)``; one-line errors first."""
    if lora_modules(model):
        raise OneBitError("the checkpoint already has LoRA adapters (onebit_adapters in config.json); "
                          "finetune its base checkpoint instead")
    names = select_targets(qc["modules"], cfg.targets)
    mods = dict(model.named_modules())
    if cfg.merge:
        bad = next((n for n in names if type(mods[n]) is not nn.Linear), None)
        if bad is not None:
            raise OneBitError(f"--merge: '{bad}' is a {type(mods[bad]).__name__}, whose weight is packed: adding "
                              "B·A to it is not exact; keep the adapters (--no-merge, the default)")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    for n in qc["modules"]:
        try:
            check_linear(mods[n], dtype)
        except OneBitError as e:
            raise OneBitError(f"'{n}': {e}")
    for p in model.parameters():
        p.requires_grad_(False)
    handles = [grad_path(mods[n]) for n in qc["modules"]]
    adapters = {n: add_lora(mods[n], cfg.rank, cfg.alpha) for n in names}
    return adapters, handles


def held_nll(model: nn.Module, ids: torch.Tensor, seqlen: int, windows: int | None) -> float:
    was = model.training
    model.eval()
    try:
        return perplexity(model, ids, seqlen, windows, progress=False).nll
    finally:
        model.train(was)


def batches(ids: torch.Tensor, cfg: FinetuneConfig):
    """Step ``k``'s batch: ``batch_size`` windows at seeded random offsets of the training tokens."""
    g = torch.Generator().manual_seed(cfg.seed)
    hi = ids.numel() - cfg.seqlen
    while True:
        starts = torch.randint(0, hi + 1, (cfg.batch_size,), generator=g)
        yield torch.stack([ids[s:s + cfg.seqlen] for s in starts.tolist()])


def train(model: nn.Module, adapters: dict[str, LoRA], train_ids: torch.Tensor, cfg: FinetuneConfig,
          progress: bool = False, time_limit: float | None = None) -> list[dict]:
    """AdamW on the adapters (warmup + cosine), LM loss on random training windows."""
    params = [p for a in adapters.values() for p in a.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup))
    device = params[0].device
    history, data = [], batches(train_ids, cfg)
    model.train()
    t0 = time.perf_counter()
    bar = Progress(total=cfg.steps, desc="finetune", unit="step", disable=not progress, dynamic_ncols=True)
    for step in range(1, cfg.steps + 1):
        batch = next(data).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise OneBitError(f"the loss is {loss.item()} at step {step}: lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        history.append({"step": step, "loss": round(loss.item(), 5), "wall": round(time.perf_counter() - t0, 2)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.debug("step %d loss %.4f lr %.2e", step, loss.item(), sched.get_last_lr()[0])
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            log.info("--time-limit: stopped after step %d of %d", step, cfg.steps)
            break
    bar.close()
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return history


def finish(model: nn.Module, qc: dict, adapters: dict[str, LoRA], handles, cfg: FinetuneConfig) -> None:
    """Remove the training hooks; merge the adapters (--merge) or record them in the config, so the
    checkpoint writer saves them and the loader rebuilds them (``onebit_adapters``)."""
    for h in handles:
        h.remove()
    mods = dict(model.named_modules())
    if cfg.merge:
        for n in adapters:
            merge_lora(mods[n])
        return
    model.config.onebit_adapters = adapter_spec(cfg.rank, cfg.alpha, {n: qc["modules"][n] for n in adapters})


def finetune(model: nn.Module, qc: dict, train_ids: torch.Tensor, held_ids: torch.Tensor,
             cfg: FinetuneConfig, progress: bool = False, time_limit: float | None = None) -> FinetuneResult:
    """Attach, train and finish (see :func:`finish`) the adapters; perplexity of the held-aside
    tokens before and after."""
    cfg.validate()
    adapters, handles = prepare(model, qc, cfg)
    try:
        before = held_nll(model, held_ids, cfg.seqlen, cfg.eval_windows)
        log.info("held-aside ppl before: %.3f", math.exp(before))
        t0 = time.perf_counter()
        hist = train(model, adapters, train_ids, cfg, progress, time_limit)
        seconds = time.perf_counter() - t0
        after = held_nll(model, held_ids, cfg.seqlen, cfg.eval_windows)
    except BaseException:
        for h in handles:
            h.remove()
        raise
    n_params = sum(p.numel() for a in adapters.values() for p in a.parameters())
    finish(model, qc, adapters, handles, cfg)
    return FinetuneResult(math.exp(before), math.exp(after), len(hist), seconds, list(adapters), n_params, hist)
