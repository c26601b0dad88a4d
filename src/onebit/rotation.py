"""Rotate a Llama-family model's residual stream (QuaRot / SpinQuant style), exactly, in place.

``rotate_model(model, seed)`` changes the weights, never the function (the logits agree to float
rounding); a quantization method then sees weights whose outlier columns are spread out.  Steps:

1. fold every RMSNorm's weight into the linears that read it (q/k/v read ``input_layernorm``,
   gate/up read ``post_attention_layernorm``, the head reads the final ``norm``), and set the
   norm's weight to 1: ``RMSNorm(x Q) = RMSNorm(x) Q`` for an orthogonal ``Q`` only then;
2. with ``Q`` = :func:`onebit.methods.hadamard.randomized_hadamard` (hidden size, ``seed``):
   embedding rows ``E ← E Q``; the residual readers (q/k/v/gate/up, the head) ``W ← W Q``; its
   writers (o_proj, down_proj) ``W ← Qᵀ W`` (and a bias ``b ← b Q``);
3. per head (``H`` = randomized Hadamard of ``head_dim``, ``seed + 1``): v_proj's output heads
   ``W_j ← Hᵀ W_j``, o_proj's input heads ``W ← W blockdiag(H)``.  Attention mixes the positions
   of each value channel linearly, so each head's output is rotated by the same ``H`` and o_proj
   undoes it (with GQA the query heads of a KV group share that KV head's ``H``: it is one ``H``).

A tied head cannot stay tied: the embedding becomes ``E Q`` but the head ``E diag(w) Q`` (``w``,
the final norm's weight), so the head is untied (``config.tie_word_embeddings = False``; one more
``vocab × hidden`` table in the checkpoint, unless every ``w`` is 1).  Everything is folded into
weights: a rotated checkpoint loads, runs and exports to llama.cpp like any other, with no online
transform.

``online=True`` (``rotate_online``) adds QuaRot's online rotation of each down_proj's input: with
``Q`` the randomized Hadamard of the intermediate size (``seed + 2``), the weight takes ``W ← W Q``
before quantizing and at run time the input ``x`` (``act(gate) ⊙ up``) becomes ``x Q``
(:class:`OnlineHadamard`, the fast transform; a forward pre-hook on down_proj, installed by
:func:`install_online` alone, which the loaders call again from ``quantization_config``).  That
transform sits between a nonlinearity and down_proj, so it folds into no weight and llama.cpp has
no op for it: such a checkpoint does not export.

Supported: ``*ForCausalLM`` with ``model.embed_tokens``, ``model.layers[i]``
(``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm``,
``mlp.{gate,up,down}_proj``), ``model.norm`` and ``lm_head``, RMSNorms with a plain weight
(Llama, Mistral, Qwen2, Qwen3, SmolLM2, the stories models); anything else is a one-line error.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from .errors import OneBitError
from .methods import hadamard as hd

#: RMSNorms that compute ``(1 + w) ⊙ x̂`` (the weight does not fold as ``W diag(w)``)
UNSUPPORTED_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")
READ_ATTN = ("q_proj", "k_proj", "v_proj")
READ_MLP = ("gate_proj", "up_proj")
#: the online rotation's seed is ``rotate_seed + ONLINE_SEED_OFFSET`` (``+ 1`` is the per-head one)
ONLINE_SEED_OFFSET = 2
#: the MLP submodule holding the online rotation (no tensors in the state dict)
ONLINE_NAME = "down_proj_rotation"
#: methods that fold down_proj's input scales into up_proj's rows: the online rotation sits between
NO_ONLINE_METHODS = ("awq", "smoothquant")


def rotation_settings(config: Any) -> tuple[bool, int]:
    """``(rotate, seed)`` of a method config or a ``quantization_config`` dict (absent: no rotation)."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    rotate, seed = get("rotate", False), get("rotate_seed", 0)
    if not isinstance(rotate, bool):
        raise OneBitError(f"rotate must be true or false, got {rotate!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise OneBitError(f"rotate_seed must be an integer >= 0, got {seed!r}")
    return rotate, seed


def online_setting(config: Any) -> bool:
    """``rotate_online`` of a method config or a ``quantization_config`` dict (absent: False);
    it needs ``rotate``, and no method that folds down_proj's input scales into up_proj."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    online = get("rotate_online", False)
    if not isinstance(online, bool):
        raise OneBitError(f"rotate_online must be true or false, got {online!r}")
    if online and not get("rotate", False):
        raise OneBitError("--rotate-online (rotate_online) needs --rotate (rotate=True)")
    if online and get("method", None) in NO_ONLINE_METHODS:
        raise OneBitError(f"--rotate-online does not work with {get('method')} (it folds down_proj's input "
                          "scales into up_proj, across the online rotation)")
    return online


def _linear(mod: nn.Module, name: str) -> nn.Linear:
    if type(mod) is not nn.Linear:
        raise OneBitError(f"--rotate: '{name}' is a {type(mod).__name__}, not an unquantized nn.Linear "
                          "(rotate the full-precision model, before quantizing)")
    return mod


def _norm(mod: nn.Module, name: str) -> nn.Module:
    w = getattr(mod, "weight", None)
    if not type(mod).__name__.endswith("RMSNorm") or not isinstance(w, torch.Tensor) or w.dim() != 1 \
            or getattr(mod, "bias", None) is not None:
        raise OneBitError(f"--rotate: '{name}' is a {type(mod).__name__}, not an RMSNorm with a weight")
    return mod


def _parts(model: nn.Module) -> tuple[nn.Embedding, list, nn.Module, nn.Linear]:
    """``(embedding, layers, final norm, head)``, checked (one-line error otherwise)."""
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype in UNSUPPORTED_TYPES:
        raise OneBitError(f"--rotate does not support model type '{mtype}' (its norms scale by 1 + weight)")
    base = getattr(model, "model", None)
    emb, layers = getattr(base, "embed_tokens", None), getattr(base, "layers", None)
    norm, head = getattr(base, "norm", None), getattr(model, "lm_head", None)
    if not isinstance(emb, nn.Embedding) or layers is None or norm is None or head is None:
        raise OneBitError(f"--rotate supports Llama-family models (model.embed_tokens, model.layers, "
                          f"model.norm, lm_head); {type(model).__name__} is not one")
    _norm(norm, "model.norm")
    _linear(head, "lm_head")
    for i, layer in enumerate(layers):
        p = f"model.layers.{i}"
        try:
            attn, mlp = layer.self_attn, layer.mlp
            _norm(layer.input_layernorm, f"{p}.input_layernorm")
            _norm(layer.post_attention_layernorm, f"{p}.post_attention_layernorm")
            for n in READ_ATTN + ("o_proj",):
                _linear(getattr(attn, n), f"{p}.self_attn.{n}")
            for n in READ_MLP + ("down_proj",):
                _linear(getattr(mlp, n), f"{p}.mlp.{n}")
        except AttributeError as e:
            raise OneBitError(f"--rotate supports Llama-family decoder layers; '{p}' has no {e.name!r}")
        if hasattr(layer, "pre_feedforward_layernorm") or hasattr(layer, "post_feedforward_layernorm"):
            raise OneBitError(f"--rotate: '{p}' has extra norms on the residual branches (not a Llama layer)")
    return emb, list(layers), norm, head


def _set(param: nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value)


def _fold_norm(norm: nn.Module, readers: list[nn.Linear]) -> None:
    w = norm.weight.detach()
    for lin in readers:
        _set(lin.weight, hd.fold_scale(lin.weight.detach(), w))
    _set(norm.weight, torch.ones_like(w))


def head_dim(config) -> int:
    hdim = getattr(config, "head_dim", None)
    return int(hdim) if hdim else config.hidden_size // config.num_attention_heads


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0, heads: bool = True, online: bool = False) -> nn.Module:
    """Rotate ``model`` in place (see the module docstring) and return it; ``heads``: also the
    per-head v/o rotation; ``online``: also down_proj's input, at run time.  A model already rotated
    with the same settings is left as it is (marked by ``model._onebit_rotation``, ``(seed, heads,
    online)``); other settings are an error."""
    done = getattr(model, "_onebit_rotation", None)
    if done is not None:
        if done != (seed, heads, online):
            raise OneBitError(f"model is already rotated with seed {done[0]} (online: {done[2]}); cannot "
                              f"rotate it with seed {seed} (online: {online})")
        return model
    emb, layers, final_norm, head = _parts(model)
    n = emb.weight.shape[1]
    q = hd.randomized_hadamard(n, seed)
    h = hd.randomized_hadamard(head_dim(model.config), seed + 1) if heads else None

    # the head first: untie it from the embedding (its own copy of E, with the final norm folded in)
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
        for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
            cfg.tie_word_embeddings = False
        _drop_tied_keys(model)
    _fold_norm(final_norm, [head])
    _set(head.weight, hd.rotate_input(head.weight.detach(), q))
    _set(emb.weight, hd.rotate_input(emb.weight.detach(), q))

    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        _fold_norm(layer.input_layernorm, [getattr(attn, x) for x in READ_ATTN])
        _fold_norm(layer.post_attention_layernorm, [getattr(mlp, x) for x in READ_MLP])
        for lin in [getattr(attn, x) for x in READ_ATTN] + [getattr(mlp, x) for x in READ_MLP]:
            _set(lin.weight, hd.rotate_input(lin.weight.detach(), q))
        for lin in (attn.o_proj, mlp.down_proj):
            _set(lin.weight, hd.rotate_output(lin.weight.detach(), q))
            if lin.bias is not None:
                _set(lin.bias, hd.rotate_bias(lin.bias.detach(), q))
        if h is not None:
            _set(attn.v_proj.weight, hd.rotate_head_outputs(attn.v_proj.weight.detach(), h))
            if attn.v_proj.bias is not None:
                _set(attn.v_proj.bias, hd.rotate_head_outputs(attn.v_proj.bias.detach(), h))
            _set(attn.o_proj.weight, hd.rotate_head_inputs(attn.o_proj.weight.detach(), h))
    if online:
        for layer in layers:
            down = layer.mlp.down_proj
            signs, r = hd.randomized_hadamard_parts(down.in_features, seed + ONLINE_SEED_OFFSET)
            _set(down.weight, hd.apply_randomized_hadamard(down.weight.detach(), signs, r))  # W Q
        install_online(model, seed)
    model._onebit_rotation = (seed, heads, online)
    return model


class OnlineHadamard(nn.Module):
    """``x ↦ x Q`` on the last dimension, ``Q`` the randomized Hadamard ``(n, seed)``, by the fast
    transform.  ``Q``'s parts (``n`` signs, an ``m×m`` ``R``) are plain attributes rebuilt from the
    seed: nothing in the state dict, and ``.half()`` does not round them."""

    def __init__(self, n: int, seed: int):
        super().__init__()
        self.n, self.seed = n, seed
        self.signs, self.r = hd.randomized_hadamard_parts(n, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.signs.device != x.device:
            self.signs, self.r = self.signs.to(x.device), self.r.to(x.device)
        return hd.apply_randomized_hadamard(x, self.signs, self.r)

    def extra_repr(self) -> str:
        return f"n={self.n}, seed={self.seed}"


def _rotate_down_input(rot: OnlineHadamard, module: nn.Module, args: tuple) -> tuple:
    return (rot(args[0]), *args[1:])


def _hook_down(rot: OnlineHadamard, mlp: nn.Module, *_) -> None:
    """Give the module now at ``mlp.down_proj`` the rotation pre-hook, first of its pre-hooks (a
    quantizer's swap replaces the module; the MLP's own pre-hook calls this again on each forward)."""
    down = mlp.down_proj
    if not any(isinstance(h, functools.partial) and h.func is _rotate_down_input and h.args[0] is rot
               for h in down._forward_pre_hooks.values()):
        down.register_forward_pre_hook(functools.partial(_rotate_down_input, rot), prepend=True)


def install_online(model: nn.Module, seed: int) -> nn.Module:
    """Install the online rotation of each down_proj's input (the one place that does): an
    :class:`OnlineHadamard` at ``mlp.down_proj_rotation`` applied by a pre-hook on down_proj, which
    a pre-hook on the MLP re-attaches to whatever module down_proj is (quantized, loaded).
    Idempotent; the weights are not touched (:func:`rotate_model` folds ``W Q`` once)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise OneBitError(f"--rotate-online supports Llama-family models; {type(model).__name__} is not one")
    n_default = getattr(model.config, "intermediate_size", None)
    for layer in layers:
        mlp = layer.mlp
        rot = getattr(mlp, ONLINE_NAME, None)
        if rot is None:
            n = getattr(mlp.down_proj, "in_features", None) or n_default
            rot = OnlineHadamard(int(n), seed + ONLINE_SEED_OFFSET)
            mlp.add_module(ONLINE_NAME, rot)
            mlp.register_forward_pre_hook(functools.partial(_hook_down, rot))
        _hook_down(rot, mlp)
    return model


def install_online_like(model: nn.Module, qc: Any) -> nn.Module:
    """Re-install the online rotation a loaded checkpoint's ``quantization_config`` records (its
    weights already hold ``W Q``); a no-op without ``rotate_online``."""
    if qc and online_setting(qc):
        install_online(model, rotation_settings(qc)[1])
    return model


def _drop_tied_keys(model: nn.Module) -> None:
    """Forget transformers' head↔embedding tie, so ``tie_weights()`` (at load) does not re-tie."""
    for sub in model.modules():
        keys = getattr(sub, "_tied_weights_keys", None)
        if isinstance(keys, dict):
            sub._tied_weights_keys = {k: v for k, v in keys.items() if "lm_head" not in k and "lm_head" not in v}
        elif isinstance(keys, (list, tuple)):
            sub._tied_weights_keys = [k for k in keys if "lm_head" not in k]
        if hasattr(sub, "all_tied_weights_keys") and isinstance(sub.all_tied_weights_keys, dict):
            sub.all_tied_weights_keys = {k: v for k, v in sub.all_tied_weights_keys.items()
                                         if "lm_head" not in k and "lm_head" not in v}


def rotate_like(model: nn.Module, config: Any) -> nn.Module:
    """Rotate ``model`` as a method config or ``quantization_config`` asks (``rotate``,
    ``rotate_seed``, ``rotate_online``); a no-op without ``rotate``.  The distillation teacher goes through this, so
    its hidden states are in the student's rotated basis."""
    rotate, seed = rotation_settings(config)
    online = online_setting(config)
    return rotate_model(model, seed, online=online) if rotate else model
