"""Distillation losses as pure functions of logits and hidden states.

All losses are means over the tokens of the batch (``[batch, seq, ...]``), so
a global batch split across processes or micro-batches of equal size gives
the same value as the whole batch at once (what gradient accumulation and
DDP's gradient averaging rely on).

* :func:`kd_loss` — ``kind="kl"``: ``T² · KL(p_t^T ‖ p_s^T)`` summed over the
  vocabulary; ``kind="ce"``: soft cross-entropy ``-T² · Σ p_t^T log p_s^T``
  (KL plus the teacher's entropy, which has no gradient for the student).
  ``p^T = softmax(logits / T)``; the ``T²`` factor (Hinton et al. 2015) keeps
  the gradient scale independent of ``T``.
* :func:`hidden_mse` — the OneBit paper's representation loss: for every
  layer ``l`` and token, ``‖h_t/‖h_t‖ − h_s/‖h_s‖‖²`` (L2-normalised over
  the hidden dimension), averaged over tokens and **summed** over layers.
* :func:`lm_loss` — next-token cross-entropy on the data itself.
* :func:`distill_loss` — ``kd + alpha · hidden + lm_weight · lm``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

KD_KINDS = ("kl", "ce")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            kind: str = "kl") -> torch.Tensor:
    """Teacher‖student divergence per token (mean over tokens), scaled by ``T²``."""
    if kind not in KD_KINDS:
        raise ValueError(f"kd kind must be one of {KD_KINDS}, got {kind!r}")
    t = float(temperature)
    v = student_logits.shape[-1]
    log_ps = F.log_softmax(student_logits.float().reshape(-1, v) / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float().reshape(-1, v) / t, dim=-1)
    pt = log_pt.exp()
    if kind == "kl":
        per_tok = (pt * (log_pt - log_ps)).sum(-1)
    else:
        per_tok = -(pt * log_ps).sum(-1)
    return per_tok.mean() * (t * t)


def hidden_mse(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
               eps: float = 1e-6) -> torch.Tensor:
    """Σ over layers of mean over tokens of ``‖ŝ − t̂‖²`` with ``x̂ = x / ‖x‖₂`` (last dim)."""
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student has {len(student_hidden)} hidden states, teacher {len(teacher_hidden)}")
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_hidden, teacher_hidden):
        s = F.normalize(s.float(), dim=-1, eps=eps)
        t = F.normalize(t.float(), dim=-1, eps=eps)
        total = total + (s - t).pow(2).sum(-1).mean()
    return total


def lm_loss(student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (mean over the predicted tokens)."""
    v = student_logits.shape[-1]
    return F.cross_entropy(student_logits[:, :-1].float().reshape(-1, v), input_ids[:, 1:].reshape(-1))


def distill_loss(student_logits, teacher_logits, input_ids=None, student_hidden=(), teacher_hidden=(),
                 temperature: float = 1.0, alpha: float = 1.0, lm_weight: float = 0.0,
                 kind: str = "kl") -> dict[str, torch.Tensor]:
    """``{"loss", "kd", "hidden", "lm"}``: the total and its parts (parts with weight 0 are 0)."""
    kd = kd_loss(student_logits, teacher_logits, temperature, kind)
    zero = kd.new_zeros(())
    hid = hidden_mse(student_hidden, teacher_hidden) if alpha and len(student_hidden) else zero
    lm = lm_loss(student_logits, input_ids) if lm_weight and input_ids is not None else zero
    return {"loss": kd + alpha * hid + lm_weight * lm, "kd": kd, "hidden": hid, "lm": lm}
