"""Packed checkpoints: a Hugging Face model directory whose linears are packed.

Layout of ``OUT/``::

    config.json             the model's config + quantization_config
                            {quant_method: "onebit", format_version, method,
                             <method settings>, modules: {name: [out, in]}}
    model.safetensors       every tensor once (tied weights stored once);
                            per OneBit linear: <name>.weight_packed (uint8,
                            [out, ceil(in/8)], bit order in formats.packing),
                            <name>.g [in], <name>.h [out] (fp16 by default);
                            quantized embeddings / untied head (format
                            version 2, ``quantization_config["embed"]``):
                            <name>.weight_packed (uint8 codes) + <name>.scales
                            (fp16 per group), see onebit.embeddings
    generation_config.json  copied when the model has one
    tokenizer files         copied from the source model

Writes go to a temporary sibling directory that is renamed into place at the
end, so ``OUT`` is either complete or absent; the temporary's name holds the writer's pid, and
the next write of the same ``OUT`` removes those whose process is gone (a kill mid-write).  Reading uses safetensors only
(no pickle): nothing in a checkpoint is ever executed.

This module is storage only: writing, and reading tensors, headers and ``quantization_config``
(with its version check).  Rebuilding a model from a checkpoint (meta skeleton, swapped modules,
quantized embeddings) is :mod:`onebit.loading`'s job (``load_checkpoint``, ``checkpoint_ledger``).
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..config import QUANT_METHOD, check_format_version
from ..errors import CheckpointError, OneBitError, first_line
from ..fileio import save_safetensors
from .ledger import Ledger, ledger_from_state_dict

log = logging.getLogger("onebit")

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_HEADER_DTYPE_BITS = {"U8": 8, "I8": 8, "BOOL": 8, "F16": 16, "BF16": 16, "F32": 32, "F64": 64,
                      "I16": 16, "I32": 32, "I64": 64, "U16": 16, "U32": 32, "U64": 64,
                      "F8_E4M3": 8, "F8_E5M2": 8}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja")


# --------------------------------------------------------------------------- writing
def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with tensors that share storage (tied weights) kept once."""
    seen: dict[tuple, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) \
            if t.device.type != "meta" else (name,)
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def prepare_output_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise OneBitError(f"output '{out}' already exists; pass --overwrite (overwrite=True in Python) to replace it")
    if out.exists() and not out.is_dir():
        raise OneBitError(f"output '{out}' exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Remove the ``.OUT.tmp-PID-*`` / ``.OUT.old-PID`` directories beside ``out`` left by a
    write whose process is gone (killed mid-write); those of a live process are left alone."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        prefix = f".{out.name}.{kind}-"
        for p in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = p.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or _pid_alive(int(pid)) or not p.is_dir() or p.is_symlink():
                continue
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
                log.info("removed %s, left by an interrupted write", p)
    return removed


class atomic_dir:
    """Context manager: yields a temp dir beside ``out`` (``.OUT.tmp-PID-XXXX``, after removing
    those of earlier writes whose process is gone); renames it to ``out`` on success."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = prepare_output_dir(out, overwrite)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        remove_stale_temporaries(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-{os.getpid()}-", dir=self.out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.rename(self.out, old)
        os.rename(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def copy_tokenizer_files(src: str | os.PathLike | None, dst: Path, tokenizer=None) -> None:
    if src is not None and Path(src).is_dir():
        copied = False
        for f in TOKENIZER_FILES:
            if (Path(src) / f).is_file():
                shutil.copyfile(Path(src) / f, dst / f)
                copied = True
        if copied:
            return
    if tokenizer is not None:
        tokenizer.save_pretrained(dst)


def save_checkpoint(model: nn.Module, out: str | os.PathLike, tokenizer=None,
                    source: str | os.PathLike | None = None, overwrite: bool = False) -> Ledger:
    """Write ``model`` (already quantized) as a packed checkpoint; return its ledger."""
    qc = getattr(model.config, "quantization_config", None)
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise OneBitError("model is not quantized by onebit (no quantization_config); run quantize() first")
    sd = unique_state_dict(model)
    with atomic_dir(out, overwrite) as tmp:
        save_safetensors(sd, tmp / WEIGHTS_NAME,
                         metadata={"format": "pt", "onebit_format_version": str(qc["format_version"])})
        cfg = model.config.to_dict()
        cfg["quantization_config"] = qc
        if cfg.get("dtype") is None:   # else transformers guesses it from the first float tensor (fp16 scales)
            cfg["dtype"] = str(next((p.dtype for p in model.parameters() if p.is_floating_point()),
                                    torch.float32)).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            try:
                gen.save_pretrained(tmp)
            except Exception as e:  # a generation config that does not validate is not fatal
                log.warning("generation_config not saved: %s", e)
        copy_tokenizer_files(source, tmp, tokenizer)
    log.info("wrote %s", out)
    return ledger_from_state_dict(sd, qc["modules"], qc.get("embed"))


# --------------------------------------------------------------------------- reading
def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"'{path}' is not a model directory (no config.json)")
    try:
        return json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"'{cfg_file}' is not valid JSON: {e}")


def is_packed_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    qc = read_config(p).get("quantization_config")
    return isinstance(qc, dict) and qc.get("quant_method") == QUANT_METHOD


def read_quant_config(path: str | os.PathLike, check_version: bool = True) -> dict:
    """A onebit checkpoint's ``quantization_config``; ``check_version=False`` when the caller builds
    the method's config from it next (``registry.config_from_dict`` checks the version: once per load)."""
    cfg = read_config(path)
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise CheckpointError(f"'{path}' has no quantization_config in config.json: not a onebit checkpoint")
    if qc.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(f"'{path}' was quantized by '{qc.get('quant_method')}', not onebit")
    if check_version:
        check_format_version(qc.get("format_version"))
    return qc


def read_safetensors_header(file: str | os.PathLike) -> tuple[int, dict]:
    """(header length, header dict) of a safetensors file, validated against the file size."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"missing weights file '{file}'")
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"'{file}' is truncated (no safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"'{file}' is truncated or corrupt (header length {n} > file size)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"'{file}' has a corrupt safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"'{file}' has a corrupt safetensors header")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"'{file}' has a corrupt safetensors header (__metadata__)")
    spans = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            s, e = spec["data_offsets"]
            shape = list(spec["shape"])
            bits = _HEADER_DTYPE_BITS[spec["dtype"]]
            if not all(type(d) is int and d >= 0 for d in shape + [s, e]):
                raise ValueError
        except Exception:
            raise CheckpointError(f"'{file}': malformed header entry for tensor '{name}'")
        numel = 1
        for d in shape:
            numel *= d
        if e - s != numel * bits // 8 or e < s:
            raise CheckpointError(f"'{file}': header of tensor '{name}' does not match its shape {shape}")
        spans.append((s, e, name))
    end = 0
    for s, e, name in sorted(spans):  # tensors tile the data buffer: no gaps, no overlaps
        if s != end:
            raise CheckpointError(f"'{file}': tensor '{name}' overlaps another or leaves a gap in the data")
        end = e
    if 8 + n + end != size:
        raise CheckpointError(f"'{file}' is truncated or corrupt: header promises {8 + n + end} bytes, "
                              f"file has {size}")
    return n, header


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory: ``model.safetensors``, or the shards named
    by ``model.safetensors.index.json`` (each checked to be a plain file in ``path``)."""
    path = Path(path)
    index = path / INDEX_NAME
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
            if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
                raise ValueError
            names = sorted(set(wm.values()))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
            raise CheckpointError(f"'{index}' is not a valid safetensors index (no weight_map)")
        for v in names:
            if Path(v).name != v or not v.endswith(".safetensors"):
                raise CheckpointError(f"'{index}' names shard '{v}', which is not a safetensors file "
                                      "in the checkpoint directory")
        return [path / v for v in names]
    if (path / WEIGHTS_NAME).is_file() or not any(path.glob("*.bin")):
        return [path / WEIGHTS_NAME]
    raise CheckpointError(f"'{path}' has no safetensors weights (only .bin); onebit reads safetensors only")


def read_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str, Path]]:
    """``tensor -> (shape, dtype, file)`` over every weights file of ``path`` (headers only)."""
    out = {}
    for f in weight_files(path):
        _, header = read_safetensors_header(f)
        for k, v in header.items():
            if k != "__metadata__":
                out[k] = (tuple(v["shape"]), v["dtype"], f)
    return out


def load_state_dict_file(file: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(file)
    try:
        return load_file(str(file), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read '{file}': {first_line(e)}")
