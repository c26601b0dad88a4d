"""Streaming quantization of a Llama-2-7B-shaped checkpoint: wall time and peak RSS.

Writes a Llama-2-7B-shaped fp16 checkpoint with random weights (32 layers, hidden 4096,
FFN 11008, vocab 32000: 6.74 G parameters, 12.6 GiB) to disk in shards, tensor by tensor
(the writer holds one 320 MB pool of random fp16 values and writes slices of it), then runs

    onebit quantize SRC OUT --streaming

in a child process and reports its wall time and peak RSS (the child's own ``ru_maxrss``, from ``os.wait4``),
against two baselines measured in the same run:

* memory: the fp16 weights themselves, i.e. the least an in-memory quantize must hold;
* time: a child that only reads every tensor of the checkpoint (the I/O floor).

Then (``--check-load``, default on) a child loads the packed result with
``AutoModelForCausalLM.from_pretrained`` and runs one forward pass.  Everything is deleted
at the end unless ``--keep``.  Targets (issue #7): peak RSS <= 3 GB, <= 10 minutes.

    python bench/streaming.py                       # under /tmp/onebit-bench-streaming
    python bench/streaming.py --dir /big/disk --layers 4   # a quick, smaller run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GiB = 2**30
# this process stays small (no torch import): a child's ru_maxrss includes the parent's pages it
# shared between fork and exec, so everything heavy, the writer included, runs in children


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {version('torch')}, "
            f"transformers {version('transformers')}, Python {platform.python_version()}")


def llama7b_config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": layers, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "dtype": "float16"}


def llama7b_tensors(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    h, f, v = 4096, 11008, 32000
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,))]
        out += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
        out += [(p + "post_attention_layernorm.weight", (h,)), (p + "mlp.gate_proj.weight", (f, h)),
                (p + "mlp.up_proj.weight", (f, h)), (p + "mlp.down_proj.weight", (h, f))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_checkpoint(d: Path, layers: int, shard_bytes: int) -> int:
    """Sharded fp16 safetensors, header first, then data slices of one random pool."""
    import torch

    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(llama7b_config(layers), indent=2))
    tensors = llama7b_tensors(layers)
    shards, cur, size = [], [], 0
    for name, shape in tensors:
        n = 2 * numel(shape)
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    shards.append(cur)
    gen = torch.Generator().manual_seed(0)
    pool = torch.empty(160_000_000, dtype=torch.float16)
    for i in range(0, pool.numel(), 10_000_000):
        pool[i:i + 10_000_000] = torch.randn(min(10_000_000, pool.numel() - i), generator=gen) * 0.02
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            n = 2 * numel(shape)
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header).encode()
        hb += b" " * (-len(hb) % 8)
        with open(d / fname, "wb") as fh:
            fh.write(len(hb).to_bytes(8, "little") + hb)
            for name, shape in shard:
                k = numel(shape)
                start = int(torch.randint(0, pool.numel() - k + 1, (1,), generator=gen))
                fh.write(memoryview(pool[start:start + k].view(torch.uint8).numpy()))
        total += off
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


READ_ALL = """
import sys
from onebit.formats.checkpoint import weight_files
from onebit.formats.sharded import SafetensorsReader
for f in weight_files(sys.argv[1]):
    r = SafetensorsReader(f)
    for k in r.names():
        r.read(k)
    r.close()
"""

CHECK_LOAD = """
import sys, time, torch, onebit
from transformers import AutoModelForCausalLM
t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
n = sum(type(x).__name__ == "OneBitLinear" for x in m.modules())
with torch.no_grad():
    y = m(torch.tensor([[1, 450, 4996, 17354]])).logits
assert torch.isfinite(y).all()
print(f"from_pretrained + 1 forward: {time.perf_counter() - t:.1f}s, {n} OneBitLinear layers")
"""


def child(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes of this child alone (wait4's rusage), stdout)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            sys.exit(f"child failed ({p.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
        return wall, usage.ru_maxrss * 1024, out.read()  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/onebit-bench-streaming", help="work directory (deleted at the end)")
    ap.add_argument("--layers", type=int, default=32, help="decoder layers (Llama-2-7B: 32)")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="input shard size in GB")
    ap.add_argument("--check-load", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints")
    ap.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)  # the writer child
    args = ap.parse_args()
    if args.write_only:
        write_checkpoint(Path(args.dir), args.layers, int(args.shard_gb * 1e9))
        return

    work = Path(args.dir)
    if work.exists():
        sys.exit(f"{work} exists; remove it or pass another --dir")
    need = 2 * 4096 * (2 * 32000 + args.layers * (4 * 4096 + 3 * 11008)) * 1.15
    free = shutil.disk_usage(work.parent if work.parent.exists() else "/").free
    print(f"machine: {machine()}")
    print(f"disk: {free / GiB:.1f} GiB free under {work.parent}, need ~{need / GiB:.1f} GiB")
    if free < need:
        sys.exit("not enough disk space")
    src, out = work / "llama7b-fp16", work / "llama7b-1bit"
    try:
        t = time.perf_counter()
        child([sys.executable, __file__, "--write-only", "--dir", str(src), "--layers", str(args.layers),
               "--shard-gb", str(args.shard_gb)])
        nbytes = json.loads((src / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        nshards = len(list(src.glob("*.safetensors")))
        print(f"wrote {src}: {nbytes / GiB:.2f} GiB fp16 in {nshards} shards, "
              f"{nbytes / 2 / 1e9:.2f} G params, in {time.perf_counter() - t:.0f}s")

        cmd = [sys.executable, "-m", "onebit.cli.main", "quantize", str(src), str(out), "--streaming", "-q"]
        t_q, rss_q, so = child(cmd)
        print(f"onebit quantize --streaming (child):  {t_q:7.1f}s  peak RSS {rss_q / GiB:5.2f} GiB")
        print("  " + so.strip().replace("\n", "\n  "))
        t_read, _, _ = child([sys.executable, "-c", READ_ALL, str(src)])
        print(f"baseline, read every tensor (child):  {t_read:7.1f}s")
        out_bytes = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        print(f"ratios: time {t_q / t_read:.1f}x the read-only pass; peak RSS {rss_q / nbytes:.3f}x the fp16 "
              f"weights ({nbytes / GiB:.2f} GiB, the least an in-memory quantize holds); "
              f"output {out_bytes / GiB:.2f} GiB ({out_bytes / nbytes:.3f}x) in "
              f"{len(list(out.glob('*.safetensors')))} shards")
        ok_mem, ok_time = rss_q <= 3e9, t_q <= 600
        print(f"targets: peak RSS <= 3 GB: {'met' if ok_mem else 'MISSED'} ({rss_q / 1e9:.2f} GB); "
              f"<= 10 min: {'met' if ok_time else 'MISSED'} ({t_q / 60:.1f} min)")
        if args.check_load:
            t_l, _, so = child([sys.executable, "-c", CHECK_LOAD, str(out)])
            print(f"check: {so.strip()}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            print(f"removed {work}")


if __name__ == "__main__":
    main()
