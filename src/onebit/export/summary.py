"""What ``onebit export`` wrote: every tensor's llama.cpp type, size and the weights it holds, and
the bits per weight of the linears and end to end (``onebit export`` prints it)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ExportSummary:
    path: str
    #: name, type, stored shape, bytes, weights of the original model it holds (fewer when padded)
    tensors: list[tuple[str, str, tuple[int, ...], int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t[3] for t in self.tensors)

    def weights(self, pred=lambda name: True) -> int:
        """Weights of the original model (bits per weight count padding as overhead)."""
        return sum(t[4] for t in self.tensors if pred(t[0]))

    def bits_per_weight(self, pred=lambda name: True) -> float:
        n = self.weights(pred)
        return sum(t[3] for t in self.tensors if pred(t[0])) * 8 / n if n else 0.0

    def format(self, per_tensor: bool = False) -> str:
        by_type: dict[str, list[int]] = {}
        for _, t, shape, nbytes, _ in self.tensors:
            e = by_type.setdefault(t, [0, 0, 0])
            e[0] += 1
            e[1] += int(np.prod(shape))
            e[2] += nbytes
        lines = [f"{self.path}: {len(self.tensors)} tensors, {self.total_bytes / 2**20:.2f} MiB of tensor data"]
        if per_tensor:
            lines += [f"  {n:32s} {t:6s} {'x'.join(map(str, s)):>12s} {b:>12,d} B" for n, t, s, b, _ in self.tensors]
        for t, (n, w, b) in sorted(by_type.items()):
            lines.append(f"  {t:6s} {n:4d} tensors {w:>13,d} weights {b * 8 / w:7.4f} bits/weight")
        lin = self.bits_per_weight(lambda n: n.startswith("blk.") and n.endswith(".weight")
                                   and "norm" not in n)
        lines.append(f"  linears of the blocks: {lin:.4f} bits/weight; end to end (embeddings, head and "
                     f"norms included): {self.bits_per_weight():.4f} bits/weight (per weight of the "
                     "original model)")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
