"""``onebit distill TEACHER OUT``: quantization-aware distillation into a packed checkpoint.

The student is the teacher with its linears in a method's trainable form
(``--method``, SVID-initialised for OneBit), or a packed checkpoint turned
back into its trainable form (``--student``).  It learns from the fp
teacher: KL(teacher ‖ student) at ``--temperature`` + ``--alpha`` × MSE of
L2-normalised hidden states of every layer (+ ``--lm-weight`` × LM loss).
Embeddings, lm_head and norms stay frozen.  Data: sequences the teacher
generates (cached on disk and reused) or a training text/JSONL you name
(--data FILE); evaluation files are refused.  A checkpoint of the training
state is written every --save-every steps to --state-dir; --resume
continues from it exactly.  The same command runs under
``torchrun --nproc-per-node N`` or ``accelerate launch`` (DDP; --strategy
fsdp shards the student).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

#: training sequences a calibrated method (GPTQ, AWQ) quantizes its starting point with
CALIB_SAMPLES = 128

log = logging.getLogger("onebit")

EVAL_NAMES = ("wikitext2", "c4", "tinystories")
#: --budget: seconds kept back for packing and saving the student
_SAVE_RESERVE_S = 30.0


def register(sub) -> None:
    from .distill_flags import add_distill_arguments

    p = sub.add_parser("distill", help="distil the fp teacher into a quantized student (QAT)",
                       description=__doc__.split("\n\n", 1)[1],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_distill_arguments(p)
    p.set_defaults(func=run)


def _method_config(args):
    from .method_flags import build_config

    return build_config(args)


def _block_config(args):
    """The block-wise stage's settings, or None without --blockwise-steps; one-line errors."""
    from ..distill.blockwise import BlockConfig
    from ..errors import OneBitError

    if args.steps < 0 or args.blockwise_steps < 0:
        raise OneBitError("--steps and --blockwise-steps must be >= 0")
    if not args.blockwise_steps:
        if args.steps == 0:
            raise OneBitError("--steps 0 leaves nothing to train (add --blockwise-steps K)")
        return None
    if args.student:
        raise OneBitError("--blockwise-steps converts the teacher block by block; it cannot start from --student")
    rows = args.samples // max(1, args.concat_sequences)
    if args.block_samples is not None and not 1 <= args.block_samples <= rows:
        raise OneBitError(f"--block-samples must be between 1 and the number of rows ({rows}: --samples "
                          f"{args.samples} / --concat-sequences {args.concat_sequences})")
    cfg = BlockConfig(steps=args.blockwise_steps, batch_size=args.block_batch_size, lr=args.block_lr,
                      lr_vectors=args.block_lr_vectors, inputs=args.block_inputs, alpha=args.block_alpha,
                      loss_norm=args.block_loss, bf16=args.block_bf16, compile=args.compile,
                      train_norms=args.train_norms, seed=args.train_seed)
    cfg.validate()
    return cfg


def _report_blocks(args, hist, seconds, ledger) -> None:
    s = ledger.summary()
    if hist:
        print(f"block-wise: {len(hist)} blocks in {seconds:.0f}s; relative output error "
              f"{hist[0]['err_init']:.4f} -> {hist[0]['err_final']:.4f} (first block), "
              f"{hist[-1]['err_init']:.4f} -> {hist[-1]['err_final']:.4f} (last); peak RSS "
              f"{max(h['peak_rss_mib'] for h in hist):.0f} MiB")
    print(f"converted {args.teacher} -> {args.out}: {s['quantized_modules']} linear layers at "
          f"{s['bits_per_linear_weight']:.4f} bits/weight")


def _check(args):
    """Everything a user can get wrong fails here, before any loading or training: ``(method
    config or None with --student, block-wise config or None, TrainConfig, state directory)``."""
    from .common import check_paths_exist

    check_paths_exist(args.teacher, args.student)  # before torch is imported
    from ..distill.trainer import STATE_NAME, TrainConfig
    from ..errors import OneBitError
    from ..formats.checkpoint import prepare_output_dir
    from ..models import check_model_spec

    if args.budget is not None and not args.budget > 0:
        raise OneBitError(f"--budget must be > 0 minutes, got {args.budget}")
    if args.budget is not None and args.steps == 0:
        raise OneBitError("--budget plans and stops the end-to-end stage; --steps 0 has none")
    args.fit_steps = args.budget is not None and args.steps is None
    if args.steps is None:
        args.steps = 200
    cfg_q = None if args.student else _method_config(args)
    check_model_spec(args.teacher)
    if args.student:
        check_model_spec(args.student)
    prepare_output_dir(args.out, args.overwrite)
    state_dir = Path(args.state_dir or f"{args.out}.state")
    if args.resume and not (state_dir / STATE_NAME).is_file() and \
            not (args.blockwise_steps and (state_dir / "blocks" / "blocks.json").is_file()):
        raise OneBitError(f"--resume: no training checkpoint at '{state_dir / STATE_NAME}'")
    if args.data in EVAL_NAMES:
        raise OneBitError(f"--data {args.data} is an evaluation dataset; never train on it")
    if args.data != "teacher":
        from ..calibration import read_training_text

        read_training_text(args.data)
    if args.samples < 1:
        raise OneBitError("--samples must be >= 1")
    if args.no_start_frac is not None and not 0.0 <= args.no_start_frac <= 1.0:
        raise OneBitError(f"--no-start-frac must be in [0, 1], got {args.no_start_frac}")
    for flag, v in (("--repeat-frac", args.repeat_frac), ("--block-repeat-frac", args.block_repeat_frac)):
        if not 0.0 <= v < 1.0:
            raise OneBitError(f"{flag} must be in [0, 1), got {v}")
    if args.repeat_frac and args.steps == 0:
        raise OneBitError("--repeat-frac applies to the end-to-end stage only: it needs --steps N > 0")
    if args.concat_sequences < 1 or args.samples % args.concat_sequences:
        raise OneBitError(f"--concat-sequences must be at least 1 and divide --samples ({args.samples}), "
                          f"got {args.concat_sequences}")
    bcfg = _block_config(args)
    tcfg = TrainConfig(steps=max(1, args.steps), batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                       lr_vectors=args.lr_vectors, weight_decay=args.weight_decay, warmup=args.warmup,
                       min_lr_ratio=args.min_lr_ratio, clip=args.grad_clip, temperature=args.temperature,
                       kd=args.kd, alpha=args.kd_alpha, lm_weight=args.lm_weight, seed=args.train_seed,
                       eval_every=args.eval_every, eval_windows=args.eval_windows,
                       save_every=args.save_every, latent_clip=args.latent_clip,
                       reset_every=args.reset_every, average_last=args.average_last, bf16=args.bf16,
                       compile=args.compile)
    tcfg.validate()
    return cfg_q, bcfg, tcfg, state_dir


def _load(args, cfg_q, bcfg):
    """``(teacher, tokenizer, student, its quantization config)``; no student yet (``None, None``)
    when the block-wise stage builds it."""
    from ..config import parse_dtype
    from ..distill.student import check_compatible, student_from_checkpoint, student_from_teacher
    from ..models import load_model, load_tokenizer
    from ..registry import get_handler

    teacher = load_model(args.teacher, dtype=parse_dtype(args.dtype))
    if cfg_q is not None and cfg_q.rotate:  # --rotate: the teacher in the student's rotated basis
        from ..rotation import rotate_like

        rotate_like(teacher, cfg_q)
    tok = load_tokenizer(args.teacher)
    student = qc = None
    if args.student:
        student, qc = student_from_checkpoint(args.student)
        check_compatible(teacher, student, f"student '{args.student}'")
        from ..rotation import rotate_like

        rotate_like(teacher, qc)  # a rotated student (quantization_config "rotate"): rotate the teacher too
        student.to(teacher.dtype)
    elif bcfg is None and not get_handler(cfg_q).needs_calibration:
        student, qc = student_from_teacher(teacher, cfg_q)
    return teacher, tok, student, qc  # a calibrated method's student is built once the data is there


def _data(args, teacher, tok, info, prog: bool, blockwise: bool):
    """The training sequences (token ids): teacher-generated (cached; the main process generates,
    the others read the cache) or from --data FILE."""
    from ..distill import dist
    from ..distill.data import concat_sequences, file_data, mixed_starts, teacher_data
    from ..errors import OneBitError
    from ..models import context_length

    seqlen = args.seqlen or context_length(teacher)  # --seqlen 0: the teacher's context
    if args.data == "teacher":
        if args.gen_batch_size < 1:
            raise OneBitError(f"--gen-batch-size must be at least 1, got {args.gen_batch_size}")
        kw = dict(seed=args.data_seed, greedy_tokens=args.greedy_tokens, temperature=args.gen_temperature,
                  cache_dir=args.data_cache, progress=prog, batch_size=args.gen_batch_size)
        # generate where the training runs (a GPU samples on the GPU); every rank keys the cache there
        home = next(teacher.parameters()).device
        teacher.to(info.device)
        if info.main:
            data = teacher_data(teacher, args.samples, seqlen, **kw)
        dist.barrier(info)
        if not info.main:
            data = teacher_data(teacher, args.samples, seqlen, generate=False, **kw)
        teacher.to(home)
        frac = args.no_start_frac if args.no_start_frac is not None else (0.5 if blockwise else 0.0)
        data = mixed_starts(data, frac)
    else:
        data = file_data(tok, args.data, args.samples, seqlen, seed=args.data_seed)
    data = concat_sequences(data, args.concat_sequences, getattr(teacher.config, "max_position_embeddings", None))
    if int(data.max()) >= teacher.config.vocab_size:
        raise OneBitError(f"data has token id {int(data.max())} >= the teacher's vocabulary "
                          f"({teacher.config.vocab_size})")
    return data


def _blockwise(args, teacher, cfg_q, bcfg, data, state_dir: Path, prog: bool, e2e: bool):
    """The block-wise stage: ``(student, qc, per-block history, seconds)``; the student is in its
    packed form when no end-to-end stage follows, else back in its trainable form."""
    import copy

    from ..distill.blockwise import reconstruct
    from ..distill.student import to_trainable

    t0 = time.perf_counter()
    student = copy.deepcopy(teacher) if e2e else teacher  # converted in place
    blocks = data[:args.block_samples] if args.block_samples else data
    if args.block_repeat_frac:
        from ..distill.data import repeat_spans

        blocks = repeat_spans(blocks, args.block_repeat_frac, seed=args.data_seed)
    qc, hist = reconstruct(student, cfg_q, blocks, bcfg, state_dir / "blocks", prog, resume=args.resume)
    seconds = time.perf_counter() - t0
    return student, (to_trainable(student) if e2e else qc), hist, seconds


def _budget_left(args, t_begin: float) -> float | None:
    """Seconds left of ``--budget`` (None without one)."""
    return None if args.budget is None else args.budget * 60 - (time.perf_counter() - t_begin)


def _train(args, teacher, student, qc, data, tok, tcfg, state_dir: Path, prog: bool, info, resumable: bool,
           t_begin: float):
    """The end-to-end distillation: ``(trainer, seconds, stopped by --budget)``."""
    import hashlib
    import json

    from ..distill import dist
    from ..distill.student import freeze
    from ..distill.trainer import Trainer, saved_steps

    tcfg.method_hash = hashlib.sha256(json.dumps({k: v for k, v in qc.items() if k != "modules"},
                                                 sort_keys=True).encode()).hexdigest()[:12]
    trainable = freeze(student, qc["modules"], args.train_norms)
    eval_ids = None
    if args.eval_data:
        from ..eval.data import load_text
        from ..eval.perplexity import tokenize_text

        eval_ids = tokenize_text(tok, load_text(args.eval_data))
    resuming = args.resume and resumable
    if resuming and args.fit_steps:  # the schedule this run fitted when it began
        tcfg.steps = saved_steps(state_dir) or tcfg.steps
    trainer = Trainer(teacher, student, data, tcfg, trainable, str(state_dir), eval_ids, args.eval_seqlen,
                      prog, info, args.strategy,
                      on_eval=lambda r: log.info("step %d (%d tokens, %.0fs): eval ppl %.3f%s",
                                                 r["step"], r["tokens"], r["wall"], r["ppl"],
                                                 {True: " (averaged parameters)", False: " (before averaging)"}
                                                 .get(r.get("averaged"), "")))
    if resuming:
        trainer.load_state(state_dir)
    comm = dist.compress_gradients(trainer.model, info, args.strategy, args.grad_compression, args.powersgd_rank)
    t0 = time.perf_counter()
    left = _budget_left(args, t_begin)
    if left is not None and info.main:
        print(f"--budget: {left / 60:.1f} of {args.budget:g} minutes left for the end-to-end stage")
    if args.fit_steps and not resuming:
        if left <= 0:
            log.warning("--budget is spent before the end-to-end stage; training its minimum of a few steps")
        trainer.fit_steps(max(0.0, left) - _SAVE_RESERVE_S)
        left = _budget_left(args, t_begin)
        if info.main:
            print(f"--budget: end-to-end schedule fitted to {tcfg.steps} steps")
    limits = [x for x in (args.time_limit, None if left is None else left - _SAVE_RESERVE_S) if x is not None]
    trainer.train(stop_at=args.stop_at, time_limit=min(limits) if limits else None)
    wall = time.perf_counter() - t0
    budget_stop = left is not None and trainer.step < min(tcfg.steps, args.stop_at or tcfg.steps) and \
        _budget_left(args, t_begin) < _SAVE_RESERVE_S + 1
    if budget_stop:
        log.warning("--budget stopped training at step %d of %d (the steps ran slower than timed); saving the "
                    "student as it is", trainer.step, tcfg.steps)
        trainer.finish()
    if comm is not None and info.main:
        print(comm.line())
    if info.main:
        (state_dir / "history.json").write_text(json.dumps(trainer.history, indent=1) + "\n")
    return trainer, wall, budget_stop


def _finish(args, trainer, tcfg, qc, tok, wall: float, state_dir: Path, info, blocks, budget_stop: bool,
            t_begin: float) -> None:
    """Stopped early: say how to resume.  Done (or stopped by --budget): pack, save and report the student."""
    from ..distill import dist
    from ..distill.student import pack_student
    from ..formats.checkpoint import save_checkpoint

    if trainer.step < tcfg.steps and not budget_stop:
        if info.main:
            print(f"stopped at step {trainer.step}/{tcfg.steps}; state in {state_dir} "
                  "(continue with --resume)")
        return
    student = dist.materialize(trainer.model)  # a collective under FSDP
    if not info.main:
        return
    student = student.cpu()
    pack_student(student, qc)
    ledger = save_checkpoint(student, args.out, tokenizer=tok, source=args.teacher, overwrite=args.overwrite)
    s = ledger.summary()
    evals = [h for h in trainer.history if "ppl" in h]
    msg = f"; eval ppl {evals[0]['ppl']:.2f} -> {evals[-1]['ppl']:.2f}" if len(evals) > 1 else \
        (f"; eval ppl {evals[-1]['ppl']:.2f}" if evals else "")
    if len(evals) > 1 and evals[-1].get("averaged"):
        msg += f" (the last step's parameters: {evals[-2]['ppl']:.2f}; saved: the averaged ones)"
    print(f"distilled {args.teacher} -> {args.out}: {trainer.step} steps, {trainer.tokens:,d} tokens "
          f"in {wall:.0f}s{msg}")
    print(f"{s['quantized_modules']} linear layers at {s['bits_per_linear_weight']:.4f} bits/weight")
    if blocks is not None:
        print(f"(after a block-wise stage of {len(blocks[0])} blocks in {blocks[1]:.0f}s)")
    if args.budget is not None:
        used = time.perf_counter() - t_begin
        print(f"--budget: the command took {used / 60:.1f} of {args.budget:g} minutes")


def run(args) -> int:
    from ..distill import dist
    from ..distill.trainer import STATE_NAME
    from ..errors import OneBitError
    from ..formats.checkpoint import save_checkpoint
    from .common import progress_enabled
    from .distill_stream import run_streaming, use_streaming

    t_begin = time.perf_counter()  # --budget counts everything from here
    cfg_q, bcfg, tcfg, state_dir = _check(args)
    stream = use_streaming(args, bcfg is not None)  # its refusals, before anything loads
    e2e = args.steps > 0 or bcfg is None
    info = dist.init(None if args.device == "auto" else args.device)
    if args.powersgd_rank < 1:
        raise OneBitError(f"--powersgd-rank must be >= 1, got {args.powersgd_rank}")
    dist.check_compression(args.grad_compression, info, args.strategy)  # fsdp: error; one process: warning
    prog = progress_enabled(args) and info.main
    if bcfg is not None and info.world > 1:
        raise OneBitError("block-wise reconstruction runs in one process (not under torchrun)")
    if stream:
        ledger, hist, seconds = run_streaming(args, cfg_q, bcfg, state_dir, prog)
        _report_blocks(args, hist, seconds, ledger)
        dist.finish(info)
        return 0
    teacher, tok, student, qc = _load(args, cfg_q, bcfg)
    data = _data(args, teacher, tok, info, prog, bcfg is not None)
    if student is None and bcfg is None:  # GPTQ/AWQ: start from the method's calibrated result
        from ..distill.student import student_from_teacher

        student, qc = student_from_teacher(teacher, cfg_q, calib_ids=data[:CALIB_SAMPLES])
    blocks = None
    if bcfg is not None:
        student, qc, hist, seconds = _blockwise(args, teacher, cfg_q, bcfg, data, state_dir, prog, e2e)
        blocks = (hist, seconds)
        if not e2e:
            ledger = save_checkpoint(student, args.out, tokenizer=tok, source=args.teacher,
                                     overwrite=args.overwrite)
            _report_blocks(args, hist, seconds, ledger)
            dist.finish(info)
            return 0
    # killed in the block-wise stage: no end-to-end state to resume from
    resumable = bcfg is None or (state_dir / STATE_NAME).is_file()
    if args.repeat_frac:  # the end-to-end rows only: in the block-wise stage the copies cost (docs/distillation.md)
        from ..distill.data import repeat_spans

        data = repeat_spans(data, args.repeat_frac, seed=args.data_seed)
    trainer, wall, budget_stop = _train(args, teacher, student, qc, data, tok, tcfg, state_dir, prog, info,
                                        resumable, t_begin)
    _finish(args, trainer, tcfg, qc, tok, wall, state_dir, info, blocks, budget_stop, t_begin)
    del trainer, student, teacher  # the (sharded) models hold the process group: drop them first
    dist.finish(info)
    return 0
