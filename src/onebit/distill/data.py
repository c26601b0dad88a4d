"""Training tokens for distillation: teacher-generated (cached on disk) or a training file.

* :func:`teacher_data` — ``calibration.teacher_samples`` (start token, first
  tokens greedy, then sampled), cached as a safetensors file of token ids
  whose name hashes everything that determines the samples (teacher
  fingerprint, count, length, seed, greedy prefix, temperature), so a second
  run with the same settings reads it instead of generating again.
* :func:`file_data` — windows of a training text/JSONL the user names;
  ``calibration.read_training_text`` refuses the known evaluation files.
* :func:`concat_sequences` — ``k`` sequences back to back per row, so training sees
  positions past the generated length.
* :func:`batch_indices` — which samples make up optimiser step ``k``: a
  seeded permutation per epoch, so the data position is just the step number
  (what makes resuming exact).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from .. import calibration  # module attribute: tests patch calibration.teacher_samples
from ..errors import OneBitError
from ..fileio import atomic_write

log = logging.getLogger("onebit")


def default_cache_dir() -> Path:
    return Path(os.environ.get("ONEBIT_CACHE", Path.home() / ".cache" / "onebit")) / "distill-data"


def hash_tensor(h, name: str, t: torch.Tensor) -> None:
    """Feed ``name``, shape, dtype and the exact bytes of ``t`` to the hash ``h``.

    Bytes, not sums: a float sum's last digits depend on the reduction order, hence on torch's thread
    count and the device, and the same teacher got two data caches under ``--threads 1`` and 2."""
    h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
    h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())


@torch.no_grad()
def model_fingerprint(model) -> str:
    """A short hash of a model's config and weights (every parameter's exact bytes).

    Private config keys (``_name_or_path``, ``_attn_implementation``...) are left out: the same
    model loaded from ``../shared/...`` and from its absolute path is the same teacher, one cache.
    """
    h = hashlib.sha256()
    conf = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_")}
    h.update(json.dumps(conf, sort_keys=True, default=str).encode())
    for name, p in model.state_dict().items():
        hash_tensor(h, name, p)
    return h.hexdigest()[:16]


def _sampler(teacher) -> str:
    """The sampler's name in the cache key: on an accelerator the draws come from its own generator
    (``calibration.teacher_samples``), so they differ from the host's for the same seed."""
    if teacher is None:
        return "cdf"
    dev = next(teacher.parameters()).device.type
    return "cdf" if dev == "cpu" else f"cdf-{dev}"


def teacher_data(teacher, n: int, seqlen: int, seed: int = 0, greedy_tokens: int = 3,
                 temperature: float = 1.0, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False, generate: bool = True, batch_size: int = 64,
                 fingerprint: str | None = None) -> torch.Tensor:
    """``[n, seqlen]`` teacher-generated token ids, read from / written to the cache.

    ``fingerprint``: the teacher's :func:`model_fingerprint` computed elsewhere (streaming block-wise
    reconstruction reads a cache with ``teacher=None``, ``generate=False``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    key = dict(fp=fingerprint or model_fingerprint(teacher), n=n, seqlen=seqlen, seed=seed, greedy=greedy_tokens,
               temperature=temperature, batch=batch_size,
               sampler=_sampler(teacher))  # calibration.sample_rows; the multinomial-sampled caches do not match
    name = "teacher-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = cache / f"{name}.safetensors"
    if file.is_file():
        try:
            ids = load_file(str(file))["input_ids"]
            if tuple(ids.shape) == (n, seqlen):
                log.info("teacher data: %d x %d tokens from cache %s", n, seqlen, file)
                return ids
        except (SafetensorError, KeyError, OSError):
            pass
        log.warning("ignoring unreadable teacher-data cache %s; regenerating", file)
    if not generate:
        raise OneBitError(f"teacher-data cache '{file}' is missing")
    ids = calibration.teacher_samples(teacher, n, seqlen, seed=seed, greedy_tokens=greedy_tokens,
                                      temperature=temperature, batch_size=batch_size,
                                      progress=progress).contiguous()
    atomic_write(file, lambda tmp: save_file({"input_ids": ids}, tmp, metadata={k: str(v) for k, v in key.items()}))
    log.info("teacher data: generated %d x %d tokens, cached in %s", n, seqlen, file)
    return ids


def file_data(tokenizer, path: str, n: int | None, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n, seqlen]`` windows of a training file (all windows when ``n`` is None)."""
    if n is None:
        ids = tokenizer(calibration.read_training_text(path), return_tensors="pt", verbose=False).input_ids[0]
        n = max(1, ids.numel() // seqlen)
    return calibration.file_samples(tokenizer, path, n, seqlen, seed=seed)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Sample indices of global batch ``step``: consecutive slices of per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, off = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[off: off + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def concat_sequences(ids: torch.Tensor, k: int, context: int | None = None) -> torch.Tensor:
    """``[n / k, k · seqlen]``: every ``k`` consecutive sequences of ``ids`` back to back in one row.

    Perplexity is scored on windows of 2048 tokens, while teacher text is generated 256 at a
    time (its cost per token grows with the length).  A student trained only on 256-token rows
    never sees a position past 256; on rows of ``k`` sequences it does, on the same tokens and the
    same number of distinct sequences (the teacher's targets come from its own forward on the
    concatenated row, so they stay exact).  ``n`` must be a multiple of ``k``, and a row must fit
    the model's ``context`` (its position embeddings) when given.
    """
    if k < 1:
        raise OneBitError(f"--concat-sequences must be at least 1, got {k}")
    n = ids.shape[0]
    if n % k:
        raise OneBitError(f"--concat-sequences {k} needs a number of sequences divisible by {k}, got {n}")
    if context and k > 1 and k * ids.shape[1] > context:
        raise OneBitError(f"--concat-sequences {k}: rows of {k} x {ids.shape[1]} tokens exceed the teacher's "
                          f"context of {context} tokens")
    return ids if k == 1 else ids.reshape(n // k, k * ids.shape[1])


def mixed_starts(ids: torch.Tensor, frac: float) -> torch.Tensor:
    """``[n, seqlen − 1]``: a fraction ``frac`` of the sequences (every k-th) without their first token.

    Teacher-generated sequences all begin with the start token, and a student
    trained only on them can come to rely on it: SmolLM2 converted block by
    block on such data scored a mean NLL of 6.1 on WikiText-2 text that
    followed a start token and 23.2 (ppl ~1e10) on the same text without one, as
    perplexity windows are scored.  Dropping the first token of some sequences
    (and the last token of the others, to keep one length) shows the student
    both kinds of start.
    """
    if not 0.0 <= frac <= 1.0:
        raise OneBitError(f"the fraction of sequences without a start token must be in [0, 1], got {frac}")
    if frac == 0.0 or ids.shape[1] < 3:
        return ids
    n = ids.shape[0]
    cut = torch.zeros(n, dtype=torch.bool)
    k = max(1, round(n * frac))
    cut[torch.linspace(0, n - 1, k).round().long()] = True
    return torch.where(cut[:, None], ids[:, 1:], ids[:, :-1]).contiguous()


def repeat_spans(ids: torch.Tensor, frac: float, seed: int = 0, min_len: int = 8,
                 max_len: int = 64) -> torch.Tensor:
    """``ids`` with about ``frac`` of each row's tokens overwritten by copies of earlier spans of that row.

    Text the teacher generates one sequence at a time never repeats itself, while real text
    does (names, terms, phrases), and the teacher predicts a repeat almost exactly: SmolLM2's
    perplexity on the second copy of one of its own 256-token sequences is 1.31, on a different
    sequence 31.7; a 1-bit student trained only on non-repeating text scored 117 and 139
    (``bench/copy_nll.py``, bench/results/blockwise_smollm2/copy_nll_run20.log).  Copied spans (``min_len`` to ``max_len`` tokens, each
    from a random earlier place of the same row, drawn with ``seed``) put the teacher's copying
    targets into the data; the targets stay exact, as the teacher scores the modified rows.
    Rows keep their first ``min_len`` tokens (the start token and the first span's source).
    """
    if not 0.0 <= frac < 1.0:
        raise OneBitError(f"--repeat-frac must be in [0, 1), got {frac}")
    if min_len < 2 or max_len < min_len:
        raise OneBitError(f"repeated spans need 2 <= min_len <= max_len, got {min_len}, {max_len}")
    n, L = ids.shape
    if frac == 0.0 or L < 2 * min_len:
        return ids
    out = ids.clone()
    gen = torch.Generator().manual_seed(seed * 7_919 + 17)
    mean_len = (min_len + max_len) / 2
    for r in range(n):
        pos = min_len
        while True:
            # a gap of fresh text with mean mean_len·(1−frac)/frac, then one copied span
            gap = int(torch.empty(1).exponential_(frac / (mean_len * (1 - frac)), generator=gen).item())
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
            pos += gap
            if pos + length > L:
                break
            src = int(torch.randint(0, pos - length + 1, (1,), generator=gen)) if pos >= length else -1
            if src >= 0:
                out[r, pos:pos + length] = out[r, src:src + length]
            pos += length
    return out
