"""Block-wise reconstruction on stories260K: lowers each block's error, resumes exactly, one block at a time."""
import copy
import json

import pytest
import torch

from onebit.distill.blockwise import BlockConfig, block_loss, reconstruct
from onebit.distill.data import teacher_data
from onebit.errors import CheckpointError, OneBitError
from onebit.methods.onebit import OneBitConfig
from onebit.registry import get_handler_cls


@pytest.fixture(scope="module")
def data(fp_260k, tmp_path_factory):
    return teacher_data(fp_260k, 16, 48, seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def _cfg(**kw):
    return BlockConfig(**{**dict(steps=12, batch_size=4, lr=2e-3, warmup=2, eval_samples=8), **kw})


def _params(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["onebit", "onebit-foldable", "q1_0", "bitnet", "ternary", "rtn"])
def test_training_lowers_every_block_error(fp_260k, data, method):
    name, kw = {"onebit": ("onebit", {}), "onebit-foldable": ("onebit", {"foldable": True}),
                "q1_0": ("q1_0", {"group_size": 32}), "bitnet": ("bitnet", {}), "ternary": ("ternary", {}),
                "rtn": ("rtn", {"bits": 2, "group_size": 32})}[method]
    model = copy.deepcopy(fp_260k)
    qc, hist = reconstruct(model, get_handler_cls(name).config_cls(**kw), data, _cfg(), progress=False)
    assert len(hist) == fp_260k.config.num_hidden_layers
    for h in hist:
        assert h["err_final"] < h["err_init"], h
    assert model.config.quantization_config is qc and len(qc["modules"]) == 35
    for name in qc["modules"]:  # every target packed
        assert not hasattr(model.get_submodule(name), "to_packed"), name


def test_blocks_are_converted_one_at_a_time(fp_260k, data):
    """Memory bound: while block i trains, only its linears are in trainable form (latents + optimiser
    state); the blocks before it are packed, the blocks after it untouched nn.Linear."""
    model = copy.deepcopy(fp_260k)
    seen = []

    def check(i, m):
        kinds = {}
        for name, mod in m.named_modules():
            if not name.startswith("model.layers.") or not name.endswith("_proj"):
                continue
            b = int(name.split(".")[2])
            kind = "train" if hasattr(mod, "to_packed") else ("fp" if isinstance(mod, torch.nn.Linear) else "packed")
            kinds.setdefault(b, set()).add(kind)
        seen.append(i)
        for b, k in kinds.items():
            want = {"packed"} if b < i else ({"train"} if b == i else {"fp"})
            assert k == want, (i, b, k)

    reconstruct(model, OneBitConfig(), data, _cfg(steps=2), progress=False, on_block=check)
    assert seen == list(range(fp_260k.config.num_hidden_layers))


@pytest.mark.parametrize("bf16", [False, True])
def test_resume_after_a_kill_equals_an_uninterrupted_run(fp_260k, data, tmp_path, bf16):
    """Also under --bf16, where the student's inputs are advanced through the dense form of its packed
    blocks: a resumed run rebuilds them exactly as the uninterrupted run computed them."""
    def _cfg_(**kw):
        return _cfg(bf16=bf16, **kw)

    full = copy.deepcopy(fp_260k)
    reconstruct(full, OneBitConfig(), data, _cfg_(), tmp_path / "a", progress=False)

    class Killed(Exception):
        pass

    def kill(i, m):
        if i == 2:
            raise Killed

    part = copy.deepcopy(fp_260k)
    with pytest.raises(Killed):
        reconstruct(part, OneBitConfig(), data, _cfg_(), tmp_path / "b", progress=False, on_block=kill)
    assert json.loads((tmp_path / "b" / "blocks.json").read_text())["done"] == 2
    resumed = copy.deepcopy(fp_260k)
    _, hist = reconstruct(resumed, OneBitConfig(), data, _cfg_(), tmp_path / "b", progress=False, resume=True)
    assert [h["block"] for h in hist] == list(range(5))
    a, b = _params(full), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a finished state rebuilds the packed model without recomputing anything
    again = copy.deepcopy(fp_260k)
    reconstruct(again, OneBitConfig(), data, _cfg_(), tmp_path / "b", progress=False, resume=True)
    assert all(torch.equal(v, _params(again)[k]) for k, v in a.items())


def test_resume_refuses_other_settings(fp_260k, data, tmp_path):
    reconstruct(copy.deepcopy(fp_260k), OneBitConfig(), data, _cfg(steps=2), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="another method, data or setting"):
        reconstruct(copy.deepcopy(fp_260k), OneBitConfig(), data, _cfg(steps=3), tmp_path, progress=False,
                    resume=True)
    # without resume, the old state is replaced
    reconstruct(copy.deepcopy(fp_260k), OneBitConfig(), data, _cfg(steps=3), tmp_path, progress=False)
    assert json.loads((tmp_path / "blocks.json").read_text())["done"] == 5


def test_teacher_inputs_mode_and_bad_settings(fp_260k, data):
    model = copy.deepcopy(fp_260k)
    _, hist = reconstruct(model, OneBitConfig(), data, _cfg(inputs="teacher"), progress=False)
    assert all(h["err_final"] < h["err_init"] for h in hist[:1])
    with pytest.raises(OneBitError, match="--block-inputs"):
        _cfg(inputs="both").validate()
    with pytest.raises(OneBitError, match="at least 1"):
        _cfg(steps=0).validate()


def test_block_loss_is_relative():
    y = torch.randn(2, 5, 8)
    assert float(block_loss(y, y)) == 0.0
    assert block_loss(y + 0.1, y).item() == pytest.approx(block_loss(10 * y + 1.0, 10 * y).item(), rel=1e-5)


def test_token_norm_weighs_every_token_alike():
    yt = torch.ones(1, 4, 8)
    yt[0, 0] *= 100.0  # a "massive activation" token
    ys = yt.clone()
    ys[0, 1:] += 0.5   # error on the ordinary tokens only
    assert block_loss(ys, yt, norm="global").item() < 1e-3
    assert block_loss(ys, yt, norm="token").item() == pytest.approx(0.25 * 3 / 4)
    with pytest.raises(OneBitError, match="--block-loss"):
        _cfg(loss_norm="tokens").validate()


def test_concat_sequences_puts_k_sequences_back_to_back():
    from onebit.distill.data import concat_sequences

    ids = torch.arange(48).reshape(8, 6)
    out = concat_sequences(ids, 4)
    assert out.shape == (2, 24)
    assert torch.equal(out[1], torch.cat([ids[4], ids[5], ids[6], ids[7]]))
    assert concat_sequences(ids, 1) is ids
    with pytest.raises(OneBitError, match="divisible by 3"):
        concat_sequences(ids, 3)
    with pytest.raises(OneBitError, match="at least 1"):
        concat_sequences(ids, 0)
    assert concat_sequences(ids, 2, context=12).shape == (4, 12)
    with pytest.raises(OneBitError, match="exceed the teacher's context of 12"):
        concat_sequences(ids, 4, context=12)


def test_mixed_starts_drops_the_start_token_of_a_fraction():
    from onebit.distill.data import mixed_starts

    ids = torch.arange(10, 50).reshape(8, 5)
    ids[:, 0] = 1  # the start token
    out = mixed_starts(ids, 0.5)
    assert out.shape == (8, 4)
    starts = out[:, 0].eq(1)
    assert int(starts.sum()) == 4 and not starts.all()
    for i in range(8):  # each row is its sequence without the first or without the last token
        assert torch.equal(out[i], ids[i, :-1]) or torch.equal(out[i], ids[i, 1:])
    assert mixed_starts(ids, 0.0) is ids and mixed_starts(ids, 1.0)[:, 0].ne(1).all()
    with pytest.raises(OneBitError, match="fraction"):
        mixed_starts(ids, 1.5)


def test_repeat_spans_copies_earlier_spans_of_the_same_row():
    from onebit.distill.data import repeat_spans

    ids = torch.arange(4 * 2000).reshape(4, 2000)  # every token distinct: a copy is recognisable
    out = repeat_spans(ids, 0.25, seed=3)
    assert out.shape == ids.shape and torch.equal(out[:, :8], ids[:, :8])
    changed = out.ne(ids)
    assert 0.15 < changed.float().mean() < 0.35
    for r in range(4):  # every overwritten token is a token of its own row, from an earlier place
        pos = changed[r].nonzero().flatten()
        assert out[r, pos].ge(ids[r, 0]).all() and out[r, pos].lt(ids[r, 0] + pos).all()
    assert torch.equal(repeat_spans(ids, 0.25, seed=3), out)            # deterministic
    assert not torch.equal(repeat_spans(ids, 0.25, seed=4), out)        # and the seed matters
    assert repeat_spans(ids, 0.0) is ids
    assert repeat_spans(ids, 0.5, seed=3).ne(ids).float().mean() > changed.float().mean()
    with pytest.raises(OneBitError, match="--repeat-frac"):
        repeat_spans(ids, 1.0)


def test_bf16_block_training_lowers_errors_and_is_part_of_the_state(fp_260k, data, tmp_path):
    """``bf16=True`` trains each block under bf16 autocast: the errors still fall, the result differs
    from fp32 training (the flag does something), and a resume must share it."""
    fp32 = copy.deepcopy(fp_260k)
    reconstruct(fp32, OneBitConfig(), data, _cfg(), progress=False)
    bf = copy.deepcopy(fp_260k)
    _, hist = reconstruct(bf, OneBitConfig(), data, _cfg(bf16=True), tmp_path, progress=False)
    assert all(h["err_final"] < h["err_init"] for h in hist), hist
    a, b = _params(fp32), _params(bf)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:  # packed weights, fp16 scales: the same model up to bf16 rounding in training
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    with pytest.raises(CheckpointError, match="another method, data or setting"):
        reconstruct(copy.deepcopy(fp_260k), OneBitConfig(), data, _cfg(), tmp_path, progress=False, resume=True)


def test_compiled_block_forward_matches_eager_and_is_compiled_once(fp_260k, data, tmp_path):
    """``compile=True`` trains through one torch.compile'd forward shared by every block: the block
    errors equal eager training's to float tolerance, and the state resumes without --compile."""
    from onebit.distill import blockwise

    eager = copy.deepcopy(fp_260k)
    _, he = reconstruct(eager, OneBitConfig(), data, _cfg(steps=4), progress=False)
    comp = copy.deepcopy(fp_260k)
    _, hc = reconstruct(comp, OneBitConfig(), data, _cfg(steps=4, compile=True), tmp_path, progress=False)
    assert len(blockwise._COMPILED) == 1 and blockwise._forward(True) is blockwise._COMPILED[0]
    for e, c in zip(he, hc):
        assert c["err_final"] == pytest.approx(e["err_final"], rel=1e-2), (e, c)
    # compile changes how, not what: the finished state resumes in an eager run
    _, again = reconstruct(copy.deepcopy(fp_260k), OneBitConfig(), data, _cfg(steps=4), tmp_path,
                           progress=False, resume=True)
    assert [h["err_final"] for h in again] == [h["err_final"] for h in hc]
