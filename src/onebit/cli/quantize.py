"""``onebit quantize MODEL OUT --method onebit``: quantize and write a packed checkpoint."""
from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger("onebit")


def register(sub) -> None:
    from .common import add_dtype_arg
    from .main import add_common

    p = sub.add_parser(
        "quantize", help="quantize a model and write a packed checkpoint",
        description="Load a Hugging Face causal LM (hub id or local directory), replace every linear "
        "layer except embeddings and lm_head with the chosen method's layer, and write a packed "
        "safetensors checkpoint to OUT (written to a temporary directory, then renamed).")
    p.add_argument("model", metavar="MODEL", help="hub id or local model directory")
    p.add_argument("out", metavar="OUT", help="output directory for the packed checkpoint")
    p.add_argument("--method", default="onebit",
                   help="quantization method: onebit, onebit-w1a8, bitnet, ternary, rtn, gptq, awq, nf4, "
                   "llm-int8 (default: %(default)s)")
    p.add_argument("--init", default="svd", choices=["svd", "nmf"],
                   help="OneBit: SVID factorisation of |W| (default: %(default)s)")
    p.add_argument("--layernorm", action=argparse.BooleanOptionalAction, default=False,
                   help="OneBit: non-affine LayerNorm on each layer's output (default: off; "
                   "docs/methods.md has the measurement behind the default)")
    p.add_argument("--scale-dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                   help="OneBit: storage dtype of the g/h value vectors (default: %(default)s)")
    p.add_argument("--foldable", action="store_true", default=None,
                   help="OneBit: tie the input scales (one g for q/k/v, one for gate/up, o/down's in "
                   "v/up's h) so `onebit export` writes llama.cpp's Q1_0 exactly")
    add_method_args(p)
    add_embed_args(p)
    p.add_argument("--skip", action="append", default=None, metavar="NAME",
                   help="module name (or glob) to keep in full precision; repeatable "
                   "(default: lm_head)")
    add_dtype_arg(p)
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                   help="quantize a local safetensors checkpoint one tensor at a time (read, quantize, "
                   "write, free: peak memory ~ one layer), output sharded like the input; default: on "
                   "for checkpoints of 2 GiB or more when the method needs no calibration")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_common(p)
    p.set_defaults(func=run)


def add_method_args(p) -> None:
    """Flags of the rtn/gptq/bitnet/ternary/onebit-w1a8 methods (names match config fields)."""
    from ..config import ACT_BITS, ACT_MODES, CLIP_MODES, OBSERVERS  # torch-free: --help stays fast

    g = p.add_argument_group("rtn / gptq", "uniform n-bit weights (see docs/methods.md)")
    g.add_argument("--bits", type=int, default=None, help="weight bits, 2-8 (default 4)")
    g.add_argument("--group-size", type=int, default=None, metavar="N",
                   help="N > 0: one scale per N input columns; 0: per output channel (default); "
                   "-1: one scale per tensor")
    g.add_argument("--sym", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric grid, no zero point (default) / --no-sym: asymmetric with zero point")
    g.add_argument("--asym", dest="sym", action="store_false", default=None, help="same as --no-sym")
    g.add_argument("--clip", choices=CLIP_MODES, default=None,
                   help="range per group: min-max (default) or the MSE-optimal clip ratio")
    g.add_argument("--damp", type=float, default=None, help="gptq: Hessian damping (default 0.01)")
    g.add_argument("--block-size", type=int, default=None, help="gptq: lazy-update block (default 128)")
    g.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="gptq: quantize columns by decreasing Hessian diagonal")
    g.add_argument("--static-groups", action=argparse.BooleanOptionalAction, default=None,
                   help="gptq: group scales fixed from the unmodified weights")
    g.add_argument("--awq-grid", dest="n_grid", type=int, default=None, help="awq: alpha grid size (20)")
    g.add_argument("--awq-alpha", dest="alpha", type=float, default=None,
                   help="awq: a fixed alpha in [0, 1] instead of the search (0 = rtn)")
    g.add_argument("--int8-threshold", dest="threshold", type=float, default=None,
                   help="llm-int8: input features with calibration max|x| above it stay fp16 (6.0; inf: none)")
    a = p.add_argument_group("activations and calibration")
    a.add_argument("--act-bits", type=int, choices=ACT_BITS, default=None,
                   help="activation bits (0 = float; bitnet/ternary/onebit-w1a8 default 8, others 0)")
    a.add_argument("--act-mode", choices=ACT_MODES, default=None,
                   help="dynamic: absmax per token at run time (default); static: calibrated scale")
    a.add_argument("--act-observer", choices=OBSERVERS, default=None,
                   help="static scales: minmax (default), ema or percentile")
    a.add_argument("--act-percentile", type=float, default=None, help="percentile observer (99.9)")
    a.add_argument("--calib-samples", type=int, default=None, help="calibration sequences (128)")
    a.add_argument("--calib-seqlen", type=int, default=None, help="calibration tokens per sequence (256)")
    a.add_argument("--calib-seed", type=int, default=None, help="calibration data seed (0)")
    a.add_argument("--calib-file", default=None, metavar="FILE",
                   help="calibrate on this training text (.txt/.jsonl) instead of teacher-generated "
                   "text; evaluation files are refused")


def add_embed_args(p) -> None:
    from ..config import EMBED_KINDS  # torch-free: --help stays fast

    e = p.add_argument_group("embeddings", "the token embedding and the head (tied: one table for both)")
    e.add_argument("--embed-quant", choices=EMBED_KINDS, default="none",
                   help="none: model dtype (default); int8 / int4: groups with an fp16 scale (llama.cpp "
                   "Q8_0 / Q4_0 rounding, 8.5 / 4.5 bits); int2: 2.5 bits (onebit only); q1: sign + "
                   "mean |w| per block of 128 (Q1_0, 1.125 bits)")
    e.add_argument("--embed-group", type=int, default=None, metavar="N",
                   help="weights per scale along a row (default 32; q1: 128)")
    e.add_argument("--embed-head", action=argparse.BooleanOptionalAction, default=True,
                   help="also quantize an untied lm_head the same way (default: on; a tied head "
                   "always uses the embedding's table)")


def build_embed_config(args):
    from ..embeddings import EmbedQuantConfig

    if getattr(args, "embed_group", None) is not None and getattr(args, "embed_quant", "none") == "none":
        from ..errors import OneBitError

        raise OneBitError("--embed-group needs --embed-quant int8|int4|int2|q1")
    cfg = EmbedQuantConfig(getattr(args, "embed_quant", "none"), getattr(args, "embed_group", None),
                           getattr(args, "embed_head", True))
    cfg.validate()
    return cfg


def build_config(args):
    """The method's config from CLI flags (methods may add flags of their own)."""
    from ..errors import OneBitError
    from ..registry import get_handler_cls

    cls = get_handler_cls(args.method).config_cls
    kwargs = {}
    import dataclasses

    for key in (f.name for f in dataclasses.fields(cls)):
        if key == "skip":
            continue
        if hasattr(args, key) and getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    cfg = cls(**kwargs)
    if args.skip:
        cfg.skip = list(args.skip)
    try:
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise OneBitError(str(e))
    return cfg


def run(args) -> int:
    from ..api import quantize
    from ..config import parse_dtype
    from ..errors import OneBitError
    from ..formats.checkpoint import prepare_output_dir, save_checkpoint
    from ..models import check_model_spec, load_model, load_tokenizer
    from .common import progress_enabled

    cfg = build_config(args)                       # bad method/flags fail before any loading
    embed = build_embed_config(args)
    check_model_spec(args.model)
    prepare_output_dir(args.out, args.overwrite)   # OUT exists without --overwrite: fail early
    from ..formats.streaming import should_stream

    stream = should_stream(args.model, cfg, getattr(args, "streaming", None))
    if stream and embed.kind != "none":
        if getattr(args, "streaming", None):
            raise OneBitError("--embed-quant is not supported with --streaming yet; pass --no-streaming")
        log.warning("--embed-quant: quantizing in memory (the streaming path keeps embeddings as they are)")
        stream = False
    if stream:
        return run_streaming(args, cfg)
    t0 = time.perf_counter()
    model = load_model(args.model, dtype=parse_dtype(args.dtype))
    try:
        tok = load_tokenizer(args.model)
    except OneBitError as e:  # a checkpoint without a tokenizer is still worth quantizing
        log.warning("%s; the checkpoint will have no tokenizer", e)
        tok = None
    log.info("loaded %s (%s) in %.1fs", args.model, type(model).__name__, time.perf_counter() - t0)
    t1 = time.perf_counter()
    from ..registry import get_handler

    extra = {"tokenizer": tok} if get_handler(cfg).needs_calibration else {}
    quantize(model, cfg, progress=progress_enabled(args), embed=embed, **extra)
    tq = time.perf_counter() - t1
    ledger = save_checkpoint(model, args.out, tokenizer=tok, source=args.model, overwrite=args.overwrite)
    s = ledger.summary()
    print(f"quantized {args.model} with {cfg.method} in {tq:.1f}s -> {args.out}")
    print(f"{s['quantized_modules']} linear layers at {s['bits_per_linear_weight']:.4f} bits/weight; "
          f"checkpoint tensors {s['total_bytes'] / 2**20:.2f} MiB")
    print(f"end to end (embeddings: {s['embed_quant']}): {s['bits_per_weight_end_to_end']:.4f} bits/weight "
          f"over {s['original_weights']:,d} weights")
    return 0


def run_streaming(args, cfg) -> int:
    """``--streaming``: one tensor at a time (formats/streaming.py); methods that need
    calibration (GPTQ) one decoder block at a time (formats/streaming_blocks.py)."""
    from pathlib import Path

    from ..config import parse_dtype
    from ..errors import OneBitError
    from ..formats.streaming import stream_quantize
    from .common import progress_enabled

    if not Path(args.model).expanduser().is_dir():
        raise OneBitError(f"--streaming needs a local model directory, got '{args.model}'")
    t0 = time.perf_counter()
    from ..registry import get_handler

    fn = stream_quantize
    if get_handler(cfg).needs_calibration:
        from ..formats.streaming_blocks import stream_quantize_blocks as fn
    ledger = fn(Path(args.model).expanduser(), args.out, cfg, dtype=parse_dtype(args.dtype),
                overwrite=args.overwrite, progress=progress_enabled(args))
    s = ledger.summary()
    print(f"quantized {args.model} with {cfg.method} (streaming) in {time.perf_counter() - t0:.1f}s "
          f"-> {args.out}")
    print(f"{s['quantized_modules']} linear layers at {s['bits_per_linear_weight']:.4f} bits/weight; "
          f"checkpoint tensors {s['total_bytes'] / 2**20:.2f} MiB")
    return 0
