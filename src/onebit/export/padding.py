"""Zero channels added to a model's hidden size on export (``onebit export --pad``).

llama.cpp's Q1_0 holds rows of a multiple of 128 weights. A model whose hidden size is not one
(SmolLM2: 576) can still be written in Q1_0 by padding the hidden size with zero channels, exactly:

- the layers that read the hidden state (q/k/v, gate/up, the head, the token embedding's rows)
  get zero columns: their new inputs are always 0, so any code works there;
- the layers that write it (o_proj, down_proj) get rows with a zero scale: their new outputs are
  exactly 0, so the residual stream's extra channels stay 0;
- the RMS norms get zero weights on the extra channels and their weights rescaled by
  ``sqrt(d / d_padded)`` (the mean of squares now runs over more channels), with the norm's eps
  scaled by ``d / d_padded`` in the file's metadata (``_Exporter.metadata``).

Tensor names are llama.cpp's (``blk.N.attn_q.weight``, ``token_embd.weight``, ...).
"""
from __future__ import annotations

import numpy as np

from . import weights as W


class HiddenPad:
    """Pads tensors from hidden size ``d`` to ``padded`` (no-op when they are equal)."""

    def __init__(self, d: int, padded: int):
        self.d, self.padded = d, padded

    @property
    def extra(self) -> int:
        return self.padded - self.d

    @staticmethod
    def role(gname: str) -> str | None:
        """"cols" (reads the hidden state), "rows" (writes it), "norm", or None (untouched)."""
        kind = gname.split(".")[-2] if gname.startswith("blk.") else gname.split(".")[0]
        if kind in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up", "output", "token_embd"):
            return "cols"
        if kind in ("attn_output", "ffn_down"):
            return "rows"
        if kind in ("attn_norm", "ffn_norm", "output_norm"):
            return "norm"
        return None

    def dense(self, gname: str, a: np.ndarray) -> np.ndarray:
        """A dense tensor (weight, bias or norm) of ``gname`` padded."""
        extra, role = self.extra, self.role(gname)
        if not extra or role is None:
            return a
        if role == "norm":
            return np.concatenate([a * np.sqrt(self.d / self.padded), np.zeros(extra, a.dtype)])
        if gname.endswith(".bias"):
            return np.concatenate([a, np.zeros(extra, a.dtype)]) if role == "rows" else a
        if role == "cols":
            return np.concatenate([a, np.zeros((a.shape[0], extra), a.dtype)], axis=1)
        return np.concatenate([a, np.zeros((extra, a.shape[1]), a.dtype)], axis=0)

    def codes(self, gname: str, c: W.Codes) -> W.Codes:
        """A layer's integer codes and block scales padded."""
        extra, role = self.extra, self.role(gname)
        if not extra or role not in ("cols", "rows"):
            return c
        rows, cols = c.values.shape
        if role == "rows":           # outputs into the padded channels: zero scale, so exactly 0
            v = np.concatenate([c.values, np.ones((extra, cols), np.int8)])
            sc = np.concatenate([c.scales, np.zeros((extra, c.scales.shape[1]), np.float32)])
            return W.Codes(v, sc, c.block, c.kind)
        # inputs from the padded channels are exactly 0: any code works there
        v = np.concatenate([c.values, np.ones((rows, extra), np.int8)], axis=1)
        block = self.padded if c.block >= cols else c.block
        nb = -(-self.padded // block)
        sc = c.scales if c.scales.shape[1] >= nb else np.concatenate(
            [c.scales, np.zeros((rows, nb - c.scales.shape[1]), np.float32)], axis=1)
        return W.Codes(v, sc, block, c.kind)
