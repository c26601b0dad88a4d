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
medians are printed with the file size, the bytes a decode step reads and the decode speed that
the measured memory bandwidth would allow (bytes per token / copy bandwidth).

    python bench/gguf_speed.py                      # TinyLlama shape, 1 and 2 threads, 3 rounds
    python bench/gguf_speed.py --layers 2 --rounds 1 --new-tokens 8   # quick
Run it on an otherwise idle machine; it prints the load average before and after.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, machine  # noqa: E402

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
    model = LlamaForCausalLM(cfg)
    for p in model.parameters():       # trained-model-like magnitudes
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    model.save_pretrained(out)
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
    def __init__(self, path: Path):
        from llama_cpp import Llama

        self.path = path
        self.llm = Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_ubatch=512, verbose=False)

    def run(self, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
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
    """A model in onebit's runtime (a checkpoint path, or a model already in memory): one prefill,
    then single-token steps with the KV cache."""

    def __init__(self, ckpt: Path | None = None, model: torch.nn.Module | None = None):
        import onebit

        self.model = (model if model is not None else onebit.load(str(ckpt)).float()).eval()

    @torch.inference_mode()
    def run(self, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
        torch.set_num_threads(threads)
        ids = torch.tensor([prompt])
        t0 = time.perf_counter()
        out = self.model(ids, use_cache=True)
        t1 = time.perf_counter()
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        for _ in range(new_tokens):
            out = self.model(tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        return len(prompt) / (t1 - t0), new_tokens / (time.perf_counter() - t2)


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
    fp = load_model(str(fp_dir), dtype=torch.float32)
    onebit.quantize(fp, onebit.OneBitConfig(foldable=True), progress=False)
    onebit.save(fp, str(ckpt), source=str(fp_dir), overwrite=True)
    del fp
    gc.collect()
    export_gguf(ckpt, files["onebit → llama.cpp Q1_0"], embed_type=args.embed_type, overwrite=True)
    if args.tq2:
        export_gguf(ckpt, files["onebit → llama.cpp TQ2_0"], weight_type="tq2_0", embed_type=args.embed_type,
                    overwrite=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512, help="prefill tokens (default 512)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tq2", action="store_true", help="also the onebit export with --weight-type tq2_0")
    ap.add_argument("--no-onebit-runtime", action="store_true", help="skip onebit's own runtime")
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
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gguf_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = {"llama.cpp F16": work / "f16.gguf"}
    files.update({f"llama.cpp {n.upper()}": work / f"{n}.gguf" for n in LLAMA_FTYPES})
    files["onebit → llama.cpp Q1_0"] = work / "onebit-q1_0.gguf"
    if args.tq2:
        files["onebit → llama.cpp TQ2_0"] = work / "onebit-tq2_0.gguf"
    ckpt = work / "onebit-foldable"
    if not args.reuse:
        prepare(args, work, files, ckpt)
    print(f"prepared {len(files)} GGUF files in {time.perf_counter() - t0:.0f}s ({work})", flush=True)
    for name, f in files.items():
        kinds: dict[str, set] = {}
        for t in read_gguf_header(f).tensors:
            if "norm" not in t.name:
                kinds.setdefault("blocks" if t.name.startswith("blk.") else t.name.split(".")[0], set()).add(
                    t.type_name)
        print(f"  {name:32s} " + ", ".join(f"{k}: {'/'.join(sorted(v))}" for k, v in kinds.items()))
    if args.prepare_only:
        return 0

    runners = {name: LlamaCpp(p) for name, p in files.items()}
    if not args.no_onebit_runtime:
        runners["onebit runtime (packed, fp32)"] = OneBitRuntime(ckpt)
    prompt = [int(t) for t in torch.randint(3, 4000, (args.prompt,), generator=torch.Generator().manual_seed(0))]
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        for t in threads:
            for name, run in runners.items():
                res.setdefault((name, t), []).append(run.run(prompt, args.new_tokens, t))
        print(f"round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    torch.set_num_threads(max(threads))
    bw = copy_bandwidth() * 1e9
    print(f"\nmeasured copy bandwidth: {bw / 1e9:.1f} GB/s; TinyLlama shape with {args.layers} layers; "
          f"prefill {args.prompt} tokens, decode {args.new_tokens} tokens; medians of {args.rounds} rounds")
    base = "llama.cpp TQ2_0"
    hdr = f"{'variant':32s} {'file MiB':>9s} {'MiB/token':>9s} {'bw limit':>9s}"
    for t in threads:
        hdr += f" | {t}T decode {'vs TQ2_0':>8s}  prefill {'vs F16':>7s}"
    print(hdr)
    med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in res.items()}
    for name in runners:
        if name in files:
            size = files[name].stat().st_size
            sb = step_bytes_gguf(files[name])
        else:
            size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
            sb = size
        line = f"{name:32s} {size / 2**20:9.1f} {sb / 2**20:9.1f} {bw / sb:8.1f}/s"
        for t in threads:
            p, d = med[(name, t)]
            line += (f" | {d:9.2f} {d / med[(base, t)][1]:8.2f}x {p:8.1f} "
                     f"{p / med[('llama.cpp F16', t)][0]:7.2f}x")
        print(line)
    print(f"load average at the end: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
