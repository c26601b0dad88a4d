"""Foldable OneBit: the ties that let every input scale ``g`` fold away, so a OneBit layer
becomes llama.cpp's Q1_0 (sign bits times one fp16 scale per block of a row) exactly.

A OneBit layer computes ``y = h ⊙ (sign(W) (g ⊙ x))``.  ``h`` becomes the Q1_0 row scale;
``g`` has to be moved into whatever produces ``x``:

* q/k/v read the attention norm's output and gate/up the MLP norm's output: with **one g
  shared** by q, k and v (and one by gate and up), ``g`` folds into the norm's weight;
* o_proj reads the attention output, which is linear per channel in v: its ``g`` folds into
  v_proj's ``h`` (with GQA one value per channel of each KV head);
* down_proj reads ``act(gate) ⊙ up``: its ``g`` folds into up_proj's ``h``.

The foldable form therefore trains one ``g`` per sibling group and keeps o_proj's and
down_proj's ``g`` at 1 (their scale lives in v_proj's / up_proj's ``h``, which is the same
function: the product was redundant).  SVID initialises the shared ``g`` from the stacked
``|W|`` of the siblings (:func:`onebit.methods.svid.svid_shared_input`).

Names follow the Llama family (Llama, Mistral, Qwen2, ...): ``*.self_attn.{q,k,v,o}_proj``
and ``*.mlp.{gate,up,down}_proj``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import OneBitError
from .svid import svid_shared_input

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
#: (reader, producer): the reader's g folds into the producer's h
FOLDS = (("o_proj", "v_proj"), ("down_proj", "up_proj"))


def _split(name: str) -> tuple[str, str]:
    parent, _, leaf = name.rpartition(".")
    return parent, leaf


def sibling_groups(names) -> list[list[str]]:
    """Groups of module names that read the same input (q/k/v; gate/up), in that order."""
    by_parent: dict[str, dict[str, str]] = {}
    for n in names:
        parent, leaf = _split(n)
        by_parent.setdefault(parent, {})[leaf] = n
    groups = []
    for leaves in by_parent.values():
        for sib in SIBLINGS:
            present = [leaves[s] for s in sib if s in leaves]
            if len(present) > 1:
                groups.append(present)
    return groups


def fold_pairs(names) -> list[tuple[str, str]]:
    """``(reader, producer)`` pairs such as ``(layers.0.self_attn.o_proj, layers.0.self_attn.v_proj)``."""
    names = set(names)
    out = []
    for n in sorted(names):
        parent, leaf = _split(n)
        for reader, producer in FOLDS:
            if leaf == reader and f"{parent}.{producer}" in names:
                out.append((n, f"{parent}.{producer}"))
    return out


def kv_groups(config, reader_in: int, producer_out: int) -> int:
    """Query heads per KV head, when o_proj's input (``reader_in``) is wider than v_proj's output."""
    if reader_in == producer_out:
        return 1
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    if not heads or reader_in % heads or producer_out * heads != reader_in * kv:
        raise OneBitError(f"cannot map o_proj's {reader_in} inputs onto v_proj's {producer_out} outputs "
                          f"(num_attention_heads={heads}, num_key_value_heads={kv})")
    return heads // kv


def group_mean(g: torch.Tensor, groups: int, head_dim: int) -> torch.Tensor:
    """o_proj's input scale reduced to one value per channel of each KV head (GQA)."""
    if groups == 1:
        return g
    return g.reshape(-1, groups, head_dim).mean(dim=1).reshape(-1)


def group_spread(g: torch.Tensor, groups: int, head_dim: int) -> torch.Tensor:
    """Largest difference, per channel of a KV head, between the query heads of its group."""
    if groups == 1:
        return torch.zeros((), dtype=g.dtype)
    gg = g.reshape(-1, groups, head_dim)
    return (gg.amax(dim=1) - gg.amin(dim=1)).abs().max()


@torch.no_grad()
def init_foldable(config, mods: dict[str, nn.Module], init: str = "svd") -> None:
    """Re-initialise SVID-initialised OneBit train modules in the foldable form (in place) and tie them."""
    for group in sibling_groups(mods):
        a_list, b = svid_shared_input([mods[n].weight for n in group], init)
        for n, a in zip(group, a_list):
            mods[n].h.copy_(a.to(mods[n].h.dtype))
            mods[n].g.copy_(b.to(mods[n].g.dtype))
    for reader, producer in fold_pairs(mods):
        r, p = mods[reader], mods[producer]
        groups = kv_groups(config, r.in_features, p.out_features)
        s = group_mean(r.g.detach().float(), groups, head_dim(config, p.out_features, groups))
        p.h.mul_(s.to(p.h.dtype))
        if p.bias is not None:
            p.bias.mul_(s.to(p.bias.dtype))
        r.g.fill_(1.0)
    tie(config, mods)


def head_dim(config, producer_out: int, groups: int) -> int:
    """Channels per KV head (v_proj's output split by KV heads); 1 when there is no GQA."""
    if groups == 1:
        return 1
    kv = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads")
    return producer_out // kv


def tie(config, mods: dict[str, nn.Module]) -> None:
    """Share one ``g`` Parameter per sibling group; make the readers' ``g`` a constant 1 (a buffer).

    Raises :class:`OneBitError` if the values are not already tied (a checkpoint trained in the
    free form cannot be tied without changing its function).
    """
    for group in sibling_groups(mods):
        first = mods[group[0]]
        for n in group[1:]:
            if not torch.equal(mods[n].g.detach(), first.g.detach()):
                raise OneBitError(f"'{n}' and '{group[0]}' have different input scales g: "
                                  "not a foldable OneBit model")
            mods[n].g = first.g
    for reader, _ in fold_pairs(mods):
        r = mods[reader]
        if not torch.all(r.g.detach() == 1):
            raise OneBitError(f"'{reader}' has an input scale g other than 1: not a foldable OneBit model")
        ones = torch.ones_like(r.g.detach())
        del r.g
        r.register_buffer("g", ones)
