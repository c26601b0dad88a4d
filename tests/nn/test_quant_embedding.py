"""QuantEmbedding / QuantLMHead: forward = the reference dequantization, tied head shares the table."""
import copy

import pytest
import torch
from torch import nn

from onebit.formats.packing import pack
from onebit.methods.blockquant import dequantize_rows, quantize_rows
from onebit.nn.quant_embedding import QuantEmbedding, QuantLMHead

KINDS = [("int8", 32), ("int4", 32), ("int2", 16), ("q1", 64)]


@pytest.mark.parametrize("kind,group", KINDS)
def test_embedding_rows_equal_reference_dequantization(kind, group):
    emb = nn.Embedding(100, 72)   # 72: a short last group for every kind
    q = QuantEmbedding.from_embedding(emb, kind, group)
    codes, d = quantize_rows(emb.weight.detach(), kind, group)
    ref = dequantize_rows(codes, d, kind, group)
    assert torch.equal(q.weight_packed, pack(codes, q.bits)) and torch.equal(q.scales, d)
    assert torch.equal(q.dense_weight(), ref) and torch.equal(q.weight, ref)
    ids = torch.randint(0, 100, (3, 11))
    assert torch.equal(q(ids), ref[ids])
    assert q.weight_packed.shape == (100, (72 * q.bits + 7) // 8) and q.scales.dtype == torch.float16


@pytest.mark.parametrize("kind,group", KINDS)
def test_head_logits_equal_dense_matmul(kind, group):
    lin = nn.Linear(72, 5000, bias=True)   # 5000 rows: several 2048-row chunks
    h = QuantLMHead.from_linear(lin, kind, group)
    x = torch.randn(2, 7, 72)
    want = x @ h.dense_weight().T + lin.bias
    torch.testing.assert_close(h(x), want, rtol=1e-5, atol=1e-5)
    assert not h.tied


def test_tied_head_reads_the_embedding_table():
    emb = nn.Embedding(300, 64)
    q = QuantEmbedding.from_embedding(emb, "int4")
    h = QuantLMHead.tied_to(q)
    assert h.tied and dict(h.state_dict()) == {}   # no tensors of its own: stored once
    x = torch.randn(4, 64)
    torch.testing.assert_close(h(x), x @ q.dense_weight().T, rtol=1e-5, atol=1e-5)
    q.scales.mul_(2)                             # the head sees every change of the table
    torch.testing.assert_close(h(x), x @ q.dense_weight().T, rtol=1e-5, atol=1e-5)
    wrapper = nn.ModuleDict({"emb": q, "head": h})
    c = copy.deepcopy(wrapper)
    assert c["head"]._table() is c["emb"]        # a deep copy stays tied to the copied table
    with pytest.raises(ValueError, match="differ"):
        h.tie(QuantEmbedding.from_embedding(nn.Embedding(300, 64), "int8"))


def test_dtype_follows_model_and_scales_stay_fp16():
    q = QuantEmbedding.from_embedding(nn.Embedding(10, 32), "int8")
    q.to(torch.bfloat16)
    assert q.dtype == torch.bfloat16 and q.scales.dtype == torch.float16
    assert q(torch.tensor([1, 2])).dtype == torch.bfloat16
