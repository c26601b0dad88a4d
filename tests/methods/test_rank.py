"""onebit-rank: rank-k scales on stories260K — rank 1 is OneBit, round trip, honest ledger, training."""
import copy

import pytest
import torch

import onebit
from onebit.compare import parse_method_spec
from onebit.errors import OneBitError
from onebit.methods.multiscale import rank_layer_bits
from onebit.methods.onebit import OneBitConfig
from onebit.methods.rank import RankConfig
from onebit.nn.rank_linear import RankScaleLinear

from ._multiscale_cases import logits, round_trip


def test_rank1_model_equals_onebit(fp_260k):
    ids = torch.randint(3, 500, (2, 20))
    torch.testing.assert_close(logits(fp_260k, RankConfig(rank=1), ids), logits(fp_260k, OneBitConfig(), ids),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank,init", [(2, "svd"), (3, "nmf")])
def test_quantize_save_load_same_logits_and_ledger_equals_file_bytes(fp_260k, tok_260k, tmp_path, rank, init):
    before, after, led, data_bytes, loaded = round_trip(RankConfig(rank=rank, init=init), fp_260k, tok_260k,
                                                        tmp_path / "ckpt")
    assert torch.equal(before, after)
    assert led.total_bits == data_bytes * 8
    mods = loaded.config.quantization_config["modules"]
    assert len(mods) == 35
    for name, (out, inp) in mods.items():
        assert isinstance(loaded.get_submodule(name), RankScaleLinear)
        assert led.per_module()[name][0] == rank_layer_bits(out, inp, rank)     # g, h and signs all counted
    assert {e.name.rpartition(".")[2] for e in led.entries if e.module == name} == {"weight_packed", "g", "h"}


def test_rank2_fits_the_weights_better_than_onebit(fp_260k):
    """Rank-2 SVID's dense weight is closer to every real weight than OneBit-SVID's."""
    from onebit.registry import get_handler

    for name, lin in [("q", fp_260k.model.layers[0].self_attn.q_proj), ("d", fp_260k.model.layers[3].mlp.down_proj)]:
        w = lin.weight.detach()
        e1 = (get_handler(OneBitConfig()).quantize_linear(name, lin).dense_weight() - w).norm()
        e2 = (get_handler(RankConfig(scale_dtype="float32")).quantize_linear(name, lin).dense_weight() - w).norm()
        assert e2 < e1


@pytest.mark.parametrize("kw,match", [
    ({"rank": 0}, "--rank must be an integer >= 1, got 0"),
    ({"rank": -2}, "--rank must be"),
    ({"rank": 2.5}, "--rank must be"),
    ({"init": "qr"}, "unknown --init 'qr'"),
    ({"scale_dtype": "auto"}, "concrete dtype"),
])
def test_bad_settings_one_line_error(kw, match):
    with pytest.raises(OneBitError, match=match) as e:
        RankConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_rank_larger_than_a_layer_is_refused(fp_260k):
    model = copy.deepcopy(fp_260k)
    with pytest.raises(OneBitError, match=r"--rank 100 is larger than layer '.*' allows") as e:
        onebit.quantize(model, RankConfig(rank=100), progress=False)
    assert "\n" not in str(e.value)


def test_compare_specs():
    assert parse_method_spec("onebit-rank2") == RankConfig(rank=2)
    assert parse_method_spec("onebit-rank") == RankConfig()
    assert parse_method_spec("onebit-rank5") == RankConfig(rank=5)
    with pytest.raises(OneBitError, match="--rank must be"):
        parse_method_spec("onebit-rank0")


def test_distillation_trains_packs_and_resets(fp_260k, tmp_path):
    from onebit.distill.data import teacher_data
    from onebit.distill.student import freeze, pack_student, reset_latents, student_from_teacher
    from onebit.distill.trainer import TrainConfig, Trainer

    data = teacher_data(fp_260k, 8, 32, seed=0, cache_dir=tmp_path / "cache")
    student, qc = student_from_teacher(fp_260k, RankConfig())
    names = freeze(student, qc["modules"])
    tr = Trainer(fp_260k, student, data, TrainConfig(steps=3, batch_size=4, lr=3e-3, warmup=1, save_every=0,
                                                     reset_every=2), names, None)
    assert len(tr.reset_modules) == 35
    hist = tr.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist if "loss" in h)
    groups = {g["name"]: g["params"] for g in tr.opt.param_groups}
    assert all(p.dim() == 2 for p in groups["matrices"])       # only the latent weights
    with torch.no_grad():
        before = student(data[:2]).logits
    assert reset_latents(student, qc["modules"]) == 35
    with torch.no_grad():
        torch.testing.assert_close(student(data[:2]).logits, before, rtol=1e-4, atol=1e-4)
        packed = pack_student(student, qc)
        assert torch.isfinite(packed(data[:2]).logits).all()


def test_blockwise_reconstruction_lowers_every_block_error(fp_260k, tmp_path):
    from onebit.distill.blockwise import BlockConfig, reconstruct
    from onebit.distill.data import teacher_data

    data = teacher_data(fp_260k, 16, 48, seed=0, cache_dir=tmp_path / "cache")
    model = copy.deepcopy(fp_260k)
    qc, hist = reconstruct(model, RankConfig(), data, BlockConfig(steps=8, batch_size=4, lr=2e-3, warmup=2,
                                                                   eval_samples=8), progress=False)
    assert len(hist) == fp_260k.config.num_hidden_layers
    assert all(h["err_final"] < h["err_init"] for h in hist), hist
    assert all(isinstance(model.get_submodule(n), RankScaleLinear) for n in qc["modules"])


def test_cli_bad_rank_one_line_exit_2(stories260k, tmp_path, capsys):
    from onebit.cli.main import main

    assert main(["quantize", stories260k, str(tmp_path / "o"), "--method", "onebit-rank", "--rank", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "onebit: error: --rank must be an integer >= 1, got -1"
    assert not (tmp_path / "o").exists()
