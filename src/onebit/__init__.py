"""onebit: compress a Hugging Face causal LM to about one bit per weight, and run it packed.

Public API::

    import onebit
    model = onebit.quantize(model, onebit.OneBitConfig(init="svd"))
    onebit.save(model, "out/", tokenizer=tok)
    model = onebit.load("out/")
    onebit.export_gguf("out/", "out/model.gguf")    # for llama.cpp (needs --foldable OneBit)

``import onebit`` is cheap (no torch, no transformers): each name above is imported on first use
(PEP 562), so ``onebit --help`` answers at once.  The built-in methods register themselves on the
first registry lookup (:mod:`onebit.registry`), and the Hugging Face integration
(``AutoModelForCausalLM.from_pretrained(packed_dir)``) registers itself as soon as transformers is
imported, before or after ``import onebit``.
"""
from __future__ import annotations

from .threads import apply_policy as _apply_thread_policy

_apply_thread_policy()  # before anything imports torch (docs/threads.md); the only call

import importlib
import importlib.util
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: public name -> (module, attribute), imported on first access
_LAZY = {
    "quantize": ("api", "quantize"),
    "find_linears": ("api", "find_linears"),
    "FORMAT_VERSION": ("config", "FORMAT_VERSION"),
    "QuantConfig": ("config", "QuantConfig"),
    "CheckpointError": ("errors", "CheckpointError"),
    "OneBitError": ("errors", "OneBitError"),
    "checkpoint_ledger": ("loading", "checkpoint_ledger"),
    "load": ("loading", "load_checkpoint"),
    "save": ("formats.checkpoint", "save_checkpoint"),
    "OneBitConfig": ("methods.onebit", "OneBitConfig"),
    "available_methods": ("registry", "available_methods"),
    "get_handler": ("registry", "get_handler"),
    "register_method": ("registry", "register_method"),
}

__all__ = [
    "quantize", "load", "save", "checkpoint_ledger", "find_linears", "QuantConfig", "OneBitConfig",
    "OneBitError", "CheckpointError", "register_method", "available_methods", "get_handler",
    "FORMAT_VERSION", "__version__", "export_gguf",
]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from .api import find_linears, quantize
    from .config import FORMAT_VERSION, QuantConfig
    from .errors import CheckpointError, OneBitError
    from .formats.checkpoint import save_checkpoint as save
    from .loading import checkpoint_ledger, load_checkpoint as load
    from .methods.onebit import OneBitConfig
    from .registry import available_methods, get_handler, register_method


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'onebit' has no attribute '{name}'")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value  # next access is a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def export_gguf(checkpoint, out, **kwargs):
    """Write a packed checkpoint as a GGUF file llama.cpp runs (see ``onebit.export.gguf``)."""
    from .export.gguf import export_gguf as _export

    return _export(checkpoint, out, **kwargs)


def _register_hf() -> None:
    """``AutoModelForCausalLM.from_pretrained(packed_dir)`` / ``save_pretrained`` (transformers 5.x)."""
    try:
        from .integrations import hf

        if hf.transformers_major() == hf.SUPPORTED_MAJOR:
            hf.register()
    except ImportError:  # transformers too different: onebit.load() still works
        pass


class _AfterImport:
    """A ``sys.meta_path`` finder that runs ``callback`` right after module ``name`` is imported
    (once), so that importing onebit does not import transformers just to register with it."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_then_callback(module):
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_callback  # this spec's loader only
        return spec


if "transformers" in sys.modules:
    _register_hf()
else:
    sys.meta_path.insert(0, _AfterImport("transformers", _register_hf))
