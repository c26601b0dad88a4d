"""The KV-cache quantization flags of ``onebit eval ppl`` and ``onebit generate``
(:mod:`onebit.kvcache`).  Torch-free at import: ``onebit --help`` stays fast."""
from __future__ import annotations

from ..errors import OneBitError

#: mirror onebit.kvcache.KV_KINDS / KV_AXES (that module imports torch); a test keeps them equal
KV_KINDS = ("none", "int8", "int4")
KV_AXES = ("token", "channel", "kivi")


def add_kv_args(p, chunk: bool = False) -> None:
    g = p.add_argument_group("KV cache", "int8 / int4 keys and values (docs/evaluation.md, "
                             "'KV-cache quantization'); works with every weight method")
    g.add_argument("--kv-cache", choices=KV_KINDS, default="none",
                   help="store the attention keys and values as int8 or int4 codes with an fp16 scale "
                   "and minimum per group (default: %(default)s, the model dtype)")
    g.add_argument("--kv-axis", choices=KV_AXES, default="token",
                   help="groups per token (of --kv-group channels), per channel (of --kv-group tokens; "
                   "the unfinished group stays in the model dtype) or kivi (keys per channel, values "
                   "per token) (default: %(default)s)")
    g.add_argument("--kv-group", type=int, default=32, metavar="N",
                   help="channels or tokens per scale, 1-4096 (default: %(default)s)")
    if chunk:
        g.add_argument("--kv-chunk", type=int, default=None, metavar="C",
                       help="feed each window C tokens at a time through the KV cache (1 = token-by-token "
                       "decoding): one forward over a window never reads its cache back, so --kv-cache "
                       "needs it (default: one forward per window)")


def kv_config(args):
    """The :class:`onebit.kvcache.KVQuantConfig` of the flags (validated), or None for 'none'."""
    kind = getattr(args, "kv_cache", "none") or "none"
    if kind == "none":
        if getattr(args, "kv_axis", "token") != "token" or getattr(args, "kv_group", 32) != 32:
            raise OneBitError("--kv-axis / --kv-group need --kv-cache int8 or int4")
        return None
    from ..kvcache import KVQuantConfig

    cfg = KVQuantConfig(kind, args.kv_axis, args.kv_group)
    cfg.validate()
    return cfg
