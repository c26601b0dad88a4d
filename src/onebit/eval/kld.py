"""Agreement of a student with its teacher, as llama.cpp's ``perplexity --kl-divergence`` reports it.

Both models score the same token windows (:func:`~onebit.eval.perplexity.windows`
of the text tokenized once).  Per predicted token ``t``:

* ``KLD = sum_v p_teacher(v) (log p_teacher(v) - log p_student(v))`` =
  KL(teacher ‖ student) over the vocabulary;
* ``Δp = p_student(x_t) - p_teacher(x_t)`` for the actual next token ``x_t``;
* top-1 agreement: the two models' argmax tokens are equal ("Same top p").

Reported: mean KLD ± its standard error, max/min and the percentiles llama.cpp
prints (99.9, 99, 95, 90, median, 10, 5, 1, 0.1), the same for Δp plus its
RMS, top-1 agreement, both perplexities, their ratio, mean ``ln(PPL_s/PPL_t)``
and the correlation of the per-token log-probabilities.

llama.cpp scores only the second half of each window (the first half is
context); ``second_half=True`` does the same.  By default every predicted token
of each window is scored, as ``onebit eval ppl`` does.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import OneBitError
from ..progress import Progress as tqdm
from .data import C4_WINDOWS, load_text
from .perplexity import tokenize_text, windows

PERCENTILES = (99.9, 99.0, 95.0, 90.0, 50.0, 10.0, 5.0, 1.0, 0.1)


@dataclass
class KLDResult:
    tokens: int
    windows: int
    seqlen: int
    mean_kld: float
    kld_stderr: float
    kld_percentiles: dict = field(default_factory=dict)  # "max", "99.9", ..., "min"
    top1_agreement: float = 0.0  # fraction of tokens where the argmaxes agree
    ppl_teacher: float = 0.0
    ppl_student: float = 0.0
    ppl_ratio: float = 0.0
    mean_ln_ppl_ratio: float = 0.0
    cor_logprob: float = 0.0
    mean_delta_p: float = 0.0
    rms_delta_p: float = 0.0
    delta_p_percentiles: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        p = self.kld_percentiles
        return (f"KLD mean {self.mean_kld:.6f} ± {self.kld_stderr:.6f}, 99% {p['99.0']:.6f}, "
                f"max {p['max']:.6f}; same top-1 {100 * self.top1_agreement:.3f}%; "
                f"ppl teacher {self.ppl_teacher:.4f}, student {self.ppl_student:.4f} "
                f"(ratio {self.ppl_ratio:.4f}); {self.tokens} tokens")


def _percentiles(x: torch.Tensor) -> dict:
    xs = x.double().sort().values
    n = xs.numel()
    out = {"max": xs[-1].item()}
    for q in PERCENTILES:  # linear interpolation, as numpy's default
        pos = q / 100 * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        out[f"{q:.1f}"] = (xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)).item()
    out["min"] = xs[0].item()
    return out


def _device(m):
    return next(m.parameters()).device


@torch.no_grad()
def kl_divergence(teacher, student, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
                  batch_size: int = 1, progress: bool = False, second_half: bool = False,
                  teacher_cache: dict | None = None) -> KLDResult:
    """KL(teacher ‖ student) and agreement over non-overlapping windows of ``ids``.

    ``teacher_cache``: a dict the teacher's logits are kept in (by batch start), so a second call
    with the same teacher, ``ids``, windows and batch size (``onebit compare``, one call per method)
    runs the teacher on none of them.  The caller owns it and must not reuse it for other inputs."""
    if seqlen < 2:
        raise OneBitError(f"--seqlen must be at least 2, got {seqlen}")
    if batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {batch_size}")
    w = windows(ids, seqlen, max_windows)
    first = seqlen // 2 if second_half else 0
    klds, nll_t, nll_s, agree, dps = [], [], [], [], []
    t0 = time.perf_counter()
    for i in tqdm(range(0, w.shape[0], batch_size), desc="kld", disable=not progress, unit="win"):
        b = w[i:i + batch_size]
        lt = None if teacher_cache is None else teacher_cache.get(i)
        if lt is None:
            lt = teacher(b.to(_device(teacher))).logits.float().cpu()[:, first:-1]
            if teacher_cache is not None:
                teacher_cache[i] = lt
        ls = student(b.to(_device(student))).logits.float().cpu()[:, first:-1]
        if lt.shape[-1] != ls.shape[-1]:
            raise OneBitError(f"teacher and student vocabularies differ ({lt.shape[-1]} vs {ls.shape[-1]})")
        lpt, lps = F.log_softmax(lt, -1), F.log_softmax(ls, -1)
        tgt = b[:, first + 1:, None]
        klds.append((lpt.exp() * (lpt - lps)).sum(-1).clamp_min(0).flatten())
        t_lp, s_lp = lpt.gather(-1, tgt).flatten(), lps.gather(-1, tgt).flatten()
        nll_t.append(-t_lp)
        nll_s.append(-s_lp)
        dps.append(s_lp.exp() - t_lp.exp())
        agree.append((lpt.argmax(-1) == lps.argmax(-1)).flatten())
    kld, nt, ns, dp = (torch.cat(x).double() for x in (klds, nll_t, nll_s, dps))
    n = kld.numel()
    cor = torch.corrcoef(torch.stack([nt, ns]))[0, 1].item() if n > 1 else float("nan")
    return KLDResult(
        tokens=n, windows=w.shape[0], seqlen=seqlen, mean_kld=kld.mean().item(),
        kld_stderr=(kld.std().item() / math.sqrt(n)) if n > 1 else 0.0, kld_percentiles=_percentiles(kld),
        top1_agreement=torch.cat(agree).double().mean().item(),
        ppl_teacher=math.exp(nt.mean().item()), ppl_student=math.exp(ns.mean().item()),
        ppl_ratio=math.exp(ns.mean().item() - nt.mean().item()), mean_ln_ppl_ratio=(ns.mean() - nt.mean()).item(),
        cor_logprob=cor, mean_delta_p=dp.mean().item(), rms_delta_p=dp.pow(2).mean().sqrt().item(),
        delta_p_percentiles=_percentiles(dp), seconds=time.perf_counter() - t0)


def dataset_kld(teacher, student, tokenizer, data: str, seqlen: int, max_windows: int | None = None,
                batch_size: int = 1, progress: bool = False, second_half: bool = False) -> KLDResult:
    """:func:`kl_divergence` on ``wikitext2``, ``c4``, ``tinystories`` or a text file."""
    ids = tokenize_text(tokenizer, load_text(data))
    if data == "c4":
        max_windows = min(max_windows or C4_WINDOWS, C4_WINDOWS)
    return kl_divergence(teacher, student, ids, seqlen, max_windows, batch_size, progress, second_half)
