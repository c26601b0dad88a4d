"""``onebit distill TEACHER OUT --blockwise-steps K --streaming``: the block-wise stage streamed.

The teacher is read one decoder block at a time from its local safetensors files
(:mod:`onebit.distill.streaming`) and the packed checkpoint written as the blocks finish, so memory
holds one block plus the activation caches instead of the model.  Without ``--streaming`` /
``--no-streaming`` the mode is chosen like ``onebit quantize``'s: on when the teacher is a local
safetensors checkpoint too big for the available memory.

What the streamed mode cannot do, refused in one line: an end-to-end stage (``--steps N > 0`` needs
the whole teacher and student in memory; run it afterwards with ``--student OUT --blockwise-steps
0`` where it fits), and teacher-generated data that is not cached yet (generating needs the whole
teacher): give a training file (``--data FILE``; evaluation files are refused) or reuse the
teacher-data cache of an earlier in-memory ``onebit distill`` (``--data-cache``, same ``--samples``,
``--seqlen``, ``--data-seed``).
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("onebit")


def add_streaming_arg(group) -> None:
    import argparse

    group.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                       help="block-wise stage only (--steps 0): read the teacher one block at a time from its "
                       "local safetensors files and write the packed checkpoint as the blocks finish (memory: "
                       "one block + the activation caches); needs --data FILE or an existing teacher-data "
                       "cache; default: on when the teacher does not fit in the available memory")


def use_streaming(args, blockwise: bool) -> bool:
    """Whether this run streams; one-line errors for what streaming cannot do."""
    from ..config import parse_dtype
    from ..distill.streaming import should_stream
    from ..errors import OneBitError

    if not blockwise:
        if args.streaming:
            raise OneBitError("--streaming streams the block-wise stage: add --blockwise-steps K (and --steps 0)")
        return False
    stream = should_stream(args.teacher, args.streaming, parse_dtype(args.dtype), copies=2 if args.steps else 1)
    if stream and args.steps > 0:
        why = "--streaming" if args.streaming else \
            f"the teacher '{args.teacher}' does not fit in the available memory, so the block-wise stage streams; it"
        raise OneBitError(f"{why} converts one block at a time and the end-to-end stage (--steps {args.steps}) "
                          "needs the whole model in memory: pass --steps 0, then distil the result with "
                          "--student OUT --blockwise-steps 0 where it fits")
    if stream and args.streaming is None:
        log.warning("the teacher does not fit in the available memory: streaming the block-wise stage "
                    "(--no-streaming to load it anyway)")
    return stream


def _data(args, src, dtype):
    """The calibration token ids: windows of ``--data FILE``, or the teacher-data cache."""
    from types import SimpleNamespace

    from transformers import AutoConfig

    from ..distill.data import concat_sequences, file_data, mixed_starts, repeat_spans, teacher_data
    from ..distill.streaming import streamed_fingerprint
    from ..errors import OneBitError
    from ..models import context_length, load_tokenizer

    config = AutoConfig.from_pretrained(str(src))
    seqlen = args.seqlen or context_length(SimpleNamespace(config=config))
    context = getattr(config, "max_position_embeddings", None)
    if args.data != "teacher":
        data = file_data(load_tokenizer(str(src)), args.data, args.samples, seqlen, seed=args.data_seed)
        data = concat_sequences(data, args.concat_sequences, context)
        return repeat_spans(data, args.block_repeat_frac, seed=args.data_seed)
    try:
        data = teacher_data(None, args.samples, seqlen, seed=args.data_seed, greedy_tokens=args.greedy_tokens,
                            temperature=args.gen_temperature, cache_dir=args.data_cache, generate=False,
                            batch_size=args.gen_batch_size,
                            fingerprint=streamed_fingerprint(src, dtype))
    except OneBitError as e:
        raise OneBitError(f"streaming block-wise needs calibration data the teacher cannot generate without "
                          f"the whole model: pass --data FILE (a training text), or run `onebit distill` once "
                          f"in memory with the same --samples/--seqlen/--data-seed to fill the cache ({e})")
    frac = args.no_start_frac if args.no_start_frac is not None else 0.5
    data = concat_sequences(mixed_starts(data, frac), args.concat_sequences, context)
    return repeat_spans(data, args.block_repeat_frac, seed=args.data_seed)


def run_streaming(args, cfg_q, bcfg, state_dir, prog: bool) -> tuple:
    """The streamed block-wise stage: writes OUT; ``(ledger, per-block history, seconds)``."""
    from pathlib import Path

    import torch

    from ..config import parse_dtype
    from ..distill.streaming import checkpoint_bytes, stream_reconstruct
    from ..errors import OneBitError

    src = Path(args.teacher).expanduser()
    if checkpoint_bytes(src) is None:
        raise OneBitError(f"--streaming reads the teacher one block at a time from a local safetensors model "
                          f"directory; '{args.teacher}' is not one (pass --no-streaming)")
    if getattr(cfg_q, "rotate", False):
        raise OneBitError("--rotate needs the whole model in memory; pass --no-streaming")
    dtype = parse_dtype(args.dtype)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    data = _data(args, src, dtype)
    blocks = data[:args.block_samples] if args.block_samples else data
    t0 = time.perf_counter()
    ledger, hist = stream_reconstruct(src, args.out, cfg_q, blocks, bcfg, state_dir / "blocks", dtype=dtype,
                                      progress=prog, resume=args.resume, overwrite=args.overwrite,
                                      device=device)
    seconds = time.perf_counter() - t0
    print(f"(streaming: one block in memory at a time, on {device})")
    return ledger, hist, seconds
