"""Decode and prefill speed of an exported onebit model in llama.cpp, against onebit's own runtime
and llama.cpp's F16, Q4_0, TQ1_0 and TQ2_0 of the same model, interleaved in one run.

A Llama with random weights in a real shape (default TinyLlama-1.1B: hidden 2048, FFN 5632, 22
layers, 32 heads / 4 KV heads, vocab 32000; ``--layers`` for fewer) is quantized with foldable
OneBit (SVID on random weights: fine for speed, meaningless for quality) and exported: its
linears are Q1_0 (and, with ``--tq2``, TQ2_0 holding the same ±h values).  The same fp model is
exported with F16 linears and requantized by llama.cpp itself (``llama_model_quantize``) to Q4_0,
TQ1_0 and TQ2_0 (of its own rounding; ``--pure``: every tensor, embeddings and head included,
in that type).  Every variant runs: one prefill of ``--prompt`` tokens, then ``--new-tokens``
single-token steps, for each thread count; variants alternate for ``--rounds`` rounds and the
medians are printed with the file size, the bytes a decode step reads, the decode speed that
the measured memory bandwidth would allow (bytes per token / copy bandwidth), and the ratios to
llama.cpp TQ2_0 (decode) and F16 (prefill).

onebit's own runtime runs the packed checkpoint (fp32 activations) in these variants:
``HF loop`` (transformers' forward with its dynamic cache: the loop before issue 19), ``static``
(onebit.generate.StaticDecoder: static KV cache, last-position logits only), and ``static, head
int8`` / ``head int4-g32`` (the embedding and the untied head quantized by
``onebit.embeddings.EmbedQuantConfig``, the head through ``torch.ops.onebit.quant_linear``);
``--compile`` adds the static loop with a ``torch.compile``'d step (its compile time printed).
Three more variants run the int8-head checkpoint with other settings: ``bf16`` (activations in
bfloat16: the AVX512-BF16 GEMV, and for prefill the AMX bf16 GEMM on ±1 rows), ``shift`` (the
other exact AVX-512 GEMV, ``ONEBIT_CPU_ALGO=shift``: on other AVX-512 CPUs (e.g. AMD Zen 4)
the default is now the fixed-point ``fxlut`` GEMV, on Intel the masked-sum one; with
``ONEBIT_CPU_ISA=avx2`` it is ``table`` instead, the AVX2 default before ``fxlut``) and ``int8 act``
(``ONEBIT_CPU_ALGO=i8``: activations quantized to int8 per block of 128 on the fly, the VNNI GEMV;
not exact, ~0.7 % error per layer, as llama.cpp's TQ2_0 / Q1_0 do with their q8 activations; with
AVX512-VNNI the int4 / int8 head's GEMV then runs on int8 activations too), and ``head int4-g32,
int8 act`` (the same setting with the int4 head).

Memory: the fp model is built and quantized in fp16 (not fp32), the llama.cpp files and the onebit
checkpoints are opened one at a time (each round loads, runs and closes them), and the process's peak RSS (ru_maxrss) is
printed at the end against the largest model measured (the F16 file): the bench's bar is <= 2x.

    python bench/gguf_speed.py                      # TinyLlama shape, 1 and 2 threads, 3 rounds
    python bench/gguf_speed.py --layers 2 --rounds 1 --new-tokens 8 --prompt 64   # quick
Run it on an otherwise idle machine; it prints the load average before and after, and the CPU flags.
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, machine  # noqa: E402
from kernel_speed import env  # noqa: E402  (bench/kernel_speed.py: set dispatcher variables, restore after)

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "models" / "stories3M"
LLAMA_FTYPES = {"q4_0": 2, "tq1_0": 36, "tq2_0": 37}


def build_fp(layers: int, out: Path) -> Path:
    import shutil

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                      max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # the fp model in fp16: half the memory of fp32
    try:
        model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    for p in model.parameters():       # trained-model-like magnitudes
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    model.save_pretrained(out)
    del model
    gc.collect()
    for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (TOKENIZER / f).is_file():
            shutil.copy(TOKENIZER / f, out / f)
    return out


def llama_quantize(src: Path, dst: Path, ftype: int, pure: bool) -> None:
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype, p.nthread, p.pure = ftype, 2, pure
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {dst.name}")


class LlamaCpp:
    """A GGUF file in llama.cpp (llama-cpp-python), opened on the first run; :meth:`close` unmaps it
    (a bench holding several files opens one at a time)."""

    def __init__(self, path: Path, n_ctx: int = 1024):
        self.path, self.n_ctx, self.llm = path, n_ctx, None

    def open(self) -> None:
        from llama_cpp import Llama

        if self.llm is None:
            self.llm = Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_batch=512, n_ubatch=512,
                             verbose=False)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close() if hasattr(self.llm, "close") else None
            self.llm = None
            gc.collect()

    def run(self, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
        if self.llm is None:      # freshly mapped: one untimed token pages every weight in
            self.open()
            self.llm.reset()
            self.llm.eval(prompt[:1])
        self.llm.set_threads(threads, threads) if hasattr(self.llm, "set_threads") else \
            self.llm._ctx.set_n_threads(threads, threads)
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        t1 = time.perf_counter()
        for i in range(new_tokens):
            self.llm.eval([prompt[i % len(prompt)]])
        t2 = time.perf_counter()
        return len(prompt) / (t1 - t0), new_tokens / (t2 - t1)


class OneBitRuntime:
    """A onebit checkpoint in onebit's runtime: one prefill, then single-token steps.  ``loop``:
    'static' (onebit.generate.StaticDecoder: static KV cache, last-position logits; ``compile``:
    torch.compile its step) or 'hf' (transformers' forward with its dynamic cache, logits of every
    prompt position).  The model is loaded (``load_runtime_model(ckpt)``) when the variant runs and
    dropped by ``close()``, as the llama.cpp files are: one model in memory at a time."""

    def __init__(self, ckpt: Path | None = None, loop: str = "static", compile: bool = False,
                 env: dict[str, str] | None = None, dtype: torch.dtype = torch.float32,
                 model: torch.nn.Module | None = None):
        self.ckpt, self.loop, self.compile = ckpt, loop, compile
        #: environment set while this variant runs (e.g. ONEBIT_CPU_ALGO=i8), and the activation
        #: dtype the model is cast to when loaded
        self.env, self.dtype = dict(env or {}), dtype
        #: a model given in memory (bench/smollm2_speed.py) is kept, not loaded and dropped
        self.kept = model.eval() if model is not None else None
        self.model: torch.nn.Module | None = self.kept
        self.decoder = None
        self.warm = False
        #: seconds of the first decode step after the first load (torch.compile's time when compile=True)
        self.first_step_s: float | None = None

    def open(self) -> torch.nn.Module:
        if self.model is None:
            self.model = cast_runtime(load_runtime_model(self.ckpt), self.dtype)
            self.decoder, self.warm = None, False
        return self.model

    def close(self) -> None:
        if self.kept is None:
            self.model = self.decoder = None
            self.warm = False
            gc.collect()

    def sizes(self) -> tuple[int, int]:
        """module_bytes of the model (loaded for the count, then dropped)."""
        out = module_bytes(self.open())
        self.close()
        return out

    def run(self, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
        with env(**self.env):
            self.open()
            return self._run(prompt, new_tokens, threads)

    @torch.inference_mode()
    def _run(self, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        ids = torch.tensor([prompt])
        if self.loop == "hf":
            return self._run_hf(ids, new_tokens)
        from onebit.generate import StaticDecoder

        if self.decoder is None or self.decoder.max_len < len(prompt) + new_tokens + 1:
            self.decoder = StaticDecoder(self.model, len(prompt) + new_tokens + 1, compile=self.compile)
        dec = self.decoder
        if not self.warm:                     # untimed warm-up: first calls, the compile (if any)
            dec.step(dec.prefill(ids[:, :8]).argmax(-1, keepdim=True))
            self.warm = True
            if self.first_step_s is None:
                self.first_step_s = dec.first_step_s
        t0 = time.perf_counter()
        tok = dec.prefill(ids).argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        t2 = time.perf_counter()
        for _ in range(new_tokens):
            tok = dec.step(tok).argmax(-1, keepdim=True)
        return len(prompt) / (t1 - t0), new_tokens / (time.perf_counter() - t2)

    def _run_hf(self, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
        from onebit.calibration import cache_kw

        kw = cache_kw(self.model)
        if not self.warm:                     # untimed warm-up
            self.model(ids[:, :8], use_cache=True)
            self.warm = True
        t0 = time.perf_counter()
        out = self.model(ids, use_cache=True)
        t1 = time.perf_counter()
        past, tok = getattr(out, kw if kw == "cache" else "past_key_values"), out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        for _ in range(new_tokens):
            out = self.model(tok, use_cache=True, **{kw: past})
            past, tok = getattr(out, kw if kw == "cache" else "past_key_values"), out.logits[:, -1].argmax(-1, keepdim=True)
        return ids.shape[1] / (t1 - t0), new_tokens / (time.perf_counter() - t2)


def peak_rss() -> int:
    """This process's peak resident set size so far (bytes; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def module_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of every unique tensor, bytes a decode step reads: all but the input embedding's)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    emb = model.get_input_embeddings()
    emb_bytes = sum(t.numel() * t.element_size() for t in list(emb.parameters()) + list(emb.buffers()))
    return total, total - emb_bytes


def onebit_runtimes(ckpt: Path, compile: bool) -> dict[str, OneBitRuntime]:
    """The onebit runtime variants (each loads its checkpoint when it runs)."""
    out = {"onebit runtime HF loop": OneBitRuntime(ckpt, loop="hf"),
           "onebit runtime static": OneBitRuntime(ckpt)}
    if compile:
        out["onebit runtime static+compile"] = OneBitRuntime(ckpt, compile=True)
    for kind, path in embed_ckpts(ckpt).items():
        label = "head int8" if kind == "int8" else "head int4-g32"
        if not path.is_dir():
            print(f"no {path} (a --reuse of an older --workdir): the {label} variant is skipped")
            continue
        out[f"onebit runtime static, {label}"] = OneBitRuntime(path)
        if kind == "int8":  # the same checkpoint, other settings
            out["onebit runtime static, head int8, bf16"] = OneBitRuntime(path, dtype=torch.bfloat16)
            if os.environ.get("ONEBIT_CPU_ISA", "").strip().lower() == "avx2":  # the AVX2 default before fxlut
                out["onebit runtime static, head int8, table"] = OneBitRuntime(path, env={"ONEBIT_CPU_ALGO": "table"})
            else:
                out["onebit runtime static, head int8, shift"] = OneBitRuntime(path, env={"ONEBIT_CPU_ALGO": "shift"})
            out["onebit runtime static, head int8, int8 act"] = OneBitRuntime(path, env={"ONEBIT_CPU_ALGO": "i8"})
        else:  # int8 activations with the int4 head (its VNNI GEMV reads half the int8 head's bytes)
            out["onebit runtime static, head int4-g32, int8 act"] = OneBitRuntime(path, env={"ONEBIT_CPU_ALGO": "i8"})
    return out


def step_bytes_gguf(path: Path) -> int:
    """Bytes one decode step reads: every tensor but the token embedding (read one row)."""
    from onebit.formats.gguf_header import read_gguf_header

    h = read_gguf_header(path)
    return sum(t.n_bytes or 0 for t in h.tensors if t.name != "token_embd.weight")


def prepare(args, work: Path, files: dict, ckpt: Path) -> None:
    import onebit
    from onebit.export.gguf import export_gguf
    from onebit.models import load_model

    fp_dir = build_fp(args.layers, work / "fp")
    export_gguf(fp_dir, files["llama.cpp F16"], overwrite=True)
    for name, ft in LLAMA_FTYPES.items():
        llama_quantize(files["llama.cpp F16"], files[f"llama.cpp {name.upper()}"], ft, args.pure)
    fp = load_model(str(fp_dir), dtype=torch.float16)     # fp16: half the memory of fp32
    onebit.quantize(fp, onebit.OneBitConfig(foldable=True), progress=False)
    onebit.save(fp, str(ckpt), source=str(fp_dir), overwrite=True)
    del fp
    gc.collect()
    export_gguf(ckpt, files["onebit → llama.cpp Q1_0"], embed_type=args.embed_type, overwrite=True)
    if args.tq2:
        export_gguf(ckpt, files["onebit → llama.cpp TQ2_0"], weight_type="tq2_0", embed_type=args.embed_type,
                    overwrite=True)
    from onebit.embeddings import EmbedQuantConfig
    from onebit.pipelines.embeddings import quantize_embeddings

    for kind, path in embed_ckpts(ckpt).items():   # embedding + head quantized, as `--embed-quant`
        m = onebit.load(str(ckpt))
        quantize_embeddings(m, EmbedQuantConfig(kind, group_size=32, head=True))
        onebit.save(m, str(path), source=str(fp_dir), overwrite=True)
        del m
        gc.collect()


def embed_ckpts(ckpt: Path) -> dict[str, Path]:
    return {kind: ckpt.with_name(f"{ckpt.name}-embed-{kind}") for kind in ("int8", "int4")}


def load_runtime_model(path: Path) -> torch.nn.Module:
    """A checkpoint in fp32 activations; quantized tables keep their stored (fp16) scales."""
    import onebit

    return cast_runtime(onebit.load(str(path)).eval(), torch.float32)


def cast_runtime(m: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast the model's floating tensors (activations follow) to ``dtype``, in place; packed bits
    and the quantized tables' stored fp16 scales keep their dtype (their modules' ``_apply``)."""
    return m.to(dtype)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512, help="prefill tokens (default 512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tq2", action="store_true", help="also the onebit export with --weight-type tq2_0")
    ap.add_argument("--no-onebit-runtime", action="store_true", help="skip onebit's own runtime")
    ap.add_argument("--compile", action="store_true",
                    help="also onebit's static loop with a torch.compile'd step (compile time printed)")
    ap.add_argument("--only", default=None,
                    help="comma-separated substrings: run only the variants whose name has one "
                    "(the TQ2_0 and F16 baselines always run)")
    ap.add_argument("--pure", action="store_true", help="llama.cpp quantizes embeddings and head too")
    ap.add_argument("--embed-type", default="q4_0",
                    help="onebit export's embedding and head type (default q4_0, as llama.cpp's Q4_0 "
                    "file stores its embedding; llama.cpp keeps the head in Q6_K)")
    ap.add_argument("--workdir", default=None, help="keep the files here (default: a temporary dir)")
    ap.add_argument("--prepare-only", action="store_true", help="write the files to --workdir and stop")
    ap.add_argument("--reuse", action="store_true", help="use the files already in --workdir")
    args = ap.parse_args()
    from onebit.formats.gguf_header import read_gguf_header

    threads = [int(t) for t in args.threads.split(",")]
    print(machine())
    try:  # which ISA the llama.cpp build uses (e.g. an AVX2-only build, docs/kernels.md)
        import llama_cpp
        print(f"llama.cpp {llama_cpp.__version__} ({Path(llama_cpp.__file__).parent}): "
              f"{llama_cpp.llama_print_system_info().decode().strip()}")
    except Exception as e:  # noqa: BLE001 (reported, then the runs fail with the real error)
        print(f"llama.cpp: not importable ({type(e).__name__}: {e})")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gguf_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = {"llama.cpp F16": work / "f16.gguf"}
    files.update({f"llama.cpp {n.upper()}": work / f"{n}.gguf" for n in LLAMA_FTYPES})
    files["onebit → llama.cpp Q1_0"] = work / "onebit-q1_0.gguf"
    if args.tq2:
        files["onebit → llama.cpp TQ2_0"] = work / "onebit-tq2_0.gguf"
    ckpt = work / "onebit-foldable"
    if args.prepare_only:
        prepare(args, work, files, ckpt)          # the child process below, or a user's call
        print(f"prepare: peak RSS {peak_rss() / 2**30:.2f} GiB", flush=True)
        return 0
    if not args.reuse:   # in a child process: its peak (building the fp model) is not the bench's
        import subprocess

        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--prepare-only", "--workdir", str(work)],
                       check=True)
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(f"prepared {len(files)} GGUF files and {1 + len(embed_ckpts(ckpt))} onebit checkpoints in "
          f"{time.perf_counter() - t0:.0f}s ({work})" +
          ("" if args.reuse else f"; preparing process peak RSS {child / 2**30:.2f} GiB") +
          f"; this process so far {peak_rss() / 2**30:.2f} GiB", flush=True)
    for name, f in files.items():
        kinds: dict[str, set] = {}
        for t in read_gguf_header(f).tensors:
            if "norm" not in t.name:
                kinds.setdefault("blocks" if t.name.startswith("blk.") else t.name.split(".")[0], set()).add(
                    t.type_name)
        print(f"  {name:32s} " + ", ".join(f"{k}: {'/'.join(sorted(v))}" for k, v in kinds.items()))
    n_ctx = max(1024, args.prompt + args.new_tokens + 8)
    runners = {name: LlamaCpp(p, n_ctx) for name, p in files.items()}
    sizes = {name: (f.stat().st_size, step_bytes_gguf(f)) for name, f in files.items()}
    if not args.no_onebit_runtime:
        for name, r in onebit_runtimes(ckpt, args.compile).items():
            runners[name] = r
            sizes[name] = r.sizes()
        print(f"onebit runtime variants loaded; peak RSS so far {peak_rss() / 2**30:.2f} GiB", flush=True)
    if args.only:
        keep = [k for k in args.only.split(",") if k]
        runners = {n: r for n, r in runners.items()
                   if n in ("llama.cpp TQ2_0", "llama.cpp F16") or any(k in n for k in keep)}
    prompt = [int(t) for t in torch.randint(3, 4000, (args.prompt,), generator=torch.Generator().manual_seed(0))]
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for name, run in runners.items():
            for t in threads:
                res.setdefault((name, t), []).append(run.run(prompt, args.new_tokens, t))
            run.close()                       # llama.cpp: one file mapped at a time
        print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}, "
              f"peak RSS so far {peak_rss() / 2**30:.2f} GiB", flush=True)
    for name, run in runners.items():
        if isinstance(run, OneBitRuntime) and run.compile:
            print(f"{name}: first decode step (torch.compile) {run.first_step_s:.1f} s")
    torch.set_num_threads(max(threads))
    bw = copy_bandwidth() * 1e9
    print(f"\nmeasured copy bandwidth: {bw / 1e9:.1f} GB/s; TinyLlama shape with {args.layers} layers; "
          f"prefill {args.prompt} tokens, decode {args.new_tokens} tokens; medians of {args.rounds} rounds")
    base = "llama.cpp TQ2_0"
    hdr = f"{'variant':38s} {'MiB':>8s} {'MiB/token':>9s} {'bw limit':>9s}"
    for t in threads:
        hdr += f" | {t}T decode {'vs TQ2_0':>8s}  prefill {'vs F16':>7s}"
    print(hdr)
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in res.items()}
    for name in runners:
        size, sb = sizes[name]
        line = f"{name:38s} {size / 2**20:8.1f} {sb / 2**20:9.1f} {bw / sb:8.1f}/s"
        for t in threads:
            p, d = med[(name, t)]
            line += (f" | {d:9.2f} {d / med[(base, t)][1]:8.2f}x {p:8.1f} "
                     f"{p / med[('llama.cpp F16', t)][0]:7.2f}x")
        print(line)
    for t in threads:
        ob = {n: med[(n, t)] for n in runners if n.startswith("onebit runtime")}
        if ob:
            best_d = max(ob, key=lambda n: ob[n][1])
            best_p = max(ob, key=lambda n: ob[n][0])
            print(f"{t} thread(s): best onebit decode {ob[best_d][1] / med[(base, t)][1]:.2f}x TQ2_0 "
                  f"({best_d}); best prefill {ob[best_p][0] / med[('llama.cpp F16', t)][0]:.2f}x F16 ({best_p})")
    peak = peak_rss()
    largest = max(size for size, _ in sizes.values())
    print(f"peak RSS of this process (ru_maxrss): {peak / 2**30:.2f} GiB = {peak / largest:.2f}x the largest "
          f"model measured ({largest / 2**30:.2f} GiB); bar <= 2x")
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
