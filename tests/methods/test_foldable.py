"""Foldable OneBit: shared input scales, folded o/down scales, same function as its packed form."""
from __future__ import annotations

import pytest
import torch

from onebit.api import quantize
from onebit.errors import OneBitError
from onebit.methods.foldable import fold_pairs, group_mean, kv_groups, sibling_groups
from onebit.methods.onebit import OneBitConfig
from onebit.methods.svid import svid, svid_shared_input


def test_groups_and_pairs_from_names():
    names = [f"model.layers.0.self_attn.{x}_proj" for x in "qkvo"] + \
            [f"model.layers.0.mlp.{x}_proj" for x in ("gate", "up", "down")]
    assert sibling_groups(names) == [names[:3], names[4:6]]
    assert fold_pairs(names) == [("model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"),
                                 ("model.layers.0.self_attn.o_proj", "model.layers.0.self_attn.v_proj")]


def test_shared_svid_of_one_matrix_is_plain_svid():
    w = torch.randn(16, 24)
    (a,), b = svid_shared_input([w])
    a2, b2 = svid(w)
    torch.testing.assert_close(torch.outer(a, b), torch.outer(a2, b2))


def test_shared_svid_fits_the_stack_better_than_any_one_member():
    torch.manual_seed(0)
    ws = [torch.randn(8, 12) * torch.rand(12) for _ in range(3)]
    alist, b = svid_shared_input(ws)
    assert [a.shape[0] for a in alist] == [8, 8, 8] and b.shape == (12,)
    assert (b >= 0).all() and all((a >= 0).all() for a in alist)


def test_group_mean_averages_query_heads_of_a_kv_group():
    g = torch.tensor([1., 2., 3., 4., 5., 6., 7., 8.])     # 4 query heads of 2 dims, 2 KV heads
    torch.testing.assert_close(group_mean(g, 2, 2), torch.tensor([2., 3., 6., 7.]))

    class C:
        num_attention_heads, num_key_value_heads = 4, 2
    assert kv_groups(C, 8, 4) == 2 and kv_groups(C, 8, 8) == 1


def test_foldable_quantize_ties_and_keeps_function(fp_260k):
    import copy

    m = copy.deepcopy(fp_260k)
    quantize(m, OneBitConfig(foldable=True), progress=False)
    a = m.model.layers[0].self_attn
    torch.testing.assert_close(a.q_proj.g, a.k_proj.g, rtol=0, atol=0)
    torch.testing.assert_close(a.q_proj.g, a.v_proj.g, rtol=0, atol=0)
    assert torch.all(a.o_proj.g == 1) and torch.all(m.model.layers[0].mlp.down_proj.g == 1)
    mlp = m.model.layers[0].mlp
    torch.testing.assert_close(mlp.gate_proj.g, mlp.up_proj.g, rtol=0, atol=0)
    ids = torch.randint(3, 500, (1, 16))
    assert torch.isfinite(m(ids).logits).all()


def test_foldable_train_form_shares_parameters_and_matches_packed(fp_260k):
    from onebit.distill.student import student_from_teacher

    student, qc = student_from_teacher(fp_260k, OneBitConfig(foldable=True))
    a = student.model.layers[0].self_attn
    assert a.q_proj.g is a.k_proj.g is a.v_proj.g
    assert "g" not in dict(a.o_proj.named_parameters())       # a constant 1, not trained
    names = {n for n, _ in student.named_parameters()}
    assert not any(n.endswith("o_proj.g") or n.endswith("down_proj.g") for n in names)
    ids = torch.randint(3, 500, (1, 16))
    with torch.no_grad():
        y_train = student(ids).logits
    from onebit.distill.student import pack_student

    packed = pack_student(student, qc)
    with torch.no_grad():
        y_packed = packed(ids).logits
    torch.testing.assert_close(y_train, y_packed, rtol=1e-2, atol=1e-2)  # g/h rounded to fp16


def test_a_gradient_step_keeps_the_ties(fp_260k):
    from onebit.distill.student import student_from_teacher

    student, _ = student_from_teacher(fp_260k, OneBitConfig(foldable=True))
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1)
    for p in student.parameters():
        p.requires_grad_(True)
    ids = torch.randint(3, 500, (2, 16))
    student(ids, labels=ids).loss.backward()
    opt.step()
    a = student.model.layers[0].self_attn
    assert torch.equal(a.q_proj.g, a.v_proj.g)


def test_checkpoint_of_the_foldable_form_reties(tmp_path, fp_260k, stories260k):
    import copy

    from onebit.distill.student import student_from_checkpoint
    from onebit.formats.checkpoint import save_checkpoint

    m = copy.deepcopy(fp_260k)
    quantize(m, OneBitConfig(foldable=True), progress=False)
    save_checkpoint(m, tmp_path / "ck", source=stories260k)
    student, qc = student_from_checkpoint(str(tmp_path / "ck"))
    a = student.model.layers[1].self_attn
    assert qc["foldable"] is True and a.q_proj.g is a.k_proj.g


def test_free_checkpoint_cannot_be_tied(fp_260k):
    import copy

    from onebit.methods.foldable import tie

    m = copy.deepcopy(fp_260k)
    from onebit.distill.student import student_from_teacher

    student, _ = student_from_teacher(m, OneBitConfig())
    from onebit.nn.onebit_linear import OneBitLinearTrain

    mods = {n: m for n, m in student.named_modules() if isinstance(m, OneBitLinearTrain)}
    assert len(mods) > 7
    with pytest.raises(OneBitError, match="not a foldable"):
        tie(student.config, mods)


def test_foldable_with_layernorm_is_refused():
    with pytest.raises(OneBitError, match="--foldable"):
        OneBitConfig(foldable=True, layernorm=True).validate()
