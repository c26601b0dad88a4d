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
* the next token is picked without leaving torch (argmax, or top-k sampling with a generator);
* for Llama-architecture models (``engine="onebit"``, chosen by ``"auto"``) the forward is
  :class:`LlamaRuntime`, onebit's own: the same modules (packed linears, quantized embedding and
  head), but a batch-1 loop over the layers with about half the small ops and none of
  transformers' per-call machinery (mask building, cache objects, output classes), so the
  matmuls are most of a decode step.  Other models (and ``compile=True``) use transformers'
  forward with a ``StaticCache`` (``engine="hf"``).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from . import kernels  # noqa: F401  (defines torch.ops.onebit.*, decode_attention among them)
from .calibration import cache_kw
from .kernels.dispatch import direct_kernel
from .errors import OneBitError
from .models import context_length

RUNTIMES = ("static", "hf")
ENGINES = ("auto", "onebit", "hf")


class LlamaRuntime:
    """onebit's batch-1 forward of a Llama-architecture causal LM (``model_type`` llama), with its
    own static KV cache (one ``[1, kv_heads, max_len, head_dim]`` pair per layer).

    It calls the model's own modules (so packed linears, quantized embeddings and heads run as
    everywhere) and computes what transformers' Llama computes, in the same order: RMSNorm in
    float32, rotary embedding ``x·cos + rotate_half(x)·sin`` (cos/sin for every position computed
    once by the model's rotary module), attention over the cached positions (SDPA for a prompt,
    ``torch.ops.onebit.decode_attention`` for a decode step), residual adds; logits of the last
    position only."""

    @staticmethod
    def supports(model) -> bool:
        cfg, inner = getattr(model, "config", None), getattr(model, "model", None)
        if cfg is None or getattr(cfg, "model_type", None) != "llama" or inner is None:
            return False
        rope = getattr(getattr(inner, "rotary_emb", None), "rope_type", None)
        return rope in ("default", "linear", "llama3") and hasattr(model, "lm_head") and all(
            hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in inner.layers)

    def __init__(self, model, max_len: int):
        inner, cfg = model.model, model.config
        self.embed, self.norm, self.head = inner.embed_tokens, inner.norm, model.lm_head
        self.layers = list(inner.layers)[: cfg.num_hidden_layers]
        a = self.layers[0].self_attn
        self.hd, self.scaling = a.head_dim, a.scaling
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        w = self.norm.weight
        self.dtype, self.device = w.dtype, w.device
        with torch.no_grad():
            cos, sin = inner.rotary_emb(torch.empty(0, dtype=self.dtype, device=self.device),
                                        torch.arange(max_len, device=self.device)[None])
        half = self.hd // 2
        self.cos = cos[0].contiguous()                                        # [max_len, head_dim]
        self.sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)   # sign of rotate_half folded in
        shape = (1, self.nkv, max_len, self.hd)
        # keys stored transposed, [1, kv_heads, head_dim, max_len]: a decode step's scores are then
        # plain vertical FMAs over positions (torch.ops.onebit.decode_attention)
        # rows of a multiple of 16 positions, never a multiple of 1 KiB apart: head_dim rows 4 KiB
        # apart share cache sets (--max-len 1024 was slower than 545 in a development run of
        # bench/decode_attention.py; docs/kernels.md)
        row = -(-max_len // 16) * 16
        row += 16 if (row * torch.finfo(self.dtype).bits // 8) % 1024 == 0 else 0
        self.kt = [torch.zeros(1, self.nkv, self.hd, row, dtype=self.dtype, device=self.device)
                   for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.max_len, self.pos = max_len, 0
        self.refresh()

    def refresh(self) -> None:
        """The callables of every layer's linears (each module's ``decode_fn()`` where it has one:
        its kernel called directly, without the module call and ``torch.ops``' dispatch)
        and of the decode attention; rebuilt by :meth:`StaticDecoder.reset`, so a model changed
        between generations is seen."""
        def fn(m):
            return m.decode_fn() if hasattr(m, "decode_fn") else m

        self.linears = [tuple(fn(m) for m in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                                               layer.self_attn.v_proj, layer.self_attn.o_proj,
                                               layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj))
                        for layer in self.layers]
        attn = direct_kernel("decode_attention", self.device.type)
        self.attention = attn if attn is not None else torch.ops.onebit.decode_attention

    @staticmethod
    def _rms(mod, x: torch.Tensor) -> torch.Tensor:
        # LlamaRMSNorm's math and order (F.rms_norm measured slower on CPU: it converts dtypes inside)
        if x.dtype == torch.float32:
            return mod.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))
        xf = x.float()
        return mod.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon)).to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) · sin = flip(halves of x) · (-sin₁, sin₂): 3 ops instead of 6
        rot = x.unflatten(-1, (2, self.hd // 2)).flip(-2).flatten(-2)
        return torch.addcmul(x * cos, rot, sin)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` ``[1, n]`` at the next ``n`` positions; the last position's logits."""
        n, p0 = ids.shape[1], self.pos
        end = p0 + n
        cos, sin = self.cos[p0:end], self.sin[p0:end]
        mask = None
        if n > 1 and p0 > 0:      # a chunk after earlier tokens: causal within, all earlier visible
            mask = torch.ones(n, end, dtype=torch.bool, device=ids.device).tril(p0)
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            mlp = layer.mlp
            q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj = self.linears[i]
            x = self._rms(layer.input_layernorm, h)
            q = self._rope(q_proj(x).view(1, n, self.nh, self.hd).transpose(1, 2), cos, sin)
            k = self._rope(k_proj(x).view(1, n, self.nkv, self.hd).transpose(1, 2), cos, sin)
            self.kt[i][:, :, :, p0:end] = k.transpose(-1, -2)
            self.v[i][:, :, p0:end] = v_proj(x).view(1, n, self.nkv, self.hd).transpose(1, 2)
            if n == 1:   # a decode step: onebit's kernel for one query position (grouped heads)
                o = self.attention(q.reshape(self.nh, self.hd), self.kt[i][0, :, :, :end],
                                   self.v[i][0, :, :end], self.scaling)
            else:
                # the keys back in [.., positions, head_dim] order, contiguous: SDPA took ~10% longer
                # over a 512-token prompt with the transposed view
                kc = self.kt[i][..., :end].transpose(-1, -2).contiguous()
                o = F.scaled_dot_product_attention(q, kc, self.v[i][:, :, :end], attn_mask=mask,
                                                   is_causal=mask is None, scale=self.scaling,
                                                   enable_gqa=self.nh != self.nkv).transpose(1, 2)
            h = h + o_proj(o.reshape(1, n, self.nh * self.hd))
            x = self._rms(layer.post_attention_layernorm, h)
            h = h + down_proj(mlp.act_fn(gate_proj(x)) * up_proj(x))
        self.pos = end
        return self.head(self._rms(self.norm, h[:, -1:]))[:, -1]


class StaticDecoder:
    """Batch-1 decoding of ``model`` (a causal LM, packed or not) with a static KV cache of
    ``max_len`` tokens.  ``prefill(ids)`` then ``step(token)`` return the next-token logits
    ``[1, vocab]``; :meth:`generate` runs the whole loop."""

    def __init__(self, model, max_len: int, compile: bool = False, engine: str = "auto"):
        from transformers import StaticCache

        if engine not in ENGINES:
            raise OneBitError(f"engine must be one of {', '.join(ENGINES)}, got '{engine}'")
        if engine == "auto":
            engine = "onebit" if LlamaRuntime.supports(model) and not compile else "hf"
        if engine == "onebit" and not LlamaRuntime.supports(model):
            raise OneBitError(f"onebit's own forward runs Llama-architecture models, not "
                              f"{getattr(model.config, 'model_type', type(model).__name__)}")
        self.engine = engine
        self.model = model.eval()
        p = next(model.parameters(), None)
        b = next(model.buffers(), None)
        self.device = (p if p is not None else b).device
        self.max_len = int(max_len)
        self.rt = LlamaRuntime(model, self.max_len) if engine == "onebit" else None
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len) if self.rt is None else None
        self.cache_kw = cache_kw(model)
        self.pos = 0
        self._forward = model.forward
        if compile:
            self._forward = torch.compile(model.forward, dynamic=False)
        #: seconds spent in the first step (includes the compile time when compile=True)
        self.first_step_s: float | None = None

    def reset(self) -> None:
        if self.cache is not None:
            self.cache.reset()
        if self.rt is not None:
            self.rt.pos = 0
            self.rt.refresh()
        self.pos = 0

    def _run(self, forward, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        if self.pos + n > self.max_len:
            raise OneBitError(f"the static cache holds {self.max_len} tokens, asked for {self.pos + n}")
        if self.rt is not None:
            logits = self.rt.forward(ids)
            self.pos += n
            return logits
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
