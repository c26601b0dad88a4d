"""What ``onebit export`` supports, importable without torch (the CLI's choices, the benches
and tests): llama.cpp types for the linears and the embeddings, and one method setting per
exact format (``PRESETS``), and :func:`save_quantized` to quantize and save a checkpoint."""
from __future__ import annotations

import os

#: preferred type of the 1-bit linears (``--weight-type``)
WEIGHT_TYPES = ("q1_0", "q2_0", "tq2_0")
#: type of the token embedding and of an untied head (``--embed-type``)
EMBED_TYPES = ("f32", "f16", "q8_0", "q6_k", "q4_0", "q1_0")
#: an embedding type whose blocks do not fit the rows goes to the first of these that fits, as
#: llama.cpp's own quantizer does (``llama_tensor_get_type``: Q6_K -> Q8_0)
EMBED_FALLBACK = {"q6_k": ("q8_0", "f16")}
EXPORTABLE = ("onebit (--foldable)", "q1_0", "bitnet", "ternary", "rtn/gptq 4- or 8-bit sym g32")

#: name -> (registered method, config keyword arguments): a setting of each method whose
#: checkpoints llama.cpp holds exactly
PRESETS: dict[str, tuple[str, dict]] = {
    "onebit-foldable": ("onebit", {"foldable": True}),
    "q1_0": ("q1_0", {}),
    "bitnet": ("bitnet", {"act_bits": 0}),
    "ternary": ("ternary", {"act_bits": 0}),
    "rtn-w4g32": ("rtn", {"bits": 4, "group_size": 32}),
    "rtn-w8g32": ("rtn", {"bits": 8, "group_size": 32}),
}


def save_quantized(model, out: str | os.PathLike, method: str, source: str, tokenizer=None,
                   overwrite: bool = False, **kw) -> str:
    """Quantize a copy of ``model`` with ``method`` (config keyword arguments ``kw``; for a preset:
    ``method, kw = PRESETS[name]``) and save it
    as a packed checkpoint at ``out``; returns ``out``."""
    import copy

    from ..api import quantize
    from ..formats.checkpoint import save_checkpoint
    from ..registry import get_handler_cls

    m = copy.deepcopy(model)
    quantize(m, get_handler_cls(method).config_cls(**kw), progress=False)
    save_checkpoint(m, out, source=source, tokenizer=tokenizer, overwrite=overwrite)
    return str(out)
