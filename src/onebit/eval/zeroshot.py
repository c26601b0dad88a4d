"""Zero-shot multiple-choice scoring, as lm-evaluation-harness scores it.

* A request is ``(context, continuation)``; trailing spaces of the context move
  to the continuation, ``context + continuation`` is encoded whole and split
  after ``len(encode(context))`` tokens (lm-eval's ``_encode_pair``), so the
  context tokens are the context's own encoding and the continuation tokens
  are the tail of the whole encoding.
* Its score is the sum of ``log p(continuation token | everything before)``;
  ``is_greedy`` says every continuation token is the argmax.
* A pair longer than the model's window (``max_length + 1`` tokens) is cut from
  the left, as lm-eval does (``(ctx + cont)[-(max_length + 1):]``), with a warning.
* ``acc``: argmax of the log-likelihoods; ``acc_norm``: argmax of
  ``loglik / len(choice)`` where ``len`` is the choice string's length in
  characters, as lm-eval's code computes it (its docs call it byte length; the
  two agree on ASCII text).  LAMBADA: ``acc`` = greedy last word, ``ppl`` =
  ``exp(-mean loglik)`` over documents.

Speed: requests with the same context tokens (the choices of one item) share
one forward pass of the context: it is run once with a KV cache, the cache is
repeated for each choice and only the continuations are run on top of it.
``share=False`` runs every ``context + continuation`` whole (lm-eval's way);
both give the same log-likelihoods up to float rounding (tested).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..calibration import cache_kw
from ..errors import OneBitError
from ..progress import Progress as tqdm
from .tasks import NORM_TASKS, PAPER_TASKS, Doc, load_task

log = logging.getLogger("onebit")


def model_max_length(model, default: int = 2048) -> int:
    """The window lm-eval would use: the config's position limit, else 2048."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``_encode_pair`` for many pairs (tokenizer defaults, so BOS as the tokenizer adds it)."""
    ctxs, wholes = [], []
    for context, continuation in pairs:
        if not context:
            raise OneBitError("a request has an empty context")
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        ctxs.append(context)
        wholes.append(context + continuation)
    uniq = list(dict.fromkeys(ctxs))
    enc = dict(zip(uniq, _encode(tokenizer, uniq)))
    out = []
    for c, w, whole in zip(ctxs, wholes, _encode(tokenizer, wholes)):
        ce = enc[c]
        cont = whole[len(ce):]
        if not cont:
            raise OneBitError(f"continuation of {c[-40:]!r} encodes to no tokens")
        out.append((ce, cont))
    return out


def _encode(tokenizer, texts: list[str], chunk: int = 1024) -> list[list[int]]:
    ids = []
    for i in range(0, len(texts), chunk):
        ids += tokenizer(texts[i:i + chunk], verbose=False)["input_ids"]
    return [list(x) for x in ids]


def truncate(reqs, max_length: int):
    """Cut pairs longer than ``max_length + 1`` tokens from the left; returns (reqs, n_cut)."""
    out, n = [], 0
    for ctx, cont in reqs:
        if len(cont) > max_length:
            raise OneBitError(f"a continuation of {len(cont)} tokens does not fit the model's window "
                              f"of {max_length}")
        if len(ctx) + len(cont) > max_length + 1:
            n += 1
            ctx = (ctx + cont)[-(max_length + 1):][:-len(cont)]
        out.append((ctx, cont))
    return out, n


def _cont_scores(logp_rows, conts):
    """(sum logprob, is_greedy) from per-row [len(cont), V] log-prob tensors."""
    res = []
    for lp, cont in zip(logp_rows, conts):
        t = torch.tensor(cont)
        ll = lp.gather(1, t[:, None]).sum().item()
        res.append((ll, bool((lp.argmax(-1) == t).all())))
    return res


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def _score_full(model, reqs):
    """lm-eval's way: (ctx + cont)[:-1] right-padded, one forward per batch."""
    dev = _device(model)
    inps = [ctx + cont[:-1] for ctx, cont in reqs]
    L = max(map(len, inps))
    ids = torch.zeros(len(inps), L, dtype=torch.long)
    for i, x in enumerate(inps):
        ids[i, :len(x)] = torch.tensor(x)
    logits = model(ids.to(dev)).logits.float()
    rows = []
    for i, (ctx, cont) in enumerate(reqs):
        s = len(ctx) - 1
        rows.append(F.log_softmax(logits[i, s:s + len(cont)], -1).cpu())
    return _cont_scores(rows, [c for _, c in reqs])


def _last_logits(model, ids, mask, last):
    """Logits at position ``last[g]`` of each row, and the KV cache."""
    pos = torch.unique(last)
    try:
        out = model(ids, attention_mask=mask, use_cache=True, logits_to_keep=pos.to(ids.device))
        idx = torch.searchsorted(pos, last)
    except TypeError:  # a model without logits_to_keep
        out = model(ids, attention_mask=mask, use_cache=True)
        idx = last
    lg = out.logits.float()[torch.arange(ids.shape[0]), idx.to(out.logits.device)]
    cache = getattr(out, "cache", None)
    return lg, cache if cache is not None else out.past_key_values


@torch.no_grad()
def _score_shared(model, groups):
    """``groups``: list of (ctx, [cont, ...]).  Context once, continuations on its cache."""
    dev = _device(model)
    G = len(groups)
    lc = torch.tensor([len(c) for c, _ in groups])
    Lc = int(lc.max())
    ids = torch.zeros(G, Lc, dtype=torch.long)
    cmask = torch.zeros(G, Lc, dtype=torch.long)
    for g, (ctx, _) in enumerate(groups):
        ids[g, :len(ctx)] = torch.tensor(ctx)
        cmask[g, :len(ctx)] = 1
    first, cache = _last_logits(model, ids.to(dev), cmask.to(dev), lc - 1)
    first = F.log_softmax(first, -1).cpu()
    row_g = torch.tensor([g for g, (_, conts) in enumerate(groups) for _ in conts])
    conts = [c for _, cs in groups for c in cs]
    Lk = max(len(c) for c in conts) - 1
    if Lk > 0 and cache is None:  # a model that returns no KV cache: whole sequences
        return _score_full(model, [(ctx, c) for ctx, cs in groups for c in cs])
    rest = None
    if Lk > 0:
        cache.reorder_cache(row_g.to(dev))
        R = len(conts)
        kin = torch.zeros(R, Lk, dtype=torch.long)
        kmask = torch.zeros(R, Lk, dtype=torch.long)
        for r, c in enumerate(conts):
            kin[r, :len(c) - 1] = torch.tensor(c[:-1])
            kmask[r, :len(c) - 1] = 1
        mask = torch.cat([cmask[row_g], kmask], 1)
        pos = lc[row_g][:, None] + torch.arange(Lk)[None]
        out = model(kin.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                    use_cache=True, **{cache_kw(model): cache})
        rest = F.log_softmax(out.logits.float(), -1).cpu()
    rows = []
    for r, c in enumerate(conts):
        lp = first[row_g[r]][None]
        if len(c) > 1:
            lp = torch.cat([lp, rest[r, :len(c) - 1]], 0)
        rows.append(lp)
    return _cont_scores(rows, conts)


def loglikelihoods(model, reqs: list[tuple[list[int], list[int]]], batch_size: int = 32,
                   share: bool = True, max_length: int | None = None, progress: bool = False,
                   desc: str = "loglik") -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each (context ids, continuation ids) pair, in order."""
    if batch_size < 1:
        raise OneBitError(f"--batch-size must be at least 1, got {batch_size}")
    max_length = max_length or model_max_length(model)
    reqs, n_cut = truncate(reqs, max_length)
    if n_cut:
        log.warning(f"{desc}: {n_cut} of {len(reqs)} requests exceed the model's window of {max_length} "
                    "tokens; their contexts were truncated from the left (as lm-eval does)")
    results: list = [None] * len(reqs)
    bar = tqdm(total=len(reqs), desc=desc, disable=not progress, unit="req")
    if share:
        by_ctx: dict = {}
        for i, (ctx, cont) in enumerate(reqs):
            by_ctx.setdefault(tuple(ctx), []).append(i)
        order = sorted(by_ctx.items(), key=lambda kv: -(len(kv[0]) + max(len(reqs[i][1]) for i in kv[1])))
        batch, rows = [], 0
        for k, (ctx, idxs) in enumerate(order):
            batch.append((list(ctx), idxs))
            rows += len(idxs)
            if rows >= batch_size or k == len(order) - 1:
                scores = _score_shared(model, [(c, [reqs[i][1] for i in ix]) for c, ix in batch])
                for i, s in zip([i for _, ix in batch for i in ix], scores):
                    results[i] = s
                bar.update(rows)
                batch, rows = [], 0
    else:
        order = sorted(range(len(reqs)), key=lambda i: -(len(reqs[i][0]) + len(reqs[i][1])))
        for k in range(0, len(order), batch_size):
            ix = order[k:k + batch_size]
            for i, s in zip(ix, _score_full(model, [reqs[i] for i in ix])):
                results[i] = s
            bar.update(len(ix))
    bar.close()
    return results


@dataclass
class TaskResult:
    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float | None = None
    ppl: float | None = None  # LAMBADA
    seconds: float = 0.0
    preds: list[int] = field(default_factory=list, repr=False)
    preds_norm: list[int] = field(default_factory=list, repr=False)
    lls: list[list[float]] = field(default_factory=list, repr=False)

    def as_dict(self, items: bool = False) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k not in ("preds", "preds_norm", "lls")
             and v is not None}
        if items:
            d["items"] = [{"pred": p, **({"pred_norm": q} if self.acc_norm is not None else {}),
                           "lls": ll} for p, q, ll in zip(self.preds, self.preds_norm or self.preds, self.lls)]
        return d


def _argmax(xs) -> int:
    best = 0
    for i, x in enumerate(xs):  # first maximum, as numpy.argmax
        if x > xs[best]:
            best = i
    return best


def _stderr(xs) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def score_docs(task: str, docs: list[Doc], scores: list[tuple[float, bool]]) -> TaskResult:
    """Metrics from the (loglik, is_greedy) of every request of ``docs``, flattened in order."""
    it = iter(scores)
    per = [[next(it) for _ in d.requests] for d in docs]
    if task == "lambada":
        accs = [float(all(g for _, g in p)) for p in per]
        lls = [sum(ll for ll, _ in p) for p in per]
        return TaskResult(task, len(docs), sum(accs) / len(accs), _stderr(accs),
                          ppl=math.exp(-sum(lls) / len(lls)), preds=[int(a) for a in accs],
                          lls=[[ll] for ll in lls])
    preds, preds_n, accs, accs_n, lls = [], [], [], [], []
    for d, p in zip(docs, per):
        ll = [x for x, _ in p]
        pred = _argmax(ll)
        pred_n = _argmax([x / len(c) for x, c in zip(ll, d.choices)])
        preds.append(pred)
        preds_n.append(pred_n)
        accs.append(float(pred == d.gold))
        accs_n.append(float(pred_n == d.gold))
        lls.append(ll)
    norm = sum(accs_n) / len(accs_n) if task in NORM_TASKS else None
    return TaskResult(task, len(docs), sum(accs) / len(accs), _stderr(accs), acc_norm=norm,
                      preds=preds, preds_norm=preds_n if norm is not None else [], lls=lls)


def evaluate_task(model, tokenizer, task: str, docs: list[Doc], batch_size: int = 32, share: bool = True,
                  progress: bool = False) -> TaskResult:
    t0 = time.perf_counter()
    pairs = [r for d in docs for r in d.requests]
    reqs = encode_pairs(tokenizer, pairs)
    scores = loglikelihoods(model, reqs, batch_size, share, progress=progress, desc=task)
    r = score_docs(task, docs, scores)
    r.seconds = time.perf_counter() - t0
    return r


def paper_average(results: dict[str, TaskResult]) -> float | None:
    """Mean ``acc`` over the paper's six tasks (None unless all six were run)."""
    if not all(t in results for t in PAPER_TASKS):
        return None
    return sum(results[t].acc for t in PAPER_TASKS) / len(PAPER_TASKS)


def evaluate(model, tokenizer, tasks: list[str], data_dir=None, files=None, limit=None, batch_size: int = 32,
             share: bool = True, progress: bool = False) -> dict[str, TaskResult]:
    docs = {t: load_task(t, data_dir, files, limit) for t in tasks}  # read all first: fail fast
    model.eval()
    return {t: evaluate_task(model, tokenizer, t, d, batch_size, share, progress) for t, d in docs.items()}
