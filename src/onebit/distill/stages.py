"""The polish stage: reset the latents, then a KL-only run at a lower lr.

A long single-stage distillation of a small 1-bit student plateaus: the latent
weights of many signs hover near zero and flip back and forth from step to
step, so g and h chase a moving target, and once the student is close the
hidden-state MSE stops helping.  :func:`polish` resets every latent to
``sign(W) ⊙ |h gᵀ|`` (:func:`~onebit.distill.student.reset_latents`: same
signs, same forward, a margin of ``|h_i g_j|`` before a sign can flip), then
trains again on the same data with the KL loss alone (``alpha``), at
``lr`` (constant after a short warmup, or cosine down to ``min_lr_ratio``),
resetting again every ``reset_every`` steps if asked (``TrainConfig.reset_every``,
which stage 1 can use too).  On stories3M, 800 steps + 200 polish steps:
2.59x → 2.27x the teacher's perplexity on held-out teacher text; resetting
every 200 steps during stage 1 alone: 2.59x → 2.38x at 800 steps
(``bench/results/sweep_stories3m``).

From the command line the same stage is a second ``onebit distill`` started
from the first one's packed checkpoint (``--student``; reading it back into
the trainable form is the reset) with ``--alpha 0 --lr 2.5e-4 --reset-every 500``.
"""
from __future__ import annotations

import dataclasses

from .student import reset_latents, trained_modules
from .trainer import TrainConfig, Trainer


def polish(trainer: Trainer, steps: int, lr: float = 5e-4, alpha: float = 0.0, min_lr_ratio: float = 1.0,
           warmup: int = 10, reset_every: int = 0, average_last: float = 0.0, modules=None,
           time_limit: float | None = None, **trainer_kw) -> Trainer:
    """Run the polish stage after ``trainer`` finished; return the new stage's trainer (one process;
    under torchrun use the two-command form above).

    ``modules``: the quantized modules to reset (default: the modules that own
    ``trainer.trainable`` matrices).  The new stage draws its batches with
    ``seed + 1``; ``average_last`` averages its parameters over that last
    fraction of its steps (:mod:`.averaging`); ``trainer_kw`` go to :class:`Trainer` (``eval_ids``,
    ``on_eval``, ``progress``...; by default the first stage's evaluation
    text, window length and progress setting).
    """
    student = trainer.student
    if modules is None:
        modules = trained_modules(trainer.trainable)
    reset_latents(student, modules)
    cfg: TrainConfig = dataclasses.replace(trainer.cfg, steps=steps, lr=lr, lr_vectors=None, alpha=alpha,
                                           warmup=warmup, min_lr_ratio=min_lr_ratio, seed=trainer.cfg.seed + 1,
                                           reset_every=reset_every, average_last=average_last)
    kw = dict(eval_ids=trainer.eval_ids, eval_seqlen=trainer.eval_seqlen, progress=trainer.progress,
              info=trainer.info, strategy=trainer.strategy)
    kw.update(trainer_kw)
    nxt = Trainer(trainer.teacher, student, trainer.data, cfg, trainer.trainable, **kw)
    nxt.train(time_limit=time_limit)
    return nxt
