"""The trainer on stories260K: frozen parameters, exact resume, perplexity goes down, data cache."""
import pytest
import torch

from onebit.distill.data import batch_indices, teacher_data
from onebit.distill.student import freeze, pack_student, student_from_checkpoint, student_from_teacher
from onebit.distill.trainer import STATE_NAME, TrainConfig, Trainer
from onebit.errors import CheckpointError, OneBitError
from onebit.methods.onebit import OneBitConfig
from onebit.registry import available_methods, get_handler_cls


@pytest.fixture(scope="module")
def data(fp_260k, tmp_path_factory):
    return teacher_data(fp_260k, 16, 64, seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def _trainer(teacher, data, state_dir=None, config=None, **kw):
    student, qc = student_from_teacher(teacher, config or OneBitConfig())
    names = freeze(student, qc["modules"])
    cfg = TrainConfig(**{**dict(steps=6, batch_size=4, lr=3e-3, warmup=2, save_every=0), **kw})
    return Trainer(teacher, student, data, cfg, names, state_dir), qc


def test_batch_indices_cover_every_epoch():
    got = torch.cat([batch_indices(s, 10, 4, seed=3) for s in range(5)])  # 20 = two epochs
    assert sorted(got[:10].tolist()) == list(range(10)) and sorted(got[10:].tolist()) == list(range(10))
    assert torch.equal(batch_indices(2, 10, 4, 3), batch_indices(2, 10, 4, 3))
    assert not torch.equal(torch.cat([batch_indices(s, 10, 4, 3) for s in range(3)]),
                           torch.cat([batch_indices(s, 10, 4, 4) for s in range(3)]))


def test_teacher_data_cached(fp_260k, tmp_path, monkeypatch):
    a = teacher_data(fp_260k, 3, 16, seed=1, cache_dir=tmp_path)
    assert a.shape == (3, 16) and a[:, 0].eq(1).all()
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def boom(*a, **k):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr("onebit.calibration.teacher_samples", boom)
    assert torch.equal(teacher_data(fp_260k, 3, 16, seed=1, cache_dir=tmp_path), a)
    with pytest.raises(AssertionError):  # another seed is another file
        teacher_data(fp_260k, 3, 16, seed=2, cache_dir=tmp_path)
    with pytest.raises(AssertionError):  # so is another generation batch (the draws depend on it)
        teacher_data(fp_260k, 3, 16, seed=1, cache_dir=tmp_path, batch_size=2)


def test_teacher_data_generation_batch(fp_260k, tmp_path):
    """Sequences generated in batches of 2 are the teacher's too: each batch's first rows are the
    same generation as a smaller run's; on the host the cache key's sampler stays 'cdf' (old caches)."""
    from onebit.distill.data import _sampler

    a = teacher_data(fp_260k, 4, 12, seed=3, cache_dir=tmp_path, batch_size=2)
    b = teacher_data(fp_260k, 2, 12, seed=3, cache_dir=tmp_path, batch_size=2)
    assert a.shape == (4, 12) and torch.equal(a[:2], b)
    assert _sampler(fp_260k) == "cdf" and _sampler(None) == "cdf"


def test_fingerprint_ignores_the_load_path_but_not_the_weights(fp_260k):
    import copy

    from onebit.distill.data import model_fingerprint

    other = copy.deepcopy(fp_260k)
    other.config._name_or_path = "/somewhere/else/stories260K"  # same model, loaded by another path
    assert model_fingerprint(other) == model_fingerprint(fp_260k)
    with torch.no_grad():
        next(other.parameters())[0, 0] += 1.0
    assert model_fingerprint(other) != model_fingerprint(fp_260k)


def test_fingerprint_sees_every_bit_and_not_the_thread_count(fp_260k):
    """The data cache key hashes exact bytes: one ulp changes it; torch's thread count does not
    (float sums did: their last digits follow the reduction order)."""
    import copy

    from onebit.distill.data import model_fingerprint

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = model_fingerprint(fp_260k)
        torch.set_num_threads(2)
        assert model_fingerprint(fp_260k) == one
    finally:
        torch.set_num_threads(before)
    other = copy.deepcopy(fp_260k)
    with torch.no_grad():
        w = other.model.layers[0].mlp.up_proj.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    assert model_fingerprint(other) != one


def test_frozen_parameters_untouched(fp_260k, data):
    tr, qc = _trainer(fp_260k, data, steps=3)
    before = {n: p.detach().clone() for n, p in tr.student.named_parameters()}
    tr.train()
    changed = {n for n, p in tr.student.named_parameters() if not torch.equal(p, before[n])}
    frozen = [n for n in before if "embed" in n or "norm" in n or "lm_head" in n]
    assert frozen and not changed & set(frozen)
    assert changed == set(tr.trainable)  # every latent weight, g and h moved
    for n, p in fp_260k.named_parameters():  # the teacher is not touched either
        if n in before and ("embed" in n or "norm" in n):
            assert torch.equal(p, before[n])


@pytest.mark.parametrize("clip,reset", [(0.0, 0), (0.5, 0), (0.0, 2)])
def test_resume_equals_uninterrupted(fp_260k, data, tmp_path, clip, reset):
    kw = dict(grad_accum=2, latent_clip=clip, reset_every=reset)
    full, _ = _trainer(fp_260k, data, tmp_path / "a", **kw)
    full.train()
    part, _ = _trainer(fp_260k, data, tmp_path / "b", save_every=2, **kw)
    part.train(stop_at=3)  # stops after the step-3 checkpoint, as if killed there
    assert part.step == 3
    # a fresh process: new student from the teacher, state from disk
    resumed, _ = _trainer(fp_260k, data, tmp_path / "b", save_every=2, **kw)
    resumed.load_state()
    assert resumed.step == 3
    resumed.train()
    a = dict(full.student.named_parameters())
    for n, p in resumed.student.named_parameters():
        assert torch.allclose(p, a[n], rtol=0, atol=1e-6), n


def test_latent_clip_bounds_every_latent_matrix(fp_260k, data):
    free, _ = _trainer(fp_260k, data, steps=20, lr=2e-2)
    init = {n: p.detach().abs().mean().item() for n, p in free.student.named_parameters() if p.dim() == 2
            and p.requires_grad}
    free.train()
    over = [n for n, p in free.student.named_parameters() if n in init and p.abs().max() > 0.5 * init[n]]
    assert over  # without the clamp latents leave the band (so the test below can fail)
    tr, _ = _trainer(fp_260k, data, steps=20, lr=2e-2, latent_clip=0.5)
    assert len(tr.bounds) == len(init)
    tr.train()
    for n, p in tr.student.named_parameters():
        if n in init:
            assert p.abs().max() <= 0.5 * init[n] * (1 + 1e-6), n
        elif p.requires_grad:  # g, h are not clamped
            assert p.dim() == 1
    with pytest.raises(OneBitError, match="latent-clip"):
        TrainConfig(latent_clip=-1).validate()


def test_resume_refuses_bad_checkpoints(fp_260k, data, tmp_path):
    tr, _ = _trainer(fp_260k, data, tmp_path)
    with pytest.raises(CheckpointError, match="no training checkpoint"):
        tr.load_state()
    (tmp_path / STATE_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable training checkpoint"):
        tr.load_state()
    tr.train(stop_at=1)
    other, _ = _trainer(fp_260k, data, tmp_path, batch_size=8)
    with pytest.raises(CheckpointError, match="batch_size"):
        other.load_state()


def test_short_distillation_lowers_perplexity(fp_260k, tok_260k, data, tmp_path):
    from onebit.eval.data import load_text
    from onebit.eval.perplexity import perplexity, tokenize_text

    ids = tokenize_text(tok_260k, load_text("tinystories"))
    tr, qc = _trainer(fp_260k, data, steps=16, lr=5e-3)
    before = perplexity(tr.student, ids, 128, 4, progress=False).ppl
    tr.train()
    student = pack_student(tr.student, qc)
    after = perplexity(student, ids, 128, 4, progress=False).ppl
    assert after < before / 4, (before, after)
    # the packed checkpoint round-trips and turns back into a trainable student with the same forward
    from onebit.formats.checkpoint import save_checkpoint

    save_checkpoint(student, tmp_path / "ck")
    again, qc2 = student_from_checkpoint(str(tmp_path / "ck"))
    assert qc2["modules"] == qc["modules"]
    x = ids[:64].unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(again(x).logits, student(x).logits, atol=1e-3)


@pytest.mark.parametrize("method", [m for m in ("bitnet", "ternary", "rtn") if m in available_methods()])
def test_other_methods_train_and_pack(fp_260k, data, method):
    cfg = get_handler_cls(method).config_cls()
    tr, qc = _trainer(fp_260k, data, config=cfg, steps=2)
    hist = tr.train()
    assert hist and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist if "loss" in h)
    packed = pack_student(tr.student, qc)
    with torch.no_grad():
        assert torch.isfinite(packed(data[:1]).logits).all()


def test_reset_latents_keeps_the_forward_and_moves_latents_off_zero(fp_260k, data):
    from onebit.distill.student import reset_latents

    tr, qc = _trainer(fp_260k, data, steps=4, lr=2e-2)
    tr.train()
    ids = data[:2]
    with torch.no_grad():
        before = tr.student(ids).logits
    signs = {n: tr.student.get_submodule(n).weight.detach().ge(0) for n in qc["modules"]}
    params = {n: p for n, p in tr.student.named_parameters()}
    assert reset_latents(tr.student, qc["modules"]) == len(qc["modules"])
    assert all(params[n] is p for n, p in tr.student.named_parameters())  # in place: the optimiser's tensors
    with torch.no_grad():
        assert torch.allclose(tr.student(ids).logits, before, atol=1e-5)
    for n in qc["modules"]:
        m = tr.student.get_submodule(n)
        assert torch.equal(m.weight.ge(0), signs[n])
        assert torch.allclose(m.weight.abs(), torch.outer(m.h.abs(), m.g.abs()).clamp_min(1e-8), rtol=1e-6)


def test_reset_every_resets_latents_at_multiples_only(fp_260k, data):
    def off_scale(tr, qc):  # modules whose latents are not sign(W)·|h gᵀ|
        out = 0
        for n in qc["modules"]:
            m = tr.student.get_submodule(n)
            out += not torch.allclose(m.weight.abs(), torch.outer(m.h.abs(), m.g.abs()).clamp_min(1e-8),
                                      rtol=1e-5)
        return out

    tr, qc = _trainer(fp_260k, data, steps=7, lr=2e-2, reset_every=3)
    assert len(tr.reset_modules) == len(qc["modules"])
    tr.train(stop_at=3)
    assert off_scale(tr, qc) == 0  # just reset at step 3
    tr.train(stop_at=4)
    assert off_scale(tr, qc) == len(qc["modules"])  # one step later the latents moved on their own
    tr.train()  # 7 = the last step: no reset after it
    assert off_scale(tr, qc) == len(qc["modules"])
    plain, _ = _trainer(fp_260k, data, steps=3, lr=2e-2)
    plain.train()
    assert off_scale(plain, qc) == len(qc["modules"])  # without reset_every nothing is reset
    with pytest.raises(OneBitError, match="reset-every"):
        TrainConfig(reset_every=-1).validate()


def test_compiled_step_matches_eager(fp_260k, data):
    """``compile=True`` trains through torch.compile'd teacher, student and loss: same losses and
    parameters as the eager step, to float tolerance (the speed-up is measured in bench/distill_speed.py)."""
    eager, _ = _trainer(fp_260k, data, steps=2, alpha=1.0)
    comp, _ = _trainer(fp_260k, data, steps=2, alpha=1.0, compile=True)
    assert comp._student_fwd is not comp.model and comp._loss_fn is not eager._loss_fn
    for _ in range(2):
        a, b = eager.train_step(), comp.train_step()
        for k in ("loss", "kd", "hidden"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), k
    pe, pc = dict(eager.student.named_parameters()), dict(comp.student.named_parameters())
    for n in eager.trainable:
        torch.testing.assert_close(pc[n], pe[n], rtol=1e-3, atol=1e-4)


def test_calibrated_method_student_starts_from_its_quantization(fp_260k, data):
    """GPTQ's student is GPTQ's result in trainable form (not round-to-nearest): before any step
    its forward equals the GPTQ-quantized model's, and differs from RTN's."""
    from onebit.api import quantize
    from onebit.method_configs import GPTQConfig, RTNConfig

    cfg = GPTQConfig(bits=2, group_size=64)
    with pytest.raises(OneBitError, match="needs calibration"):
        student_from_teacher(fp_260k, cfg)
    student, qc = student_from_teacher(fp_260k, GPTQConfig(bits=2, group_size=64), calib_ids=data)
    assert student.config.quantization_config is None and qc["method"] == "gptq"
    import copy
    ref = quantize(copy.deepcopy(fp_260k), GPTQConfig(bits=2, group_size=64), calib_ids=data)
    rtn, _ = student_from_teacher(fp_260k, RTNConfig(bits=2, group_size=64))
    ids = data[:2, :32]
    with torch.no_grad():
        s, r, q = student(ids).logits, ref(ids).logits, rtn(ids).logits
    torch.testing.assert_close(s, r, rtol=1e-4, atol=1e-4)
    assert (s - q).abs().max() > 1e-2
    names = freeze(student, qc["modules"])
    assert names and all(student.get_parameter(n).requires_grad for n in names)


class _Clock:
    """A fake clock that only moves when a (fake) step or evaluation runs."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _fake_steps(monkeypatch, tr, step_s: float, first_s: float, eval_s: float = 0.0):
    clock = _Clock()
    monkeypatch.setattr("onebit.distill.trainer._now", clock)
    lrs = []

    def step():
        clock.t += first_s if tr.step == 0 else step_s
        lrs.append(tr.sched.get_last_lr()[0])
        tr.opt.step()  # no gradients: only the scheduler's bookkeeping matters here
        tr.sched.step()
        tr.step += 1
        return {"loss": 0.0, "kd": 0.0, "hidden": 0.0, "lm": 0.0}

    def evaluate():
        clock.t += eval_s
        tr.eval_seconds = eval_s
        return 1.0

    monkeypatch.setattr(tr, "train_step", step)
    monkeypatch.setattr(tr, "evaluate", evaluate)
    return clock, lrs


def test_fit_steps_plans_the_schedule_from_its_own_timed_steps(fp_260k, data, monkeypatch):
    """4 probe steps (the first, compiling, 10 s; then 0.5 s each), then 98 s left: 196 more steps.
    The probe steps are part of the run, and from then on the cosine follows the fitted total."""
    from onebit.distill.trainer import lr_factor

    tr, _ = _trainer(fp_260k, data, warmup=2, steps=6)
    clock, lrs = _fake_steps(monkeypatch, tr, 0.5, 10.0)
    assert tr.fit_steps(109.5, probe=4, safety=1.0) == 4 + 196 and tr.cfg.steps == 200
    assert tr.step == 4 and clock.t == 11.5
    tr.train(checkpoint=False)
    assert tr.step == 200
    assert lrs[:2] == pytest.approx([3e-3 * 0.5, 3e-3])  # warmup, as in a planned run
    for s in (50, 120, 199):  # the cosine of a 200-step schedule
        assert lrs[s] == pytest.approx(3e-3 * lr_factor(s, 200, 2))


def test_fit_steps_counts_the_evaluations_and_refuses_a_started_run(fp_260k, data, monkeypatch):
    tr, _ = _trainer(fp_260k, data, eval_every=8)
    tr.eval_ids = torch.arange(200) % 100  # evaluations happen; their time is faked
    _fake_steps(monkeypatch, tr, 0.5, 0.5, eval_s=4.0)
    # 0.5 s/step + 4 s per 8 steps = 1 s/step; 100 s - step-0 evaluation (4) - 4 steps (2) - final (4) = 90
    assert tr.fit_steps(100.0, probe=4, safety=1.0) == 4 + 90
    with pytest.raises(OneBitError, match="at step 4"):
        tr.fit_steps(100.0)


def test_fit_steps_runs_its_probe_even_without_time(fp_260k, data, monkeypatch):
    tr, _ = _trainer(fp_260k, data)
    _fake_steps(monkeypatch, tr, 0.5, 0.5)
    assert tr.fit_steps(0.0, probe=3) == 3 and tr.step == 3
