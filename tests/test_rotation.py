"""The residual-stream rotation (onebit.rotation): the rotated fp model computes the same function;
a rotated, quantized checkpoint saves, loads and exports to llama.cpp with the same logits."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import onebit
from onebit.errors import OneBitError
from onebit.registry import get_handler_cls
from onebit.rotation import rotate_like, rotate_model, rotation_settings


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.fixture(scope="module")
def fp_3m_model(stories3m):
    from onebit.models import load_model

    return load_model(stories3m)


@pytest.mark.parametrize("which", ["fp_260k", "fp_3m_model"])
def test_the_rotated_fp_model_computes_the_same_logits(request, which):
    fp = request.getfixturevalue(which)
    ids = torch.randint(0, fp.config.vocab_size, (2, 48))
    ref = logits(fp, ids)
    rot = rotate_model(copy.deepcopy(fp), seed=0)
    assert rel(logits(rot, ids), ref) < 1e-4
    # the weights did change: norms are 1, the head is its own table, the embedding rotated
    base = rot.model
    assert all(torch.all(m.weight == 1) for n, m in rot.named_modules() if n.endswith("norm"))
    assert rot.lm_head.weight is not base.embed_tokens.weight and not rot.config.tie_word_embeddings
    assert not torch.allclose(base.embed_tokens.weight, fp.model.embed_tokens.weight)
    assert torch.allclose(base.embed_tokens.weight.norm(dim=1), fp.model.embed_tokens.weight.norm(dim=1), rtol=1e-4)
    # another seed, another rotation, the same function; rotating twice with one seed is a no-op
    other = rotate_model(copy.deepcopy(fp), seed=7)
    assert rel(logits(other, ids), ref) < 1e-4
    assert not torch.allclose(other.model.layers[0].self_attn.q_proj.weight, base.layers[0].self_attn.q_proj.weight)
    w = base.layers[0].mlp.down_proj.weight.clone()
    rotate_model(rot, seed=0)
    assert torch.equal(base.layers[0].mlp.down_proj.weight, w)
    with pytest.raises(OneBitError, match="already rotated"):
        rotate_model(rot, seed=1)


def test_rotation_settings_and_rotate_like(fp_260k):
    assert rotation_settings({}) == (False, 0)
    assert rotation_settings({"rotate": True, "rotate_seed": 3}) == (True, 3)
    cfg = get_handler_cls("q1_0").config_cls(rotate=True, rotate_seed=2)
    assert rotation_settings(cfg) == (True, 2)
    with pytest.raises(OneBitError, match="rotate_seed"):
        rotation_settings({"rotate": True, "rotate_seed": -1})
    m = copy.deepcopy(fp_260k)
    assert rotate_like(m, {"rotate": False}) is m and not hasattr(m, "_onebit_rotation")
    rotate_like(m, cfg)
    assert m._onebit_rotation[0] == 2


def test_config_records_rotation_only_when_on():
    cls = get_handler_cls("q1_0").config_cls
    assert "rotate" not in cls().to_dict()                 # unrotated dicts stay as older onebit wrote them
    d = cls(rotate=True, rotate_seed=4).to_dict()
    assert d["rotate"] is True and d["rotate_seed"] == 4
    back = cls.from_dict(d)
    assert back.rotate and back.rotate_seed == 4 and not cls.from_dict(cls().to_dict()).rotate


def test_unsupported_models_are_one_line_errors(fp_260k):
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

    with pytest.raises(OneBitError, match="Llama-family") as e:
        rotate_model(Toy())
    assert "\n" not in str(e.value)
    m = copy.deepcopy(fp_260k)
    m.model.layers[1].mlp.up_proj = nn.Identity()
    with pytest.raises(OneBitError, match="up_proj"):
        rotate_model(m)


@pytest.mark.parametrize("method,kw", [("q1_0", {}), ("onebit", {"foldable": True}), ("ternary", {"act_bits": 0})])
def test_quantize_rotate_save_load_same_logits(tmp_path, fp_3m_model, method, kw):
    cfg = get_handler_cls(method).config_cls(rotate=True, **kw)
    q = onebit.quantize(copy.deepcopy(fp_3m_model), cfg, progress=False)
    assert q.config.quantization_config["rotate"] is True
    onebit.save(q, tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = onebit.load(tmp_path / "ck")
    assert loaded.config.quantization_config["rotate"] is True
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    ids = torch.randint(0, fp_3m_model.config.vocab_size, (2, 40))
    want = logits(q, ids)
    assert torch.allclose(logits(loaded, ids), want, atol=1e-5, rtol=1e-5)
    # quantizing the rotated model is not quantizing the original one
    plain = onebit.quantize(copy.deepcopy(fp_3m_model), get_handler_cls(method).config_cls(**kw), progress=False)
    assert rel(logits(plain, ids), want) > 1e-3


@pytest.mark.parametrize("method,kw", [("q1_0", {}), ("onebit", {"foldable": True})])
def test_export_of_a_rotated_checkpoint_agrees_in_llama_cpp(tmp_path, fp_3m_model, stories3m, data_dir, method, kw):
    pytest.importorskip("llama_cpp")
    from onebit.export.gguf import export_gguf
    from onebit.export.spec import save_quantized
    from onebit.models import load_tokenizer

    ck = save_quantized(fp_3m_model, tmp_path / "ck", method, stories3m, rotate=True, **kw)
    out = tmp_path / "r.gguf"
    export_gguf(ck, out)
    text = (data_dir / "tinystories" / "tinystories_val_sample.txt").read_text()[:4000]
    ids = [1] + load_tokenizer(stories3m)(text).input_ids[1:128]
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=str(out), logits_all=True, n_ctx=max(64, len(ids)), n_threads=1, verbose=False)
    try:
        llm.eval(ids)
        got = torch.tensor(np.array(llm.scores[: len(ids)]), dtype=torch.float32)
    finally:
        llm.close()
    ref = logits(onebit.load(ck).float().eval(), torch.tensor([ids]))[0]
    lp, lq = torch.log_softmax(ref, -1), torch.log_softmax(got, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1).mean().item()
    top1 = (ref.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert kl < 0.01 and top1 > 0.85, (kl, top1)


def test_distill_rotate_puts_the_teacher_in_the_students_basis(stories260k, fp_260k, tmp_path, monkeypatch):
    """``onebit distill --rotate``: the teacher is rotated like the student (hidden-state losses compare
    the two), from a method config and from a rotated --student checkpoint's quantization_config."""
    import onebit.rotation as rotation
    from onebit.cli.main import main

    seen = []
    real = rotation.rotate_like

    def spy(model, config):
        out = real(model, config)
        seen.append((model, rotation.rotation_settings(config)))
        return out

    monkeypatch.setattr(rotation, "rotate_like", spy)
    small = ["--samples", "4", "--seqlen", "16", "--steps", "2", "--batch-size", "2", "--warmup", "1", "-q",
             "--data-cache", str(tmp_path / "cache"), "--method", "q1_0"]
    out = tmp_path / "kd"
    assert main(["distill", stories260k, str(out), "--rotate", "--rotate-seed", "3", *small]) == 0
    (teacher, settings), = seen
    assert settings == (True, 3) and teacher._onebit_rotation[0] == 3
    want = rotate_model(copy.deepcopy(fp_260k), seed=3).model.embed_tokens.weight
    student = onebit.load(out)
    assert student.config.quantization_config["rotate"] is True
    assert torch.allclose(teacher.model.embed_tokens.weight, want)
    assert torch.allclose(student.model.embed_tokens.weight, want)     # frozen: the student's basis
    small.remove("--method"), small.remove("q1_0")
    assert main(["distill", stories260k, str(tmp_path / "kd2"), "--student", str(out), *small]) == 0
    teacher2, settings2 = seen[-1]
    assert settings2 == (True, 3) and torch.allclose(teacher2.model.embed_tokens.weight, want)


# ------------------------------------------------------------ --rotate-online: down_proj's input at run time
@pytest.mark.parametrize("n", [64, 172, 192, 512])
def test_fast_randomized_hadamard_is_x_times_q(n):
    from onebit.methods import hadamard as hd

    x = torch.randn(3, 5, n, dtype=torch.float64)
    signs, r = hd.randomized_hadamard_parts(n, 4)
    want = x @ hd.randomized_hadamard(n, 4)
    assert torch.allclose(hd.apply_randomized_hadamard(x, signs, r), want, atol=1e-12)
    assert rel(hd.apply_randomized_hadamard(x.float(), signs, r).double(), want) < 1e-6
    assert hd.apply_randomized_hadamard(x.half(), signs, r).dtype == torch.float16


@pytest.mark.parametrize("which", ["fp_260k", "fp_3m_model"])
def test_online_rotation_computes_the_same_logits_and_survives_a_swap(request, which):
    fp = request.getfixturevalue(which)
    ids = torch.randint(0, fp.config.vocab_size, (2, 48))
    ref = logits(fp, ids)
    rot = rotate_model(copy.deepcopy(fp), seed=0, online=True)
    assert rel(logits(rot, ids), ref) < 1e-4
    mlp = rot.model.layers[0].mlp
    plain = rotate_model(copy.deepcopy(fp), seed=0)
    assert not torch.allclose(mlp.down_proj.weight, plain.model.layers[0].mlp.down_proj.weight)   # W Q folded
    for layer in rot.model.layers:   # a quantizer's swap: the MLP hooks the new down_proj on its next call
        layer.mlp.down_proj = copy.deepcopy(layer.mlp.down_proj)
        layer.mlp.down_proj._forward_pre_hooks.clear()
    assert rel(logits(rot, ids), ref) < 1e-4
    assert rel(logits(copy.deepcopy(rot), ids), ref) < 1e-4
    assert "down_proj_rotation" not in "".join(rot.state_dict())        # nothing new in a checkpoint
    with pytest.raises(OneBitError, match="already rotated"):
        rotate_model(plain, seed=0, online=True)


def test_online_config_needs_rotate_and_is_recorded_only_when_on():
    from onebit.rotation import online_setting

    cls = get_handler_cls("q1_0").config_cls
    with pytest.raises(OneBitError, match="needs --rotate"):
        cls(rotate_online=True)
    assert "rotate_online" not in cls(rotate=True).to_dict()
    d = cls(rotate=True, rotate_online=True).to_dict()
    assert d["rotate_online"] is True and cls.from_dict(d).rotate_online
    assert online_setting(d) and not online_setting({}) and not online_setting(cls(rotate=True))
    with pytest.raises(OneBitError, match="awq"):
        online_setting({"method": "awq", "rotate": True, "rotate_online": True})


@pytest.fixture(scope="module")
def online_q1_0(fp_3m_model, tmp_path_factory):
    cfg = get_handler_cls("q1_0").config_cls(rotate=True, rotate_online=True)
    q = onebit.quantize(copy.deepcopy(fp_3m_model), cfg, progress=False)
    out = tmp_path_factory.mktemp("online") / "ck"
    onebit.save(q, out)
    return q, out


def test_online_rotation_saves_and_loads_with_the_same_logits(online_q1_0, fp_3m_model):
    from transformers import AutoModelForCausalLM

    q, ck = online_q1_0
    assert q.config.quantization_config["rotate_online"] is True
    ids = torch.randint(0, fp_3m_model.config.vocab_size, (2, 40))
    want = logits(q, ids)
    for loaded in (onebit.load(ck), AutoModelForCausalLM.from_pretrained(ck)):
        assert loaded.config.quantization_config["rotate_online"] is True
        assert torch.allclose(logits(loaded, ids), want, atol=1e-5, rtol=1e-5)
        loaded.model.layers[0].mlp._forward_pre_hooks.clear()    # without the online rotation: another model
        loaded.model.layers[0].mlp.down_proj._forward_pre_hooks.clear()
        assert rel(logits(loaded, ids), want) > 1e-3
    plain = onebit.quantize(copy.deepcopy(fp_3m_model), get_handler_cls("q1_0").config_cls(rotate=True),
                            progress=False)
    assert rel(logits(plain, ids), want) > 1e-3


def test_export_of_an_online_rotated_checkpoint_is_refused(online_q1_0, tmp_path, capsys):
    from onebit.cli.main import main

    out = tmp_path / "r.gguf"
    assert main(["export", str(online_q1_0[1]), str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--rotate-online" in err and "llama.cpp has no op" in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_rotate_online_without_rotate_and_rotate_with_streaming_are_one_line_errors(stories260k, tmp_path, capsys):
    from onebit.cli.main import main

    out = tmp_path / "q"
    assert main(["quantize", stories260k, str(out), "--method", "q1_0", "--rotate-online", "-q"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs --rotate" in err and not out.exists(), err
    for args in (["quantize", stories260k, str(out), "--method", "q1_0"],
                 ["distill", stories260k, str(out), "--method", "q1_0", "--samples", "4", "--seqlen", "16",
                  "--data-cache", str(tmp_path / "cache"), "--blockwise-steps", "1", "--steps", "0"]):
        assert main([*args, "--rotate", "--streaming", "-q"]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--no-streaming" in err and not out.exists(), err
