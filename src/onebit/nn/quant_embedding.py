"""Block-quantized token embeddings and LM heads (int8 / int4 / int2 groups, 1-bit blocks).

Stored tensors, under the module's prefix (so the ledger counts them):

* ``weight_packed`` uint8 ``[rows, ceil(cols * bits / 8)]``: the codes of
  ``onebit.methods.blockquant`` packed by ``formats.packing.pack(q, bits)`` (LSB first along a row);
* ``scales`` fp16 ``[rows, ceil(cols / group)]``.

:class:`QuantEmbedding` replaces an ``nn.Embedding``: it gathers the packed rows of the ids and
dequantizes only those.  :class:`QuantLMHead` replaces the output projection: logits are
``x · Ŵᵀ``, computed by ``torch.ops.onebit.quant_linear`` (int8/int4/int2: the same op as the
RTN linears) or, for ``q1``, by ``torch.ops.onebit.block_sign_linear`` (the q1_0 linears' op: the
codes ``[w >= 0]`` packed 1 bit each are ``pack_signs``' layout); no dense copy of the table is kept.  A tied head holds **no tensors**: it reads
the embedding module's ``weight_packed`` / ``scales`` (one table, stored once, used by both).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels  # noqa: F401  (registers torch.ops.onebit)
from ..formats.packing import pack, packed_cols, unpack
from ..methods.blockquant import KINDS, check_kind, dequantize_rows, num_groups, quantize_rows

class _Table(nn.Module):
    """The packed table and its dequantization (shared by the embedding and the untied head)."""

    def _init_table(self, rows: int, cols: int, kind: str, group: int, device=None) -> None:
        self.bits = check_kind(kind, group)
        self.kind, self.group_size = kind, group
        self.register_buffer("weight_packed", torch.zeros(rows, packed_cols(cols, self.bits), dtype=torch.uint8,
                                                          device=device))
        self.register_buffer("scales", torch.ones(rows, num_groups(cols, group), dtype=torch.float16,
                                                  device=device))

    @torch.no_grad()
    def _fill(self, w: torch.Tensor) -> None:
        codes, d = quantize_rows(w, self.kind, self.group_size)
        self.weight_packed.copy_(pack(codes, self.bits))
        self.scales.copy_(d)

    def _apply(self, fn, *args, **kwargs):
        # ``model.to(dtype)`` changes the compute dtype; the stored fp16 scales keep their dtype
        probe = fn(torch.zeros(1, dtype=torch.float64))  # unchanged unless fn converts dtypes
        out = super()._apply(fn, *args, **kwargs)
        if "scales" in self._buffers and self.scales.dtype != torch.float16:
            self._buffers["scales"] = self.scales.to(torch.float16)
        if hasattr(self, "dtype") and probe.dtype != torch.float64:
            self.dtype = probe.dtype
        return out

    def _rows(self, packed: torch.Tensor, scales: torch.Tensor, cols: int, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_rows(unpack(packed, self.bits, cols), scales, self.kind, self.group_size, dtype)


class QuantEmbedding(_Table):
    """``nn.Embedding`` with a block-quantized table; ``forward(ids)`` returns rows in ``dtype``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, kind: str = "int8", group_size: int | None = None,
                 padding_idx: int | None = None, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        group_size = KINDS[kind][1] if group_size is None and kind in KINDS else group_size
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.dtype = dtype
        self._init_table(num_embeddings, embedding_dim, kind, group_size, device)

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, emb: nn.Embedding, kind: str, group_size: int | None = None) -> "QuantEmbedding":
        w = emb.weight.detach()
        m = cls(emb.num_embeddings, emb.embedding_dim, kind, group_size, emb.padding_idx, dtype=w.dtype,
                device=w.device)
        m._fill(w)
        return m

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        rows = self._rows(self.weight_packed.index_select(0, flat), self.scales.index_select(0, flat),
                          self.embedding_dim, self.dtype)
        return rows.reshape(*ids.shape, self.embedding_dim)

    def dense_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole dequantized table (for tests and export; the forward never builds it)."""
        return self._rows(self.weight_packed, self.scales, self.embedding_dim, dtype or self.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table in float32, built on every access (read-only; for ``onebit export``
        and code that reads ``embed_tokens.weight``).  The forward never builds it."""
        return self.dense_weight(torch.float32)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, kind={self.kind}, group_size={self.group_size}, "
                f"dtype={str(self.dtype).replace('torch.', '')}")


def _head_logits(x: torch.Tensor, table: _Table, rows: int, cols: int) -> torch.Tensor:
    if table.bits > 1:
        return torch.ops.onebit.quant_linear(x, table.weight_packed, table.scales, None, table.bits,
                                             table.group_size, cols)
    # q1: codes [w >= 0] packed by pack(q, 1) are pack_signs' layout, value (2q - 1) · d = ±d
    return torch.ops.onebit.block_sign_linear(x, table.weight_packed, table.scales, table.group_size, cols)


class QuantLMHead(_Table):
    """Output projection ``x · Ŵᵀ (+ bias)`` from a block-quantized ``[vocab, hidden]`` table.

    Untied: owns its table.  Tied (:meth:`tied_to`): owns nothing and reads the embedding's table
    (a plain reference, not a submodule, so the tensors are stored and counted once).
    """

    def __init__(self, in_features: int, out_features: int, kind: str = "int8", group_size: int | None = None,
                 bias: bool = False, bias_dtype: torch.dtype = torch.float32, device=None, tied: bool = False):
        super().__init__()
        group_size = KINDS[kind][1] if group_size is None and kind in KINDS else group_size
        self.in_features, self.out_features = in_features, out_features
        if tied:
            self.bits = check_kind(kind, group_size)
            self.kind, self.group_size = kind, group_size
        else:
            self._init_table(out_features, in_features, kind, group_size, device)
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None
        object.__setattr__(self, "_source", None)

    @classmethod
    def tied_to(cls, emb: QuantEmbedding, bias: torch.Tensor | None = None) -> "QuantLMHead":
        m = cls(emb.embedding_dim, emb.num_embeddings, emb.kind, emb.group_size, bias is not None,
                bias.dtype if bias is not None else torch.float32, device=emb.weight_packed.device, tied=True)
        m.tie(emb)
        if bias is not None:
            m.bias.copy_(bias.detach())
        return m

    def tie(self, emb: QuantEmbedding) -> None:
        """Read ``emb``'s table from now on (rebuilding a tied head after loading)."""
        if (emb.num_embeddings, emb.embedding_dim, emb.kind, emb.group_size) != \
                (self.out_features, self.in_features, self.kind, self.group_size):
            raise ValueError("tied head and embedding differ in shape or quantization")
        object.__setattr__(self, "_source", emb)

    @property
    def tied(self) -> bool:
        return self._source is not None or "weight_packed" not in self._buffers

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, kind: str, group_size: int | None = None) -> "QuantLMHead":
        w = linear.weight.detach()
        b = linear.bias
        m = cls(linear.in_features, linear.out_features, kind, group_size, b is not None,
                b.dtype if b is not None else torch.float32, device=w.device)
        m._fill(w)
        if b is not None:
            m.bias.copy_(b.detach())
        return m

    def _table(self) -> _Table:
        if "weight_packed" in self._buffers:
            return self
        if self._source is None:
            raise RuntimeError("tied QuantLMHead has no embedding table (call .tie(embedding))")
        return self._source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _head_logits(x, self._table(), self.out_features, self.in_features)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def dense_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        t = self._table()
        return t._rows(t.weight_packed, t.scales, self.in_features, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``[vocab, hidden]`` table in float32, built on every access (read-only)."""
        return self.dense_weight(torch.float32)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}, "
                f"group_size={self.group_size}, tied={self.tied}, bias={self.bias is not None}")
