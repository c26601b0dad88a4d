"""Weight averaging over the end of a distillation stage (SWA over the plateau).

Late in a 1-bit student's training the loss is flat but the latent weights
near zero keep flipping their signs from step to step, and g/h follow them
(``stages.py``): the student the last step happens to leave is one sample of
a noisy walk along the plateau.  :class:`ParamAverage` keeps the running
mean of the trainable parameters over the last ``average_last`` fraction of
a stage's steps (``TrainConfig.average_last``); at the end the mean replaces
them.  For a latent matrix that is a vote over its recent signs weighted by
their margins; for g/h a plain mean.  The update is torch's own SWA rule
(``torch.optim.swa_utils.get_swa_multi_avg_fn``), applied to the trainable
tensors only (no copy of the frozen model, unlike ``AveragedModel``); under
FSDP each rank averages its own shards.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import get_swa_multi_avg_fn

from ..errors import CheckpointError


def start_step(steps: int, last: float) -> int:
    """The first step whose parameters enter the mean (``last`` = the fraction of ``steps`` averaged);
    ``steps`` (none) when ``last`` is 0."""
    if last <= 0:
        return steps
    return max(0, steps - max(1, round(last * steps)))


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 DTensor: this rank's shard


class ParamAverage:
    """The running mean of ``params`` (name → parameter) from the first :meth:`update` on."""

    def __init__(self, params: dict[str, torch.Tensor]):
        self.params = params
        self.mean: dict[str, torch.Tensor] = {}
        self.count = 0
        self._avg = get_swa_multi_avg_fn()

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.params)
        cur = [_local(self.params[n]).detach() for n in names]
        if not self.mean:
            self.mean = {n: c.float().clone() for n, c in zip(names, cur)}
        else:
            self._avg([self.mean[n] for n in names], [c.float() for c in cur], self.count)
        self.count += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the parameters and the mean (twice restores both): to score the student with and
        without the average in one run."""
        if not self.count:
            return
        for n, p in self.params.items():
            loc = _local(p)
            held = loc.detach().float().clone()
            loc.copy_(self.mean[n].to(loc.dtype))
            self.mean[n] = held

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": {n: t.cpu() for n, t in self.mean.items()}}

    def load_state_dict(self, state: dict) -> None:
        mean = state.get("mean", {})
        if mean and sorted(mean) != sorted(self.params):
            raise CheckpointError("cannot resume: the averaged parameters differ from this student's")
        for n, t in mean.items():
            if tuple(t.shape) != tuple(_local(self.params[n]).shape):
                raise CheckpointError(f"cannot resume: averaged tensor '{n}' has shape {list(t.shape)}")
        self.count = int(state.get("count", 0))
        self.mean = {n: t.to(_local(self.params[n]).device) for n, t in mean.items()}


def trainable_params(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    own = dict(model.named_parameters())
    return {n: own[n] for n in names}
