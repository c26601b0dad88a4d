"""``onebit quantize MODEL OUT --method onebit``: quantize and write a packed checkpoint."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ..config import EMBED_KINDS, parse_dtype
from ..errors import OneBitError
from .common import add_common, add_dtype_arg, check_paths_exist, progress_enabled
from .method_flags import add_method_flags, method_names

log = logging.getLogger("onebit")


def register(sub) -> None:
    p = sub.add_parser(
        "quantize", help="quantize a model and write a packed checkpoint",
        description="Load a Hugging Face causal LM (hub id or local directory), replace every linear "
        "layer except embeddings and lm_head with the chosen method's layer, and write a packed "
        "safetensors checkpoint to OUT (written to a temporary directory, then renamed).")
    p.add_argument("model", metavar="MODEL", help="hub id or local model directory")
    p.add_argument("out", metavar="OUT", help="output directory for the packed checkpoint")
    p.add_argument("--method", default="onebit",
                   help=f"quantization method: {', '.join(method_names())} (default: %(default)s); its "
                   "settings are the flags below, each marked with the methods that have it")
    add_embed_args(p)
    add_dtype_arg(p)
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                   help="quantize a local safetensors checkpoint one tensor at a time (read, quantize, "
                   "write, free: peak memory ~ one layer), output sharded like the input; default: on "
                   "for checkpoints of 2 GiB or more when the method needs no calibration")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_common(p)
    add_method_flags(p)
    p.add_argument("--asym", dest="sym", action="store_false", default=None, help="same as --no-sym")
    p.set_defaults(func=run)


def add_embed_args(p) -> None:
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
        raise OneBitError("--embed-group needs --embed-quant int8|int4|int2|q1")
    cfg = EmbedQuantConfig(getattr(args, "embed_quant", "none"), getattr(args, "embed_group", None),
                           getattr(args, "embed_head", True))
    cfg.validate()
    return cfg


def build_config(args):
    """The method's config from the CLI flags (kept for callers; ``method_flags.build_config``)."""
    from .method_flags import build_config as build

    return build(args)


def run(args) -> int:
    check_paths_exist(args.model)  # before torch is imported: a mistyped path fails at once
    from ..api import quantize
    from ..formats.checkpoint import prepare_output_dir, save_checkpoint
    from ..models import check_model_spec, load_model, load_tokenizer

    cfg = build_config(args)                       # bad method/flags fail before any loading
    embed = build_embed_config(args)
    check_model_spec(args.model)
    prepare_output_dir(args.out, args.overwrite)   # OUT exists without --overwrite: fail early
    from ..pipelines.streaming import should_stream

    stream = should_stream(args.model, cfg, getattr(args, "streaming", None))
    if stream and embed.kind != "none":
        if getattr(args, "streaming", None):
            raise OneBitError("--embed-quant is not supported with --streaming yet; pass --no-streaming")
        log.warning("--embed-quant: quantizing in memory (the streaming path keeps embeddings as they are)")
        stream = False
    if stream and getattr(cfg, "rotate", False):  # the rotation needs the whole model in memory
        if getattr(args, "streaming", None):
            raise OneBitError("--rotate is not supported with --streaming (the rotation transforms the whole "
                              "model in memory); pass --no-streaming")
        log.warning("--rotate: quantizing in memory (the streaming path cannot rotate)")
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
    """``--streaming``: one tensor at a time (pipelines/streaming.py); methods that need
    calibration (GPTQ) one decoder block at a time (pipelines/streaming_blocks.py)."""
    from ..pipelines.streaming import stream_quantize

    if not Path(args.model).expanduser().is_dir():
        raise OneBitError(f"--streaming needs a local model directory, got '{args.model}'")
    t0 = time.perf_counter()
    from ..registry import get_handler

    fn = stream_quantize
    if get_handler(cfg).needs_calibration:
        from ..pipelines.streaming_blocks import stream_quantize_blocks as fn
    ledger = fn(Path(args.model).expanduser(), args.out, cfg, dtype=parse_dtype(args.dtype),
                overwrite=args.overwrite, progress=progress_enabled(args))
    s = ledger.summary()
    print(f"quantized {args.model} with {cfg.method} (streaming) in {time.perf_counter() - t0:.1f}s "
          f"-> {args.out}")
    print(f"{s['quantized_modules']} linear layers at {s['bits_per_linear_weight']:.4f} bits/weight; "
          f"checkpoint tensors {s['total_bytes'] / 2**20:.2f} MiB")
    return 0
