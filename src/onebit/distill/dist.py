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

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


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
    if info.active and tdist.is_initialized():
        tdist.destroy_process_group()
