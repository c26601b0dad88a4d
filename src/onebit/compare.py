"""``onebit compare``: every method on the same model, one table.

A *method spec* names a method and its settings in one token::

    fp                      the unquantized model (baseline row)
    onebit  onebit-foldable  onebit-w1a8  q1_0  bitnet  ternary
    onebit-rank2  onebit-mos  onebit-mos8   (the number: rank k / scale experts k)
    rtn-w4  rtn-w2-g64  rtn-w4-asym  rtn-w3-g128-mse  rtn-w4-a8  rtn-w4-tensor
    gptq-w3-g64  gptq-w4-actorder  gptq-w4-g128-static
    smoothquant-w8a8  smoothquant-w8a8-static   (rtn-w8a8: the same W8A8 without smoothing)

Modifiers (each only where the method has the setting): ``w<N>`` weight bits, ``g<N>``
group size, ``tensor`` one scale per tensor, ``sym``/``asym``, ``mse`` (clip search),
``a<N>`` activation bits (``a0`` turns BitNet's int8 activations off), ``actorder``,
``static`` (GPTQ static groups; elsewhere static activation scales), ``w<N>a<M>`` (= ``w<N>-a<M>``),
``foldable`` (OneBit with tied input scales, llama.cpp's Q1_0).

For each spec: quantize the model (timed; calibration data, generated once by the teacher, is
shared by all methods and not in the time), save the packed checkpoint to a temporary directory
(size on disk = its ``*.safetensors``), read the bit ledger (bits per weight of the quantized
linears, and end to end: every stored bit over the original model's weights), and measure
perplexity on each dataset.  With ``isolate`` (the CLI's default) the quantization runs in a fresh
child process (``spawn``) that loads the teacher, quantizes and saves, and the row's peak RSS is
that process's ``ru_maxrss`` (load + quantize + save: what ``onebit quantize`` needs); the parent
then evaluates the checkpoint as saved.  Without it (the default: a child re-imports torch and
re-loads the teacher, minutes on a busy CPU), the column is the rise of this process's RSS over
its value before quantizing, sampled every 20 ms (:class:`RSSSampler`).  On the first dataset's windows the student is scored
against the teacher (``onebit.eval.kld``): mean KL(teacher ‖ method) per token ± its standard
error and top-1 agreement, and that dataset's perplexity comes from the same pass.  With
``zeroshot_limit`` > 0: accuracy ± standard error on each of the paper's six zero-shot tasks and
LAMBADA (``onebit.eval.zeroshot``), and the six-task average.  ``n/a`` where not measured.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .config import QuantConfig
from .errors import OneBitError, first_line
# the report (re-exported: onebit.compare.to_markdown etc. keep working)
from .compare_report import (COLUMN_NAMES, NO_PLOT_NOTE, RSS_LABELS, SE, Row, plot, table,  # noqa: F401
                             to_csv, to_markdown)

log = logging.getLogger("onebit")

BASELINE_NAMES = ("fp", "fp16", "fp32", "teacher")
DEFAULT_METHODS = "onebit,onebit-w1a8,bitnet,ternary,rtn-w2-g64,gptq-w2-g64,rtn-w3-g64,gptq-w3-g64,rtn-w4,gptq-w4"
#: perplexity / KL windows per dataset that ``onebit compare`` scores unless told ``--full``: enough
#: to rank methods, and an answer in minutes rather than an hour (WikiText-2 has ~600 windows of 512)
DEFAULT_MAX_WINDOWS = 40
MODIFIERS = "w<bits>, g<group>, tensor, sym, asym, mse, a<act-bits>, actorder, static, foldable"


# ------------------------------------------------------------------- spec parsing
def _split_wa(tok: str) -> list[str]:
    """``w8a8`` -> ``["w8", "a8"]`` (weight and activation bits in one modifier); others unchanged."""
    w, sep, a = tok[1:].partition("a")
    return [f"w{w}", f"a{a}"] if tok[:1] == "w" and sep and w.isdigit() and a.isdigit() else [tok]


def parse_method_spec(spec: str) -> QuantConfig | None:
    """A method spec (see module docstring) -> its config; ``None`` for the fp baseline."""
    from .registry import available_methods, get_handler_cls

    s = spec.strip().lower()
    if s in BASELINE_NAMES:
        return None
    names = sorted(available_methods(), key=len, reverse=True)
    method = next((n for n in names if s == n or s.startswith(n + "-") or _numbered(n, s)), None)
    if method is None:
        raise OneBitError(f"unknown method '{spec}'; valid methods: {', '.join(sorted(names))}, fp "
                          f"(with modifiers {MODIFIERS}, e.g. rtn-w4-g128, gptq-w3-g64, rtn-w4-asym)")
    cls = get_handler_cls(method).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    kw: dict = {}
    rest = s[len(method):]
    if _numbered(method, s):             # onebit-rank2, onebit-mos8: the method's count field
        digits = rest.split("-")[0]
        kw[cls.spec_number], rest = int(digits), rest[len(digits):]
    for tok in [p for t in rest.split("-") if t for p in _split_wa(t)]:
        if tok[0] == "w" and tok[1:].isdigit():
            key, val = "bits", int(tok[1:])
        elif tok[0] == "g" and tok[1:].isdigit():
            key, val = "group_size", int(tok[1:])
        elif tok[0] == "a" and tok[1:].isdigit():
            key, val = "act_bits", int(tok[1:])
        elif tok == "tensor":
            key, val = "group_size", -1
        elif tok in ("sym", "asym"):
            key, val = "sym", tok == "sym"
        elif tok == "mse":
            key, val = "clip", "mse"
        elif tok in ("actorder", "ao"):
            key, val = "act_order", True
        elif tok == "static":       # GPTQ static groups; else static activation scales (smoothquant)
            key, val = ("static_groups", True) if "static_groups" in fields else ("act_mode", "static")
        elif tok == "foldable":
            key, val = "foldable", True
        else:
            raise OneBitError(f"method spec '{spec}': unknown modifier '{tok}'; valid modifiers: {MODIFIERS}")
        if key not in fields:
            raise OneBitError(f"method spec '{spec}': '{tok}' does not apply to method '{method}'")
        kw[key] = val
    cfg = cls(**kw)
    try:
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise OneBitError(f"method spec '{spec}': {e}")
    except OneBitError as e:
        raise OneBitError(f"method spec '{spec}': {e}")
    return cfg


def _numbered(method: str, spec: str) -> bool:
    """``spec`` is ``method`` followed directly by a number (``onebit-rank2``), for a method whose
    config names the field that number sets (``spec_number``)."""
    from .registry import get_handler_cls

    rest = spec[len(method):] if spec.startswith(method) else ""
    return (rest[:1].isdigit() and rest.split("-")[0].isdigit()
            and getattr(get_handler_cls(method).config_cls, "spec_number", None) is not None)


def parse_methods(specs: str) -> list[tuple[str, QuantConfig | None]]:
    out = [(s.strip(), parse_method_spec(s)) for s in specs.split(",") if s.strip()]
    if not out:
        raise OneBitError("--methods is empty")
    labels = [lbl for lbl, _ in out]
    dup = {lbl for lbl in labels if labels.count(lbl) > 1}
    if dup:
        raise OneBitError(f"--methods lists {sorted(dup)[0]} twice")
    return out


# ------------------------------------------------------------------- extra metric hooks
#: zero-shot columns, in order: the paper's six tasks, then LAMBADA
ZEROSHOT_COLUMNS = ("piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "boolq", "lambada")


def _zeroshot_hook(teacher, student, tokenizer, ids_by_data, settings) -> dict:
    """Accuracy (%) ± standard error on each of the paper's six zero-shot tasks and LAMBADA, and the
    six-task average, with ``zeroshot_limit`` > 0 items per task (``onebit.eval.zeroshot``; the slow
    columns, so opt-in).  Without a limit only the average's column, ``n/a``."""
    if not settings.get("zeroshot_limit"):
        return {"zeroshot_avg": None}
    from .eval.zeroshot import evaluate, paper_average

    res = evaluate(student, tokenizer, list(ZEROSHOT_COLUMNS), limit=settings["zeroshot_limit"])
    out: dict[str, float | None] = {}
    for t in ZEROSHOT_COLUMNS:
        out[t] = 100 * res[t].acc
        out[t + SE] = 100 * res[t].acc_stderr
    avg = paper_average(res)
    out["zeroshot_avg"] = None if avg is None else 100 * avg
    # the average of six independent means: its standard error is sqrt(sum se_i^2) / 6
    out["zeroshot_avg" + SE] = math.sqrt(sum(res[t].acc_stderr ** 2 for t in ZEROSHOT_COLUMNS[:6])) / 6 * 100
    return out


#: column -> fn(teacher, student, tokenizer, {data: ids}, settings) -> float | {column: value} | None.
#: A value under ``<column>_se`` is that column's standard error (shown as ``x ± se``).
METRIC_HOOKS: dict[str, Callable] = {"zeroshot": _zeroshot_hook}


# ------------------------------------------------------------------- running


def _make_model(teacher, cfg: QuantConfig, distill: int, calib, tok, progress: bool):
    """The quantized (or distilled and packed) model of ``cfg``, from a copy of ``teacher``."""
    from .api import quantize

    if distill:
        return _distill(teacher, copy.deepcopy(cfg), distill, calib, progress)
    return quantize(copy.deepcopy(teacher), copy.deepcopy(cfg), progress=progress, calib_ids=calib,
                    tokenizer=tok)


def _distill(teacher, cfg: QuantConfig, steps: int, data, progress: bool):
    """Distil the method's trainable form for ``steps`` steps (``onebit.distill``'s trainer)."""
    from .distill.student import freeze, pack_student, student_from_teacher
    from .distill.trainer import TrainConfig, Trainer

    student, qc = student_from_teacher(teacher, cfg, calib_ids=data)
    trainable = freeze(student, qc["modules"])
    Trainer(teacher, student, data, TrainConfig(steps=steps, batch_size=min(8, data.shape[0])),
            trainable, progress=progress).train()
    return pack_student(student, qc)


def _current_rss_mib() -> float | None:
    """This process's resident set now (Linux ``/proc/self/statm``); ``None`` elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return None


class RSSSampler:
    """Peak RSS of this process while a block runs, sampled every ``interval`` s by a thread, and
    its rise over the RSS on entry (:attr:`peak_rise_mib`): what the block needed on top of what was
    resident already.  A sampled peak can miss a spike shorter than the interval; freed memory the
    allocator kept from earlier work can be reused without showing.  ``None`` where /proc is absent."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.start, self.peak = interval, None, None

    def __enter__(self):
        import threading

        self.start = self.peak = _current_rss_mib()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        if self.start is not None:
            self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            v = _current_rss_mib()
            if v is not None and v > self.peak:
                self.peak = v

    def __exit__(self, *exc):
        self._stop.set()
        if self._t.is_alive():
            self._t.join()
        v = _current_rss_mib()
        if v is not None and self.peak is not None and v > self.peak:
            self.peak = v
        return False

    @property
    def peak_rise_mib(self) -> float | None:
        return None if self.start is None else self.peak - self.start


def _peak_rss_mib() -> float:
    import resource
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2 ** 20 if sys.platform == "darwin" else kb / 1024  # bytes on macOS, KiB on Linux


def _child_quantize(model_spec: str, cfg: QuantConfig, distill: int, calib_path: str | None, ckpt: str,
                    result_path: str, threads: int, progress: bool) -> None:
    """In a fresh process: load the teacher, quantize (timed), save to ``ckpt``; write the seconds and
    peak RSS (``ru_maxrss`` of this process: load + quantize + save) to ``result_path`` as JSON."""
    import json

    try:
        import torch

        from .threads import set_threads

        set_threads(threads)
        from .formats.checkpoint import save_checkpoint
        from .models import load_model, load_tokenizer

        teacher = load_model(model_spec)
        tok = load_tokenizer(model_spec)
        calib = torch.load(calib_path, weights_only=True) if calib_path else None
        rss_load = _peak_rss_mib()
        t0 = time.perf_counter()
        model = _make_model(teacher, cfg, distill, calib, tok, progress)
        secs = time.perf_counter() - t0
        save_checkpoint(model, ckpt)
        res = {"seconds": secs, "peak_rss_mib": _peak_rss_mib(), "rss_after_load_mib": rss_load}
    except Exception as e:  # noqa: BLE001 - reported by the parent as one line
        first = first_line(e, "")
        res = {"error": f"{type(e).__name__}: {first}" if not isinstance(e, OneBitError) else first}
    Path(result_path).write_text(json.dumps(res))


def _quantize_isolated(model_spec, label, cfg, distill, calib_path, ckpt: Path, progress) -> dict:
    import json
    import multiprocessing as mp

    import torch

    result = ckpt.parent / "result.json"
    p = mp.get_context("spawn").Process(
        target=_child_quantize, args=(model_spec, cfg, distill, calib_path, str(ckpt), str(result),
                                      torch.get_num_threads(), progress))
    p.start()
    p.join()
    if not result.exists():
        raise OneBitError(f"method '{label}': the quantization process died (exit code {p.exitcode})")
    res = json.loads(result.read_text())
    if "error" in res:
        raise OneBitError(f"method '{label}': {res['error']}")
    return res


def _max_windows_for(data: str, max_windows: int | None) -> int | None:
    from .eval.data import C4_WINDOWS

    return min(max_windows or C4_WINDOWS, C4_WINDOWS) if data == "c4" else max_windows


def run_compare(model_spec: str, methods: list[tuple[str, QuantConfig | None]], datasets: list[str],
                seqlen: int | None = None, max_windows: int | None = None, calib_samples: int = 128,
                calib_seqlen: int = 256, distill: int = 0, zeroshot_limit: int = 0, progress: bool = False,
                on_row: Callable[[Row], None] | None = None, isolate: bool = False,
                cache_teacher_gib: float = 4.0) -> list[Row]:
    """One :class:`Row` per method spec (see the module doc).  ``isolate``: quantize each method in a
    child process and report its peak RSS (else the peak RSS rise while quantizing in-process); ``cache_teacher_gib``: keep the teacher's logits on the
    KL windows in memory up to this size, so the teacher runs on them once, not once per method."""
    import torch  # here, not at the top: the CLI parser imports this module for its defaults

    from .calibration import teacher_samples
    from .eval.data import load_text
    from .eval.kld import kl_divergence
    from .eval.perplexity import perplexity, tokenize_text, windows
    from .formats.checkpoint import save_checkpoint, unique_state_dict
    from .loading import checkpoint_ledger, load_checkpoint
    from .formats.ledger import dtype_bits
    from .models import context_length, load_model, load_tokenizer
    from .registry import get_handler

    teacher = load_model(model_spec)
    tok = load_tokenizer(model_spec)
    seqlen = seqlen if seqlen is not None else context_length(teacher)
    ids_by_data = {d: tokenize_text(tok, load_text(d)) for d in datasets}
    first = datasets[0]
    kl_windows = _max_windows_for(first, max_windows)
    n_kl = windows(ids_by_data[first], seqlen, kl_windows).shape[0]
    vocab = teacher.get_output_embeddings().weight.shape[0]
    cache: dict | None = {} if n_kl * seqlen * vocab * 4 <= cache_teacher_gib * 2 ** 30 else None
    settings = {"seqlen": seqlen, "max_windows": max_windows, "zeroshot_limit": zeroshot_limit}
    calib, calib_path = None, None
    rows = []
    with tempfile.TemporaryDirectory(prefix="onebit-compare-") as work:
        for label, cfg in methods:
            rss = None
            if calib is None and cfg is not None and (get_handler(cfg).needs_calibration or distill):
                # generated once, when the first method that needs it comes (rows before it are not
                # kept waiting), shared by all methods and not in any method's time
                t0 = time.perf_counter()
                calib = teacher_samples(teacher, calib_samples, min(calib_seqlen, context_length(teacher)),
                                        seed=0, progress=progress)
                log.info("calibration data: %d teacher samples in %.1fs (shared, not in the times)",
                         calib.shape[0], time.perf_counter() - t0)
                if isolate:
                    calib_path = str(Path(work) / "calib.pt")
                    torch.save(calib, calib_path)
            if cfg is None:
                model, secs = teacher, 0.0
                sd = unique_state_dict(teacher)
                bits = sum(t.numel() * dtype_bits(t.dtype) for t in sd.values())
                lin = [m.weight for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
                bpw = float(dtype_bits(lin[0].dtype)) if lin else float("nan")
                e2e = bits / sum(t.numel() for t in sd.values())
                size = bits / 8 / 2 ** 20
            else:
                d = Path(work) / label
                d.mkdir()
                ckpt = d / "ckpt"
                if isolate:
                    res = _quantize_isolated(model_spec, label, cfg, distill, calib_path, ckpt, progress)
                    secs, rss = res["seconds"], res["peak_rss_mib"]
                    log.info("%s: quantized in %.1fs in a child process, peak RSS %.0f MiB (%.0f after "
                             "loading the teacher)", label, secs, rss, res["rss_after_load_mib"])
                    model = load_checkpoint(ckpt)
                    led = checkpoint_ledger(ckpt)
                else:
                    with RSSSampler() as mem:
                        t0 = time.perf_counter()
                        model = _make_model(teacher, cfg, distill, calib, tok, progress)
                        secs = time.perf_counter() - t0
                    rss = mem.peak_rise_mib
                    led = save_checkpoint(model, ckpt)
                size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors")) / 2 ** 20
                bpw, e2e = led.bits_per_linear_weight, led.bits_per_weight
                shutil.rmtree(d)
            model.eval()
            row = Row(label, bpw, size, secs, bits_end_to_end=e2e, peak_rss_mib=rss)
            for dname, ids in ids_by_data.items():
                mw = _max_windows_for(dname, max_windows)
                if dname == first and model is not teacher:
                    kl = kl_divergence(teacher, model, ids, seqlen, mw, progress=progress, teacher_cache=cache)
                    row.ppl[dname] = kl.ppl_student
                    row.extra.update({"kl_to_teacher": kl.mean_kld, "kl_to_teacher" + SE: kl.kld_stderr,
                                      "top1_agreement": 100 * kl.top1_agreement})
                else:
                    row.ppl[dname] = perplexity(model, ids, seqlen, mw, progress=progress,
                                                desc=f"{label} {dname}").ppl
            if model is teacher:
                row.extra.update({"kl_to_teacher": 0.0, "kl_to_teacher" + SE: 0.0, "top1_agreement": 100.0})
            for name, hook in METRIC_HOOKS.items():
                v = hook(teacher, model, tok, ids_by_data, settings)
                if isinstance(v, dict):
                    row.extra.update(v)
                else:
                    row.extra[name] = v
            rows.append(row)
            if on_row:
                on_row(row)
            if model is not teacher:
                del model
    return rows
