"""The polish stage on stories260K: latents reset, KL only, its own schedule, the student keeps training."""
import torch

from onebit.distill.data import teacher_data
from onebit.distill.stages import polish
from onebit.distill.student import freeze, student_from_teacher
from onebit.distill.trainer import TrainConfig, Trainer
from onebit.methods.onebit import OneBitConfig


def test_polish_resets_latents_and_trains_kl_only(fp_260k, tmp_path, monkeypatch):
    data = teacher_data(fp_260k, 16, 64, seed=0, cache_dir=tmp_path)
    student, qc = student_from_teacher(fp_260k, OneBitConfig())
    names = freeze(student, qc["modules"])
    first = Trainer(fp_260k, student, data, TrainConfig(steps=4, batch_size=4, lr=2e-2, warmup=1), names)
    first.train()
    seen = {}

    def spy(self, ids):  # the loss the polish stage trains on: no hidden states asked for
        seen["alpha"] = self.cfg.alpha
        return orig(self, ids)

    orig = Trainer._loss
    monkeypatch.setattr(Trainer, "_loss", spy)
    mod = student.get_submodule(next(iter(qc["modules"])))
    signs = mod.weight.detach().ge(0).clone()
    reset_seen = {}

    def check_reset(self):  # at the first polish step the latents sit at |h g^T|
        if self.step == 0 and "mag" not in reset_seen:
            reset_seen["mag"] = torch.allclose(mod.weight.abs(), torch.outer(mod.h.abs(), mod.g.abs()).clamp_min(1e-8),
                                               rtol=1e-5)
            reset_seen["signs"] = torch.equal(mod.weight.ge(0), signs)
        return orig_step(self)

    orig_step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", check_reset)
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    second = polish(first, 3, lr=1e-3, min_lr_ratio=0.5)
    assert reset_seen == {"mag": True, "signs": True}
    assert second.step == 3 and second.student is student and seen["alpha"] == 0.0
    assert second.cfg.lr == 1e-3 and second.cfg.seed == first.cfg.seed + 1 and second.cfg.min_lr_ratio == 0.5
    assert any(not torch.equal(p, before[n]) for n, p in student.named_parameters() if n in before)
