"""Text generation from a (packed or fp) model through transformers' ``generate``."""
from __future__ import annotations

import torch

from .errors import OneBitError
from .models import context_length


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8,
                  top_k: int = 50, seed: int = 0, kv_cache=None) -> str:
    """``kv_cache``: a :class:`onebit.kvcache.KVQuantConfig` (int8 / int4 keys and values), None:
    transformers' float cache."""
    if max_new_tokens < 1:
        raise OneBitError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise OneBitError(f"--temperature must be >= 0, got {temperature}")
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    ctx = context_length(model, cap=1 << 30)
    if ids.shape[1] >= ctx:
        raise OneBitError(f"prompt is {ids.shape[1]} tokens, the model's context is {ctx}")
    max_new_tokens = min(max_new_tokens, ctx - ids.shape[1])
    torch.manual_seed(seed)
    kw = dict(do_sample=True, temperature=temperature, top_k=top_k) if temperature > 0 \
        else dict(do_sample=False)
    if kv_cache is not None:
        from .kvcache import cache_kwarg, make_cache

        cache = make_cache(kv_cache)
        if cache is not None:
            kw[cache_kwarg(model)] = cache
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                         else tokenizer.eos_token_id, **kw)
    return tokenizer.decode(out[0], skip_special_tokens=True)
