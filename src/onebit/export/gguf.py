"""``onebit export``: a packed onebit checkpoint as a GGUF file that stock llama.cpp runs.

What maps exactly (see ``onebit.export.weights``):

=================================  ============================================
method                             llama.cpp type of the linears
=================================  ============================================
onebit --foldable (g folded away)  Q1_0 (rows of 128k), else TQ2_0 / Q2_0
q1_0 (sign + scale per 128)        Q1_0, else Q2_0 (each scale on two blocks)
bitnet                             Q1_0, else TQ2_0 / Q2_0
ternary                            TQ2_0, else Q2_0
rtn / gptq, 4 or 8 bit, sym, g32   Q4_0 / Q8_0
=================================  ============================================

Approximate (``--approximate``): OneBit without ``--foldable`` ties (the mean input scale is
folded), and the richer scales no llama.cpp type holds — rank-k (``onebit-rank``) and mixture of
scales (``onebit-mos``, its router's token-adaptive mixture replaced by the uniform one, the
router's neutral point).  Their effective weight is divided by an input-channel profile (folded
like OneBit's ``g``) and written as signs with one least-squares scale per block of the weight
type (128 for Q1_0): what the block scales cannot follow along a row is the approximation.

OneBit's input scales are folded (``onebit.methods.foldable``): the shared ``g`` of q/k/v into
the attention norm's weight, that of gate/up into the MLP norm's weight, o_proj's into v_proj's
row scales and down_proj's into up_proj's.  llama.cpp's Llama graph wants the q/k rows
permuted for its RoPE layout; the row scales move with their rows.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import OneBitError
from ..formats import gguf_blocks as gb
from ..formats.checkpoint import is_packed_checkpoint
from ..formats.packing import unpack_signs
from ..loading import load_checkpoint
from ..methods.foldable import group_mean, group_spread, kv_groups
from ..models import check_model_spec, gguf_source, load_model
from ..nn.bitnet_linear import BinaryLinear, TernaryLinear
from ..nn.block_sign_linear import BlockSignLinear
from ..nn.mos_linear import MoSLinear
from ..nn.onebit_linear import OneBitLinear
from ..nn.quant_linear import QuantLinear
from ..nn.rank_linear import RankScaleLinear
from . import weights as W
from .padding import HiddenPad
from .spec import EMBED_FALLBACK, EMBED_TYPES, EXPORTABLE, WEIGHT_TYPES
from .summary import ExportSummary
from .tokenizer import add_tokenizer

log = logging.getLogger("onebit")

ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
SIGN_METHODS = ("onebit", "q1_0", "bitnet")
EXPORT_METHODS = ("onebit", "q1_0", "bitnet", "ternary", "rtn", "gptq", "none")
#: methods written only with --approximate (signs + refit block scales), and what they lose there
APPROX_METHODS = {"onebit-rank": "its rank-k scales", "onebit-mos": "its token-adaptive mixture of scales"}
FILE_TYPES = {"q1_0": 40, "q2_0": 41, "tq2_0": 37, "q4_0": 2, "q8_0": 7, "q6_k": 18, "f16": 1, "f32": 0}
LINEARS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}


RICH = (RankScaleLinear, MoSLinear)


@torch.no_grad()
def effective_weight(m) -> torch.Tensor:
    """The dense fp32 weight a rank-k layer computes with; for a mixture of scales, the one of the
    uniform mixture of its experts (its router's neutral point: a zero input)."""
    if isinstance(m, RankScaleLinear):
        return m.dense_weight(torch.float32)
    s = unpack_signs(m.weight_packed, m.in_features, torch.float32)
    return s * (m.h.float().mean(0)[:, None] * m.g.float().mean(0)[None, :])


def group_expand(f: torch.Tensor, reader_in: int, head_dim: int) -> torch.Tensor:
    """v_proj's per-channel factor (one per channel of each KV head) on o_proj's inputs: each
    query head reads its KV head's channels (GQA; the inverse layout of ``group_mean``)."""
    groups = reader_in // f.numel()
    if groups <= 1:
        return f
    return f.reshape(-1, 1, head_dim).expand(-1, groups, head_dim).reshape(-1)


def _np(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(dtype)


def qk_permutation(rows: int, heads: int) -> np.ndarray:
    """Row order llama.cpp's Llama graph expects for q/k (its converter's permute, as an index)."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


class _Exporter:
    def __init__(self, model, weight_type: str, embed_type: str, approximate: bool, pad: str = "auto"):
        self.model, self.cfg = model, model.config
        self.qc = dict(getattr(self.cfg, "quantization_config", None) or {})
        self.method = self.qc.get("method", "none")   # "none": an unquantized model, linears in F16
        self.weight_type, self.embed_type, self.approximate = weight_type, embed_type, approximate
        self._effective: dict[str, torch.Tensor] = {}
        if self.method in APPROX_METHODS and not approximate:
            raise OneBitError(
                f"method '{self.method}' has no exact llama.cpp form ({APPROX_METHODS[self.method]} fit no "
                "llama.cpp type); train the student with --foldable or --method q1_0 to export it exactly "
                "(--approximate writes signs with one scale per block, which ruined trained SmolLM2 "
                "students: docs/export.md)")
        if self.method not in EXPORT_METHODS and self.method not in APPROX_METHODS:
            raise OneBitError(f"method '{self.method}' has no exact llama.cpp form; exportable: "
                              f"{', '.join(EXPORTABLE)} (onebit-rank and onebit-mos with --approximate)")
        if self.qc.get("rotate_online"):
            raise OneBitError("a checkpoint quantized with --rotate-online does not export: its online Hadamard "
                              "on down_proj's input folds into no weight and llama.cpp has no op for it "
                              "(quantize with --rotate alone to export)")
        self.arch = ARCHS.get(self.cfg.model_type)
        if self.arch is None:
            raise OneBitError(f"llama.cpp export supports {', '.join(sorted(ARCHS))} models; this one is "
                              f"'{self.cfg.model_type}'")
        rope = getattr(self.cfg, "rope_parameters", None) or getattr(self.cfg, "rope_scaling", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise OneBitError(f"export of models with rope type '{rope.get('rope_type')}' is not supported yet")
        self.tensors: list[tuple[str, np.ndarray, tuple[int, int] | None, str, int]] = []
        self.notes: list[str] = []
        self.fallbacks: list[str] = []      # embedding types replaced (also in notes; logged)
        self.types_used: dict[str, int] = {}
        if self.method in APPROX_METHODS:
            self.notes.append(f"approximate: {self.method}'s effective weights as signs with one scale per "
                              f"block of {gb.TYPES[weight_type][1]} ({APPROX_METHODS[self.method]} "
                              "approximated" + (", the uniform mixture of its experts" if
                                                self.method == "onebit-mos" else "") + ")")
        d = self.cfg.hidden_size
        want = pad == "on" or (pad == "auto" and weight_type == "q1_0" and self.method in SIGN_METHODS)
        self.hidden = -(-d // 128) * 128 if want and d % 128 else d
        if self.hidden != d:
            self.notes.append(f"hidden size {d} padded with {self.hidden - d} zero channels to {self.hidden} "
                              "(rows of 128 for Q1_0; exact: norms rescaled, rms eps scaled by "
                              f"{d}/{self.hidden}); --no-pad keeps {d} and uses Q2_0 for those rows")
        self.pad = HiddenPad(d, self.hidden)

    # ----------------------------------------------------------------- pieces
    def module(self, name: str):
        return self.model.get_submodule(name)

    def add_dense(self, gname: str, t: torch.Tensor, typ: str) -> None:
        a = _np(t)
        n = a.size
        a = self.pad.dense(gname, a)
        if a.ndim == 2 and typ in EMBED_FALLBACK and not gb.fits(typ, a.shape[1]):
            alt = next(t for t in EMBED_FALLBACK[typ] if t == "f16" or gb.fits(t, a.shape[1]))
            self.fallbacks.append(f"--embed-type {typ}: '{gname}' has rows of {a.shape[1]} weights, not a "
                                  f"multiple of {gb.TYPES[typ][1]}, so it is written as {alt.upper()}")
            self.notes.append(self.fallbacks[-1])
            typ = alt
        if a.ndim == 1 or typ == "f32":
            self.tensors.append((gname, a.astype(np.float32), None, "f32", n))
        elif typ == "f16":
            self.tensors.append((gname, a.astype(np.float16), None, "f16", n))
        else:
            if not gb.fits(typ, a.shape[1]):
                raise OneBitError(f"--embed-type {typ} needs rows of a multiple of {gb.TYPES[typ][1]} "
                                  f"weights; '{gname}' has {a.shape[1]} (choose f16 or q8_0)")
            self.tensors.append((gname, gb.quantize_dense(a, typ), a.shape, typ, n))

    def add_codes(self, gname: str, codes: W.Codes) -> None:
        n = codes.values.size
        codes = self.pad.codes(gname, codes)
        raw, typ = W.encode(codes, self.weight_type)
        self.types_used[typ] = self.types_used.get(typ, 0) + 1
        self.tensors.append((gname, raw, codes.shape, typ, n))

    def codes(self, name: str, rowf: torch.Tensor | None = None, col: torch.Tensor | None = None) -> W.Codes | None:
        """The codes of layer ``name`` (``None``: a plain Linear, written dense).  ``rowf``: the
        reader's input scale folded into this layer's output rows (OneBit: ``h · rowf``); ``col``: the
        folded input profile a rank-k / MoS layer's effective weight is divided by (OneBit's own
        ``g`` folds exactly and is not divided out here)."""
        m = self.module(name)
        if isinstance(m, RICH):
            return self.rich_codes(name, col, rowf)
        if isinstance(m, OneBitLinear):
            if m.layernorm:
                raise OneBitError("OneBit with --layernorm does not export (the LayerNorm on each "
                                  "layer's output has no place in llama.cpp's graph)")
            return W.onebit_codes(m, None if rowf is None else m.h.detach().float() * rowf)
        if isinstance(m, BlockSignLinear):
            return W.block_sign_codes(m)
        if isinstance(m, (BinaryLinear, TernaryLinear)):
            return W.bitnet_codes(m, isinstance(m, TernaryLinear))
        if isinstance(m, QuantLinear):
            return W.uniform_codes(m, name)
        if isinstance(m, torch.nn.Linear):
            return None
        raise OneBitError(f"'{name}' is a {type(m).__name__}, which export cannot write; exportable "
                          f"methods: {', '.join(EXPORTABLE)}")

    # ------------------------------------------------------------------- fold
    def _g(self, name: str):
        m = self.module(name)
        if isinstance(m, RICH):       # the input-channel profile of the effective weight (mean 1)
            col = self.effective(name).pow(2).mean(0).sqrt()
            col = col / col.mean().clamp_min(1e-30)
            return col.clamp_min(1e-6)
        return m.g.detach().float() if hasattr(m, "g") and hasattr(m, "weight_packed") else None

    def effective(self, name: str) -> torch.Tensor:
        """A rank-k / MoS layer's effective weight, computed once per export."""
        if name not in self._effective:
            self._effective[name] = effective_weight(self.module(name))
        return self._effective[name]

    def rich_codes(self, name: str, col: torch.Tensor | None, rowf: torch.Tensor | None) -> W.Codes:
        """A rank-k / MoS layer: its effective weight over the folded input profile ``col`` (times
        the reader's factor ``rowf`` on its rows) as signs with block scales."""
        w = self.effective(name)
        if col is not None:
            w = w / col[None, :]
        if rowf is not None:
            w = w * rowf[:, None]
        return W.dense_sign_codes(w, gb.TYPES[self.weight_type][1])

    def shared_g(self, names: list[str]) -> torch.Tensor | None:
        gs = [self._g(n) for n in names]
        if all(g is None for g in gs):
            return None
        if any(g is None for g in gs):
            raise OneBitError(f"{', '.join(names)} mix OneBit and other layers; their input scales "
                              "cannot fold into the shared norm")
        if all(torch.equal(g, gs[0]) for g in gs[1:]):
            return gs[0]
        if not self.approximate:
            raise OneBitError(
                f"this OneBit checkpoint is not foldable ({' / '.join(n.rsplit('.', 1)[1] for n in names)} "
                f"of '{names[0].rsplit('.', 1)[0]}' have different input scales g), so it has no exact "
                "llama.cpp form; make an exportable one with `onebit quantize MODEL OUT --method onebit "
                "--foldable` or `onebit distill TEACHER OUT --foldable` (or pass --approximate)")
        return torch.stack(gs).mean(0)

    def reader_factor(self, reader: str, producer: str) -> torch.Tensor | None:
        g = self._g(reader)
        if g is None:
            return None
        p = self.module(producer)
        if self._g(producer) is None:
            raise OneBitError(f"'{reader}' is OneBit but '{producer}' is not: its input scale cannot fold")
        groups = kv_groups(self.cfg, g.numel(), p.out_features)
        hd = p.out_features // (getattr(self.cfg, "num_key_value_heads", None) or 1) if groups > 1 else 1
        if groups > 1 and float(group_spread(g, groups, hd)) != 0 and not self.approximate:
            raise OneBitError(f"'{reader}' has input scales that differ between the query heads of a KV "
                              "group, so they cannot fold into v_proj (make the checkpoint with --foldable, "
                              "or pass --approximate)")
        return group_mean(g, groups, hd)

    # ------------------------------------------------------------------ build
    def layer(self, i: int, prefix: str) -> None:
        cfg = self.cfg
        p = f"{prefix}.{i}"
        self._effective.clear()  # one layer's effective weights at a time
        heads = cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        g_attn = self.shared_g([f"{p}.self_attn.{x}_proj" for x in "qkv"])
        g_mlp = self.shared_g([f"{p}.mlp.{x}_proj" for x in ("gate", "up")])
        f_o = self.reader_factor(f"{p}.self_attn.o_proj", f"{p}.self_attn.v_proj")
        f_down = self.reader_factor(f"{p}.mlp.down_proj", f"{p}.mlp.up_proj")
        o_in = self.module(f"{p}.self_attn.o_proj").in_features
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        cols = {f"{p}.self_attn.{x}_proj": g_attn for x in "qkv"}
        cols.update({f"{p}.mlp.gate_proj": g_mlp, f"{p}.mlp.up_proj": g_mlp, f"{p}.mlp.down_proj": f_down,
                     f"{p}.self_attn.o_proj": None if f_o is None else group_expand(f_o, o_in, hd)})
        an = self.module(f"{p}.input_layernorm").weight.detach().float()
        fn = self.module(f"{p}.post_attention_layernorm").weight.detach().float()
        self.add_dense(f"blk.{i}.attn_norm.weight", an * g_attn if g_attn is not None else an, "f32")
        self.add_dense(f"blk.{i}.ffn_norm.weight", fn * g_mlp if g_mlp is not None else fn, "f32")
        scale_h = {f"{p}.self_attn.v_proj": f_o, f"{p}.mlp.up_proj": f_down}
        for hf, gg in LINEARS.items():
            name = f"{p}.{hf}"
            mod = self.module(name)
            c = self.codes(name, scale_h.get(name), cols[name])  # the reader's g folded into the rows
            perm = None
            if self.arch == "llama" and hf in ("self_attn.q_proj", "self_attn.k_proj"):
                perm = qk_permutation(mod.out_features, heads if "q_proj" in hf else kv)
            if c is None:
                w = self.module(name).weight.detach().float()
                self.add_dense(f"blk.{i}.{gg}.weight", w[perm] if perm is not None else w, "f16")
            else:
                self.add_codes(f"blk.{i}.{gg}.weight", c.permute_rows(perm) if perm is not None else c)
            bias = getattr(mod, "bias", None)
            if bias is not None:
                b = bias.detach().float()
                if scale_h.get(name) is not None:
                    b = b * scale_h[name]
                self.add_dense(f"blk.{i}.{gg}.bias", b[perm] if perm is not None else b, "f32")

    def build(self) -> None:
        base = self.model.get_submodule("model")
        n_layers = len(base.layers)
        self.add_dense("token_embd.weight", base.embed_tokens.weight, self.embed_type)
        for i in range(n_layers):
            self.layer(i, "model.layers")
        self.add_dense("output_norm.weight", base.norm.weight, "f32")
        head = self.model.get_submodule("lm_head")
        tied = head.weight is base.embed_tokens.weight or getattr(self.cfg, "tie_word_embeddings", False)
        if not tied:
            c = self.codes("lm_head")
            if c is None:
                self.add_dense("output.weight", head.weight, self.embed_type)
            else:
                self.add_codes("output.weight", c)
        acts = self.qc.get("act_bits") or 0
        if acts:
            self.notes.append(f"{self.method} quantizes activations to {acts} bits per token in onebit; "
                              "llama.cpp quantizes them in its own 8-bit blocks inside the dot products")

    def metadata(self, writer, name: str) -> None:
        cfg = self.cfg
        heads = cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        writer.add_name(name)
        writer.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
        writer.add_embedding_length(self.hidden)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or heads)
        writer.add_rope_dimension_count(hd)
        writer.add_key_length(hd)
        writer.add_value_length(hd)
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps) * cfg.hidden_size / self.hidden)
        theta = getattr(cfg, "rope_theta", None)
        if theta is None:
            theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        writer.add_rope_freq_base(float(theta))
        writer.add_vocab_size(cfg.vocab_size)
        main = max(self.types_used, key=self.types_used.get) if self.types_used else "f16"
        writer.add_file_type(FILE_TYPES[main])
        writer.add_string("onebit.method", self.method)


def export_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, weight_type: str = "q1_0",
                embed_type: str = "f16", overwrite: bool = False, approximate: bool = False,
                pad: str = "auto") -> ExportSummary:
    """Write ``checkpoint`` (a packed onebit checkpoint; an unquantized Hugging Face directory
    gives F16 linears) to ``out`` as a GGUF llama.cpp runs."""
    import gguf

    if weight_type not in WEIGHT_TYPES:
        raise OneBitError(f"unknown --weight-type '{weight_type}'; choose one of {', '.join(WEIGHT_TYPES)}")
    if embed_type not in EMBED_TYPES:
        raise OneBitError(f"unknown --embed-type '{embed_type}'; choose one of {', '.join(EMBED_TYPES)}")

    ckpt, out = Path(checkpoint).expanduser(), Path(out).expanduser()
    if not ckpt.exists():
        raise OneBitError(f"checkpoint '{checkpoint}' does not exist")
    check_model_spec(str(ckpt))
    if out.exists() and not overwrite:
        raise OneBitError(f"output '{out}' exists; pass --overwrite (overwrite=True) to replace it")
    if out.exists() and out.is_dir():
        raise OneBitError(f"output '{out}' is a directory")
    packed = ckpt.is_dir() and is_packed_checkpoint(ckpt)
    # an unquantized model (HF directory or GGUF) exports too, its linears in F16: the baseline
    model = load_checkpoint(ckpt) if packed else load_model(str(ckpt), dtype=torch.float32)
    if getattr(model.config, "onebit_adapters", None):
        raise OneBitError(f"'{checkpoint}' has LoRA adapters (onebit finetune), which llama.cpp's 1-bit "
                          "types cannot hold; export the checkpoint they were trained on")
    tok_dir = ckpt if ckpt.is_dir() else None
    if not packed and gguf_source(str(ckpt)) is not None:
        raise OneBitError(f"'{checkpoint}' is already a GGUF file; quantize it first "
                          "(`onebit quantize` / `onebit distill`), then export the checkpoint")
    if pad not in ("auto", "on", "off"):
        raise OneBitError(f"pad must be auto, on or off, got '{pad}'")
    ex = _Exporter(model, weight_type, embed_type, approximate, pad)
    ex.build()
    if pad == "auto" and ex.hidden != model.config.hidden_size:   # keep the padding only if it pays
        alt = _Exporter(model, weight_type, embed_type, approximate, "off")
        alt.build()
        size = lambda e: sum(int(t[1].nbytes) for t in e.tensors)  # noqa: E731
        if size(alt) <= size(ex):
            alt.notes.append(f"hidden size not padded: padding to {ex.hidden} would make the file larger "
                             f"({size(ex) / 2**20:.2f} vs {size(alt) / 2**20:.2f} MiB); --pad forces it")
            ex = alt
    for msg in ex.fallbacks:
        log.warning("%s", msg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        writer = gguf.GGUFWriter(str(tmp), ex.arch)
        ex.metadata(writer, ckpt.name)
        add_tokenizer(writer, tok_dir, model.config.vocab_size,
                      pre=getattr(model.config, "onebit_gguf_tokenizer_pre", None))
        summary = ExportSummary(str(out), notes=ex.notes)
        for gname, arr, shape, typ, n_orig in ex.tensors:
            if shape is None:
                writer.add_tensor(gname, arr)
                shp = arr.shape
            else:
                writer.add_tensor(gname, np.ascontiguousarray(arr).view(np.int8), raw_shape=shape,
                                  raw_dtype=gb.TYPES[typ][0])
                shp = shape
            summary.tensors.append((gname, typ, tuple(shp), int(arr.nbytes), int(n_orig)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    log.info("wrote %s", out)
    return summary


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u
