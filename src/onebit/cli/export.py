"""``onebit export CHECKPOINT OUT.gguf``: write a packed checkpoint as a GGUF for llama.cpp."""
from __future__ import annotations

import argparse

from ..export.spec import EMBED_TYPES, WEIGHT_TYPES
from .common import add_common


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a packed checkpoint as a GGUF file that stock llama.cpp runs",
        description="Write a packed onebit checkpoint as a GGUF file for llama.cpp (llama-cli, "
        "llama-server, llama-cpp-python, Ollama, LM Studio). Exact where the formats match: foldable "
        "OneBit, q1_0 and bitnet go to Q1_0 (rows that are not a multiple of 128 to TQ2_0 or Q2_0), "
        "ternary to TQ2_0/Q2_0, RTN/GPTQ symmetric 4/8-bit with group 32 to Q4_0/Q8_0. Architecture "
        "metadata and the tokenizer go in; the file is written to a temporary name, then renamed.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="packed onebit checkpoint directory")
    p.add_argument("out", metavar="OUT.gguf", help="GGUF file to write")
    p.add_argument("--weight-type", default="q1_0", choices=list(WEIGHT_TYPES),
                   help="preferred type for 1-bit linears (default: %(default)s, the smallest; rows it "
                   "cannot hold go to the next type that holds them exactly)")
    p.add_argument("--embed-type", default="f16", choices=list(EMBED_TYPES),
                   help="type of the token embedding (and of an untied output head) (default: %(default)s; "
                   "q6_k needs rows of a multiple of 256 weights, other rows go to q8_0 as llama.cpp's "
                   "quantizer does, and the summary says so)")
    p.add_argument("--pad", action=argparse.BooleanOptionalAction, default=None,
                   help="pad the hidden size with zero channels to a multiple of 128 so its rows fit Q1_0 "
                   "(exact; default: for 1-bit methods when it makes the file smaller, e.g. SmolLM2's "
                   "576 -> 640)")
    p.add_argument("--approximate", action="store_true",
                   help="write checkpoints with no exact llama.cpp form, approximately (measure the cost "
                   "with bench/gguf_agreement.py --approximate): OneBit without --foldable ties (the mean "
                   "input scale is folded); onebit-rank and onebit-mos (the effective weight over a "
                   "folded input profile, as signs with one scale per block; MoS: the uniform mixture "
                   "of its experts). Measured on trained SmolLM2 students it multiplies perplexity "
                   "120-4300x (docs/export.md): train with --foldable or --method q1_0 instead")
    p.add_argument("--tensors", action="store_true", help="list every tensor in the summary")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export.gguf import export_gguf

    s = export_gguf(args.checkpoint, args.out, weight_type=args.weight_type, embed_type=args.embed_type,
                    overwrite=args.overwrite, approximate=args.approximate,
                    pad={None: "auto", True: "on", False: "off"}[args.pad])
    print(s.format(per_tensor=args.tensors))
    return 0
