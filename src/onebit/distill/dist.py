"""Scale-out on torch.distributed: the same command under ``torchrun`` or ``accelerate launch``.

Both launchers set ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``/``MASTER_ADDR``; when
``WORLD_SIZE > 1`` we join the process group (NCCL on GPUs, gloo on CPU) and
wrap the student in DDP (``strategy="ddp"``: every process holds the student
and the teacher, gradients all-reduced) or FSDP (``strategy="fsdp"``: the
student's decoder layers are sharded with ``fully_shard``, for students
that do not fit one device; the teacher is replicated in inference mode and
can be loaded in bf16).  Each process takes its slice of every global batch,
so the same ``--batch-size`` gives the same optimisation at any world size.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as tdist
from torch import nn

from ..errors import OneBitError

log = logging.getLogger("onebit")


@dataclass
class DistInfo:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device: str | None = None) -> DistInfo:
    """Join the process group if launched by torchrun/accelerate; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(f"cuda:{local}" if cuda else "cpu") if device in (None, "auto", "cpu", "cuda") \
        else torch.device(device)
    if cuda and dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(world, rank, local, dev)


def barrier(info: DistInfo) -> None:
    if info.active:
        tdist.barrier()


def mean(info: DistInfo, x: torch.Tensor) -> torch.Tensor:
    if info.active:
        x = x.detach().clone()
        tdist.all_reduce(x)
        x /= info.world
    return x


def wrap(student: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """The student wrapped for data-parallel training (unchanged in a single process)."""
    if not info.active:
        return student
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(student, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = [m for m in student.modules() if type(m).__name__.endswith("DecoderLayer")]
        for layer in layers:
            fully_shard(layer)
        fully_shard(student)
        return student
    raise ValueError(f"unknown strategy {strategy!r}")


#: ``--grad-compression`` choices: DDP communication hooks (torch.distributed.algorithms.ddp_comm_hooks)
COMPRESSIONS = ("none", "fp16", "bf16", "powersgd")


@dataclass
class CommStats:
    """Bytes of gradients all-reduced per optimiser step (per process), counted in a hook wrapping
    the compression hook: the bucket's numel x the element size it is sent in (PowerSGD: its own
    count of what it sends, the P and Q factors plus the tensors it leaves uncompressed)."""

    kind: str
    per_step: list[int] = field(default_factory=list)
    _current: int = 0

    def add(self, nbytes: int, last: bool) -> None:
        self._current += int(nbytes)
        if last:
            self.per_step.append(self._current)
            self._current = 0

    def line(self) -> str:
        if not self.per_step:
            return f"gradients all-reduced ({self.kind}): no synchronised step"
        return (f"gradients all-reduced per step ({self.kind}): {self.per_step[-1]:,d} bytes in the last step, "
                f"{self.per_step[0]:,d} in the first")


def check_compression(kind: str, info: DistInfo, strategy: str, warn: bool = True) -> bool:
    """Whether ``--grad-compression kind`` applies: an error under FSDP (it reduce-scatters its
    sharded gradients itself; DDP's communication hooks are not part of it), a warning and False
    in a single process (no gradients are exchanged: the same command does compress under
    ``torchrun --nproc-per-node N``)."""
    if kind not in COMPRESSIONS:
        raise OneBitError(f"unknown --grad-compression '{kind}'; choose one of {', '.join(COMPRESSIONS)}")
    if strategy == "fsdp" and kind != "none":
        raise OneBitError(f"--grad-compression {kind} works through DDP's communication hooks; FSDP has none "
                          "(use --strategy ddp, or --grad-compression none)")
    if kind != "none" and not info.active and warn:
        log.warning("--grad-compression %s does nothing in a single process (no gradients are exchanged); "
                    "it applies under torchrun --nproc-per-node N", kind)
    return info.active and strategy == "ddp"


def compress_gradients(model: nn.Module, info: DistInfo, strategy: str, kind: str = "none", rank: int = 1,
                       start_iter: int = 2) -> CommStats | None:
    """Register ``kind``'s DDP communication hook on the DDP-wrapped ``model`` (before its first
    backward), wrapped in a counter of the bytes it sends; None where nothing is exchanged.

    ``none`` registers nothing (DDP's built-in all-reduce of every trainable gradient, counted from
    the parameters); ``fp16``/``bf16``: ``fp16_compress_hook``/``bf16_compress_hook`` (the bucket
    cast to 16 bits, all-reduced, cast back); ``powersgd``: ``powerSGD_hook`` at matrix rank
    ``rank``, with error feedback and warm start, plain all-reduce for the first ``start_iter``
    steps (PowerSGD's own rule: it needs two steps before it compresses)."""
    if not check_compression(kind, info, strategy, warn=False):  # the CLI checked (and warned) up front
        return None
    if rank < 1:
        raise OneBitError(f"--powersgd-rank must be >= 1, got {rank}")
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    stats = CommStats(kind)
    if kind == "none":  # every synchronised step all-reduces every trainable gradient as it is
        return CommStats(kind, [sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)])
    if kind in ("fp16", "bf16"):
        hook = default_hooks.fp16_compress_hook if kind == "fp16" else default_hooks.bf16_compress_hook

        def counted(state, bucket):
            stats.add(bucket.buffer().numel() * 2, bucket.is_last())
            return hook(state, bucket)

        model.register_comm_hook(None, counted)
        return stats
    state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=rank, start_powerSGD_iter=start_iter,
                               use_error_feedback=True, warm_start=True)

    def counted_psgd(state, bucket):
        compressing, before = state.iter >= state.start_powerSGD_iter, state.total_numel_after_compression
        fut = psgd.powerSGD_hook(state, bucket)
        buf = bucket.buffer()
        numel = state.total_numel_after_compression - before if compressing else buf.numel()
        stats.add(numel * buf.element_size(), bucket.is_last())
        return fut

    model.register_comm_hook(state, counted_psgd)
    return stats


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def full_state(model: nn.Module, names: list[str], info: DistInfo) -> dict[str, torch.Tensor]:
    """The trainable parameters as full (unsharded) CPU tensors, on every rank."""
    params = dict(unwrap(model).named_parameters())
    out = {}
    for n in names:
        p = params[n]
        if hasattr(p, "full_tensor"):  # FSDP2 DTensor
            p = p.full_tensor()
        out[n] = p.detach().cpu().clone()
    return out


def sharded(info: DistInfo, strategy: str) -> bool:
    return strategy == "fsdp" and info.active


def optimizer_state(model: nn.Module, opt, info: DistInfo, strategy: str) -> dict:
    """The optimiser state to save: as is, or gathered to full CPU tensors under FSDP (a collective)."""
    if not sharded(info, strategy):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_states(model: nn.Module, opt, params: dict[str, torch.Tensor], optim: dict, info: DistInfo,
                strategy: str) -> None:
    """Put full (unsharded) trainable parameters and optimiser state back; under FSDP every rank shards them."""
    if not sharded(info, strategy):
        own = dict(unwrap(model).named_parameters())
        with torch.no_grad():
            for n, t in params.items():
                own[n].copy_(t.to(own[n].device, own[n].dtype))
        opt.load_state_dict(optim)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, params, options=opts)
    set_optimizer_state_dict(model, opt, optim, options=opts)


def materialize(model: nn.Module) -> nn.Module:
    """The bare student with every parameter a plain full tensor, ready to pack and save.

    Under FSDP each parameter is a sharded DTensor: it is gathered (a
    collective - every rank must call this, in the same order) and put back
    as an ordinary ``nn.Parameter``.  Under DDP or in one process the
    parameters already are the trained ones and nothing is copied.
    """
    m = unwrap(model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        FSDPModule = ()
    for mod in m.modules():
        if isinstance(mod, FSDPModule):
            mod.reshard()  # a forward may have left it unsharded (plain tensors on freed storage)
    for mod in m.modules():
        gathered = False
        for name, p in list(mod._parameters.items()):
            if p is not None and hasattr(p, "full_tensor"):
                gathered = True
                mod._parameters[name] = nn.Parameter(p.full_tensor().detach().cpu(), requires_grad=False)
        if gathered or isinstance(mod, FSDPModule):
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = b.cpu()
            if isinstance(mod, FSDPModule):  # fully_shard made the class FSDP<cls>(FSDPModule, cls): undo it
                mod.__class__ = next(b for b in type(mod).__bases__ if not issubclass(b, FSDPModule))
    return m


def finish(info: DistInfo) -> None:
    """Leave the process group together: every rank waits for the main one (still saving), then the
    sharded modules that hold the group are collected before it is destroyed, so no gloo worker
    thread outlives the group into interpreter shutdown (a rank could abort there)."""
    if info.active and tdist.is_initialized():
        import gc

        tdist.barrier()
        gc.collect()
        tdist.destroy_process_group()
