"""Perplexity by the GPTQ/OneBit convention.

The text is tokenized **once** (one BOS at the start, as the tokenizer adds
it), cut into non-overlapping windows of ``seqlen`` tokens, the remainder
dropped; each window is scored independently (no carried context) and
``ppl = exp(mean NLL over every predicted token)``.  With equal windows this
equals GPTQ's ``exp(sum(loss_i * seqlen) / (n * seqlen))``.

KV-cache quantization (``kv_cache``, :mod:`onebit.kvcache`): a window scored in one forward never
reads its cache back, so a quantized cache would cost nothing there.  With ``kv_chunk = C`` each
window is fed ``C`` tokens at a time through a fresh cache (the quantized one, or transformers'
float ``DynamicCache`` without ``kv_cache``): every chunk attends to the earlier chunks' keys and
values as the cache stores them.  ``C = 1`` is token-by-token decoding; the same tokens are scored.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import OneBitError
from ..progress import Progress as tqdm
from .data import C4_WINDOWS, load_text


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    windows: int
    seqlen: int
    tokens: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def tokenize_text(tokenizer, text: str) -> torch.Tensor:
    """All tokens of ``text`` as one 1-D tensor (tokenized once)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=True, verbose=False).input_ids
    return ids[0]


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise OneBitError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: n * seqlen].view(n, seqlen)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, seqlen: int, max_windows: int | None = None,
               batch_size: int = 1, progress: bool = True, desc: str = "ppl", kv_cache=None,
               kv_chunk: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on token ids ``ids`` (1-D) by non-overlapping windows; with
    ``kv_chunk``, each window fed in chunks through a KV cache (``kv_cache``: a
    :class:`onebit.kvcache.KVQuantConfig`, None: float; see the module doc)."""
    if seqlen < 2:
        raise OneBitError(f"--seqlen must be at least 2, got {seqlen}")
    if kv_chunk is not None and kv_chunk < 1:
        raise OneBitError(f"--kv-chunk must be at least 1, got {kv_chunk}")
    if kv_cache is not None and getattr(kv_cache, "kind", "none") != "none" and kv_chunk is None:
        raise OneBitError("--kv-cache in perplexity needs --kv-chunk C (one forward over a window never "
                          "reads its cache back; C = 1 is token-by-token decoding)")
    w = windows(ids, seqlen, max_windows)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    t0 = time.perf_counter()
    for i in tqdm(range(0, w.shape[0], batch_size), desc=desc, disable=not progress, unit="win"):
        batch = w[i:i + batch_size].to(device)
        logits = (model(batch) if kv_chunk is None else _chunked(model, batch, kv_chunk, kv_cache)).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               batch[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, w.shape[0], seqlen, count, time.perf_counter() - t0)


class _Logits:
    def __init__(self, logits):
        self.logits = logits


def _chunked(model, batch: torch.Tensor, chunk: int, kv_cache) -> _Logits:
    """The logits of ``batch`` fed ``chunk`` tokens at a time through one fresh KV cache."""
    from ..kvcache import cache_kwarg, make_cache  # subclasses transformers' Cache: imports transformers

    cache = make_cache(kv_cache)
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache()
    kw = cache_kwarg(model)
    out = [model(batch[:, i:i + chunk], use_cache=True, **{kw: cache}).logits
           for i in range(0, batch.shape[1], chunk)]
    return _Logits(torch.cat(out, 1))


def dataset_perplexity(model, tokenizer, dataset: str, seqlen: int, max_windows: int | None = None,
                       batch_size: int = 1, progress: bool = True, kv_cache=None,
                       kv_chunk: int | None = None) -> PerplexityResult:
    """Perplexity on a named dataset (``wikitext2``, ``c4``, ``tinystories``) or a text file."""
    ids = tokenize_text(tokenizer, load_text(dataset))
    if dataset == "c4":
        max_windows = min(max_windows or C4_WINDOWS, C4_WINDOWS)
    return perplexity(model, ids, seqlen, max_windows, batch_size, progress, desc=f"ppl {dataset}",
                      kv_cache=kv_cache, kv_chunk=kv_chunk)
