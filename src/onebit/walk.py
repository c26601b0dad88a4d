"""Walking a model's modules (torch only, no onebit module): what the methods, the pipelines and
block-wise distillation all look for in a model.

:func:`find_blocks` locates the ``nn.ModuleList`` of decoder blocks holding the target linears
(the block-sequential pipeline, SmoothQuant's and AWQ's per-block plans, block-wise distillation).
"""
from __future__ import annotations

from torch import nn


def find_blocks(model: nn.Module, target_names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ``(name, ModuleList)`` whose numbered children hold the most of ``target_names``."""
    best, best_n = None, 0
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        prefix = f"{name}." if name else ""
        n = sum(1 for t in target_names if t.startswith(prefix) and t[len(prefix):].split(".")[0].isdigit())
        if n > best_n:
            best, best_n = (name, mod), n
    return best
