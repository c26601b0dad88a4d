"""onebit: compress a Hugging Face causal LM to about one bit per weight, and run it packed.

Public API::

    import onebit
    model = onebit.quantize(model, onebit.OneBitConfig(init="svd"))
    onebit.save(model, "out/", tokenizer=tok)
    model = onebit.load("out/")
    onebit.export_gguf("out/", "out/model.gguf")    # for llama.cpp (needs --foldable OneBit)
"""
from __future__ import annotations

from . import methods  # noqa: F401  (registers the built-in methods; the registry imports none)
from .api import find_linears, quantize
from .config import FORMAT_VERSION, QuantConfig
from .errors import CheckpointError, OneBitError
from .formats.checkpoint import checkpoint_ledger, load_checkpoint as load, save_checkpoint as save
from .methods.onebit import OneBitConfig
from .registry import available_methods, get_handler, register_method


def export_gguf(checkpoint, out, **kwargs):
    """Write a packed checkpoint as a GGUF file llama.cpp runs (see ``onebit.export.gguf``)."""
    from .export.gguf import export_gguf as _export

    return _export(checkpoint, out, **kwargs)

try:  # AutoModelForCausalLM.from_pretrained(packed_dir) / save_pretrained (transformers 5.x)
    from .integrations import hf as _hf

    if _hf.transformers_major() == _hf.SUPPORTED_MAJOR:
        _hf.register()
except ImportError:  # transformers missing or too different: onebit.load() still works
    pass

__version__ = "0.1.0"

__all__ = [
    "quantize", "load", "save", "checkpoint_ledger", "find_linears", "QuantConfig", "OneBitConfig",
    "OneBitError", "CheckpointError", "register_method", "available_methods", "get_handler",
    "FORMAT_VERSION", "__version__", "export_gguf",
]
