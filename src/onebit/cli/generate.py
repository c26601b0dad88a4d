"""``onebit generate MODEL --prompt ...``: sample text from a packed (or fp) model."""
from __future__ import annotations


def register(sub) -> None:
    from .main import add_common

    p = sub.add_parser("generate", help="sample text from a packed checkpoint or a model",
                       description="Generate text with a packed onebit checkpoint (or any causal LM).")
    p.add_argument("model", metavar="CHECKPOINT", help="packed checkpoint directory, model dir or hub id")
    p.add_argument("--prompt", default="Once upon a time", help="prompt text (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature; 0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=50, help="top-k sampling (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--runtime", choices=["static", "hf"], default="static",
                   help="static: onebit's decode loop with a static KV cache; hf: transformers' generate "
                   "(always used with --kv-cache int8/int4) (default: %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the static loop's decode step (pays only on long generations)")
    p.add_argument("--int8-activations", action="store_true",
                   help="faster, not exact: the packed linears (and an int4/int8 head) multiply int8 "
                   "activations, quantized per block of 128 columns on the fly, as llama.cpp's "
                   "TQ2_0/Q1_0 do (the same as ONEBIT_CPU_ALGO=i8; CPU only; docs/kernels.md)")
    from .kvflags import add_kv_args

    add_kv_args(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..generate import generate_text
    from ..models import load_model, load_tokenizer
    from .kvflags import kv_config

    kv = kv_config(args)
    if args.int8_activations:   # read by the CPU kernels' dispatcher on every call
        os.environ["ONEBIT_CPU_ALGO"] = "i8"
    model = load_model(args.model)
    tok = load_tokenizer(args.model)
    print(generate_text(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                        args.seed, kv_cache=kv, runtime=args.runtime, compile=args.compile))
    return 0
