"""onebit-mos: mixture of scales on stories260K — one expert is OneBit, the zero router starts at
OneBit-SVID, round trip, honest ledger, distillation and block-wise reconstruction."""
import copy

import pytest
import torch

from onebit.compare import parse_method_spec
from onebit.errors import OneBitError
from onebit.methods.mos import MoSConfig
from onebit.methods.multiscale import mos_layer_bits
from onebit.methods.onebit import OneBitConfig
from onebit.nn.mos_linear import MoSLinear

from ._multiscale_cases import logits, round_trip


def test_one_expert_model_equals_onebit(fp_260k):
    ids = torch.randint(3, 500, (2, 20))
    torch.testing.assert_close(logits(fp_260k, MoSConfig(experts=1), ids), logits(fp_260k, OneBitConfig(), ids),
                               rtol=1e-5, atol=1e-5)


def test_ptq_start_is_onebit_svid(fp_260k):
    """Router zero, experts = SVID + zero-mean noise: before training the model is OneBit-SVID's
    (fp32 scales, so storage rounding does not differ between the experts and OneBit's g/h)."""
    ids = torch.randint(3, 500, (2, 20))
    torch.testing.assert_close(logits(fp_260k, MoSConfig(scale_dtype="float32"), ids),
                               logits(fp_260k, OneBitConfig(scale_dtype="float32"), ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("experts,init", [(4, "svd"), (2, "nmf")])
def test_quantize_save_load_same_logits_and_ledger_equals_file_bytes(fp_260k, tok_260k, tmp_path, experts,
                                                                       init):
    before, after, led, data_bytes, loaded = round_trip(MoSConfig(experts=experts, init=init), fp_260k,
                                                        tok_260k, tmp_path / "ckpt")
    assert torch.equal(before, after)
    assert led.total_bits == data_bytes * 8
    mods = loaded.config.quantization_config["modules"]
    assert len(mods) == 35
    for name, (out, inp) in mods.items():
        assert isinstance(loaded.get_submodule(name), MoSLinear)
        assert led.per_module()[name][0] == mos_layer_bits(out, inp, experts)    # router and experts counted
    assert {e.name.rpartition(".")[2] for e in led.entries if e.module == name} == {
        "weight_packed", "g", "h", "router"}
    assert not [e for e in led.entries if "router" in e.name and e.category != "quantized"]


def test_different_layers_get_different_noise(fp_260k):
    from onebit.registry import get_handler

    h = get_handler(MoSConfig())
    a = h.train_module("a", fp_260k.model.layers[0].self_attn.q_proj)
    b = h.train_module("b", fp_260k.model.layers[0].self_attn.q_proj)
    a2 = h.train_module("a", fp_260k.model.layers[0].self_attn.q_proj)
    assert not torch.equal(a.g, b.g) and torch.equal(a.g, a2.g)


@pytest.mark.parametrize("kw,match", [
    ({"experts": 0}, "--experts must be an integer >= 1, got 0"),
    ({"experts": 2.0}, "--experts must be"),
    ({"init_noise": -0.1}, "--init-noise must be a finite number >= 0"),
    ({"init_noise": float("nan")}, "--init-noise must be"),
    ({"init": "pca"}, "unknown --init 'pca'"),
    ({"init_seed": "x"}, "--init-seed must be an integer"),
    ({"scale_dtype": "auto"}, "concrete dtype"),
])
def test_bad_settings_one_line_error(kw, match):
    with pytest.raises(OneBitError, match=match) as e:
        MoSConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_compare_specs():
    assert parse_method_spec("onebit-mos") == MoSConfig()
    assert parse_method_spec("onebit-mos8") == MoSConfig(experts=8)
    with pytest.raises(OneBitError, match="--experts must be"):
        parse_method_spec("onebit-mos0")


def test_distillation_moves_the_router_and_resets_keep_the_forward(fp_260k, tmp_path):
    from onebit.distill.data import teacher_data
    from onebit.distill.student import freeze, pack_student, reset_latents, student_from_teacher
    from onebit.distill.trainer import TrainConfig, Trainer

    data = teacher_data(fp_260k, 8, 32, seed=0, cache_dir=tmp_path / "cache")
    student, qc = student_from_teacher(fp_260k, MoSConfig())
    names = freeze(student, qc["modules"])
    tr = Trainer(fp_260k, student, data, TrainConfig(steps=3, batch_size=4, lr=3e-3, warmup=1, save_every=0,
                                                     latent_clip=1.0), names, None)
    hist = tr.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist if "loss" in h)
    for n in qc["modules"]:                                   # the router left zero (not pinned by the clip)
        assert student.get_submodule(n).router.abs().sum() > 0, n
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
    qc, hist = reconstruct(model, MoSConfig(), data, BlockConfig(steps=8, batch_size=4, lr=2e-3, warmup=2,
                                                                  eval_samples=8), progress=False)
    assert len(hist) == fp_260k.config.num_hidden_layers
    assert all(h["err_final"] < h["err_init"] for h in hist), hist
    assert all(isinstance(model.get_submodule(n), MoSLinear) for n in qc["modules"])


def test_cli_bad_experts_one_line_exit_2(stories260k, tmp_path, capsys):
    from onebit.cli.main import main

    assert main(["quantize", stories260k, str(tmp_path / "o"), "--method", "onebit-mos", "--experts", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "onebit: error: --experts must be an integer >= 1, got 0"
    assert not (tmp_path / "o").exists()
