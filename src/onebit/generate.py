"""Text generation from a (packed or fp) model: onebit's own decode loop with a static KV cache
(:class:`StaticDecoder`, the default of ``onebit generate``), or transformers' ``generate`` (a
quantized KV cache, or ``runtime="hf"``).

The static loop, for batch 1:

* the KV cache is transformers' ``StaticCache``, allocated once for the prompt plus the new tokens;
* the prefill computes the logits of the last position only (``logits_to_keep=1``: a 32000-token
  head over a 512-token prompt would otherwise cost as much as a quarter of the prefill);
* every decode step has the same shapes (one token, its position as a tensor, the fixed cache), so
  ``compile=True`` can ``torch.compile`` the step once (it pays only when the run is long enough
  to repay the compile time: ``bench/gguf_speed.py --compile`` measures it);
* the next token is picked without leaving torch (argmax, or top-k sampling with a generator).
"""
from __future__ import annotations

import time

import torch

from .calibration import cache_kw
from .errors import OneBitError
from .models import context_length

RUNTIMES = ("static", "hf")


class StaticDecoder:
    """Batch-1 decoding of ``model`` (a causal LM, packed or not) with a static KV cache of
    ``max_len`` tokens.  ``prefill(ids)`` then ``step(token)`` return the next-token logits
    ``[1, vocab]``; :meth:`generate` runs the whole loop."""

    def __init__(self, model, max_len: int, compile: bool = False):
        from transformers import StaticCache

        self.model = model.eval()
        p = next(model.parameters(), None)
        b = next(model.buffers(), None)
        self.device = (p if p is not None else b).device
        self.max_len = int(max_len)
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        self.cache_kw = cache_kw(model)
        self.pos = 0
        self._forward = model.forward
        if compile:
            self._forward = torch.compile(model.forward, dynamic=False)
        #: seconds spent in the first step (includes the compile time when compile=True)
        self.first_step_s: float | None = None

    def reset(self) -> None:
        self.cache.reset()
        self.pos = 0

    def _run(self, forward, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if self.pos + n > self.max_len:
            raise OneBitError(f"the static cache holds {self.max_len} tokens, asked for {self.pos + n}")
        pos = torch.arange(self.pos, self.pos + n, device=self.device).unsqueeze(0)
        out = forward(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1,
                      **{self.cache_kw: self.cache})
        self.pos += n
        return out.logits[:, -1]

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt ``ids`` ``[1, n]`` (resets the cache); the last position's logits."""
        self.reset()
        return self._run(self.model.forward, ids.to(self.device))

    @torch.inference_mode()
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """One single-token step (``token`` ``[1, 1]``); its logits ``[1, vocab]``."""
        if self.first_step_s is None:
            t = time.perf_counter()
            logits = self._run(self._forward, token)
            self.first_step_s = time.perf_counter() - t
            return logits
        return self._run(self._forward, token)

    @torch.inference_mode()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 eos_token_id: int | None = None, seed: int = 0) -> torch.Tensor:
        """The prompt followed by up to ``max_new_tokens`` tokens (``[1, n + new]``); greedy when
        ``temperature`` is 0, else top-k sampling (``top_k`` 0: the whole vocabulary)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        logits = self.prefill(ids)
        out = [ids.to(self.device)]
        for i in range(max_new_tokens):
            tok = pick(logits, temperature, top_k, gen)
            out.append(tok)
            if eos_token_id is not None and int(tok) == eos_token_id:
                break
            if i + 1 < max_new_tokens:
                logits = self.step(tok)
        return torch.cat(out, dim=1)


def pick(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> torch.Tensor:
    """The next token ``[1, 1]`` from ``logits`` ``[1, vocab]``: argmax, or a top-k sample."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        vals, idx = logits.topk(top_k, dim=-1)
        return idx.gather(-1, torch.multinomial(vals.softmax(-1), 1, generator=gen))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
                  top_k: int = 50, seed: int = 0, kv_cache=None, runtime: str = "static",
                  compile: bool = False) -> str:
    """``kv_cache``: a :class:`onebit.kvcache.KVQuantConfig` (int8 / int4 keys and values; runs
    transformers' ``generate``), None: a float cache.  ``runtime``: 'static' (:class:`StaticDecoder`,
    ``compile``: torch.compile its step) or 'hf' (transformers' ``generate``)."""
    if max_new_tokens < 1:
        raise OneBitError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise OneBitError(f"--temperature must be >= 0, got {temperature}")
    if runtime not in RUNTIMES:
        raise OneBitError(f"--runtime must be one of {', '.join(RUNTIMES)}, got '{runtime}'")
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    ctx = context_length(model, cap=1 << 30)
    if ids.shape[1] >= ctx:
        raise OneBitError(f"prompt is {ids.shape[1]} tokens, the model's context is {ctx}")
    max_new_tokens = min(max_new_tokens, ctx - ids.shape[1])
    cache = None
    if kv_cache is not None:
        from .kvcache import make_cache

        cache = make_cache(kv_cache)
    if runtime == "static" and cache is None:
        dec = StaticDecoder(model, ids.shape[1] + max_new_tokens, compile=compile)
        out = dec.generate(ids, max_new_tokens, temperature, top_k, tokenizer.eos_token_id, seed)
        return tokenizer.decode(out[0], skip_special_tokens=True)
    torch.manual_seed(seed)
    kw = dict(do_sample=True, temperature=temperature, top_k=top_k) if temperature > 0 \
        else dict(do_sample=False)
    if cache is not None:
        kw[cache_kw(model)] = cache
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                         else tokenizer.eos_token_id, **kw)
    return tokenizer.decode(out[0], skip_special_tokens=True)
