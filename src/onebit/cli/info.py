"""``onebit info CHECKPOINT``: the bit ledger of a packed checkpoint (from its header alone)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import OneBitError
from .common import add_common


def register(sub) -> None:
    p = sub.add_parser("info", help="print the bit ledger of a packed checkpoint",
                       description="Print a packed checkpoint's quantization settings and its bit "
                       "ledger: bits per tensor, totals for quantized linears, embeddings, head and "
                       "norms, and bits per original linear weight. Reads only the safetensors "
                       "header; checks it against the file size.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", nargs="?",
                   help="packed checkpoint directory, or a .gguf file (tensor types and bits per weight)")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--json", action="store_true", help="print the ledger summary as JSON")
    p.add_argument("--methods", action="store_true", help="list the available quantization methods")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..formats.checkpoint import read_quant_config
    from ..loading import checkpoint_ledger
    from ..registry import available_methods

    if args.methods:
        print("\n".join(available_methods()))
        return 0
    if not args.checkpoint:
        raise OneBitError("info needs a CHECKPOINT (or --methods)")
    if Path(args.checkpoint).is_file() and args.checkpoint.lower().endswith(".gguf"):
        from ..formats.gguf_header import check_gguf_file, summarize

        h = check_gguf_file(args.checkpoint)
        if args.json:
            print(json.dumps({"metadata": {k: v for k, v in h.metadata.items() if not isinstance(v, int)
                                           or not k.startswith("tokenizer.")},
                              "tensors": [{"name": t.name, "type": t.type_name, "shape": list(t.shape),
                                           "bytes": t.n_bytes} for t in h.tensors]}, indent=2, default=str))
            return 0
        print(f"{args.checkpoint}: GGUF v{h.version}, " + summarize(h, per_tensor=args.tensors))
        return 0
    if not Path(args.checkpoint).is_dir():
        raise OneBitError(f"checkpoint '{args.checkpoint}' is not a directory")
    qc = read_quant_config(args.checkpoint)
    ledger = checkpoint_ledger(args.checkpoint)
    if args.json:
        print(json.dumps({"quantization_config": {k: v for k, v in qc.items() if k != "modules"},
                          **ledger.summary()}, indent=2))
        return 0
    settings = ", ".join(f"{k}={v}" for k, v in qc.items() if k not in ("modules", "quant_method", "embed"))
    print(f"{args.checkpoint}: onebit checkpoint ({settings})")
    if qc.get("embed"):
        from ..embeddings import describe

        print(describe(qc["embed"]))
    print(ledger.format(per_tensor=args.tensors))
    return 0
